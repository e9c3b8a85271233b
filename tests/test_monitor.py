"""pagescan.monitor (issue 15): dirty-rate samples, the OpenMetrics / Prometheus
exposition (parsed by the official client library), its HTTP endpoint, and a
real Prometheus server scraping it.

Workloads are deterministic: a simulated process whose pages the test writes
between explicit ``Monitor.sample()`` calls, so every count is exact."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest
from conftest import CI, require

import pagescan
from pagescan import monitoring
from pagescan.simulator import MAP_SHARED, SimProcess

PS = pagescan.PAGE_SIZE
# the fixture's process has a MAP_SHARED mapping on purpose (a second label): a
# whole-process tracker says stores through other mappings of it are not seen
pytestmark = pytest.mark.filterwarnings("ignore::pagescan.errors.SharedMappingWarning")

#: how the simulated kernel labels the shared memfd mapping at offset 0 in its maps
SHM = "/dev/zero (deleted)"

try:     # the official client library's parsers (the test extra installs it)
    from prometheus_client import parser as prom_parser
    from prometheus_client.openmetrics import parser as om_parser
except ImportError:
    if CI:
        raise
    pytest.skip("prometheus_client is not installed (pip install prometheus_client)",
                allow_module_level=True)


@pytest.fixture
def sim():
    """A simulated process with an anonymous mapping (64 pages) and a shared memfd
    mapping (32 pages)."""
    s = SimProcess()
    anon = s.mmap(64 * PS)
    fd = s.memfd(32 * PS)
    shm = s.mmap(32 * PS, flags=MAP_SHARED, file=fd)
    yield s, anon, shm
    s.exit()


def write(s: SimProcess, base: int, pages) -> None:
    for p in pages:
        s.write(base + p * PS)


# ------------------------------------------------------------------- samples


@pytest.mark.parametrize("mechanism,exact", [("uffd", True), ("softdirty", False)])
def test_sample_counts_pages_per_mapping(sim, mechanism, exact):
    s, anon, shm = sim
    with pagescan.monitor(s.pid, mechanism=mechanism) as mon:
        assert mon.backend == "simulator" and mon.mechanism == mechanism
        assert mon.exact is exact
        write(s, anon, [0, 1, 2, 10, 2])           # page 2 twice: counted once
        write(s, shm, [5, 6])
        t0, w0 = time.monotonic(), time.time()
        a = mon.sample()
        assert (a.index, a.pid, a.comm, a.exact) == (0, s.pid, "simulated", exact)
        assert a.pages == 6 and a.bytes == 6 * PS
        by = {m.label: m for m in a.mappings}
        assert set(by) == {"[anon]", SHM}
        assert by["[anon]"].pages == 4 and by["[anon]"].bytes == 4 * PS
        assert (by["[anon]"].start, by["[anon]"].end) == (anon, anon + 64 * PS)
        assert by[SHM].pages == 2 and by[SHM].perms == "rw-s"
        assert a.mappings[0].label == "[anon]"      # most written first
        assert a.monotonic >= t0 and a.wall >= w0 - 1
        assert a.interval > 0 and a.elapsed >= a.interval
        # the next interval: only what was written since
        write(s, shm, [0])
        b = mon.sample()
        assert b.index == 1 and b.pages == 1
        assert [(m.label, m.pages) for m in b.mappings] == [(SHM, 1)]
        assert b.monotonic >= a.monotonic and b.elapsed >= a.elapsed
        assert b.interval == pytest.approx(b.monotonic - a.monotonic)
        c = mon.sample()
        assert c.pages == 0 and c.mappings == ()
        assert b.pages_per_s == pytest.approx(1 / b.interval)
        assert b.bytes_per_s == pytest.approx(PS / b.interval)


def test_sample_is_frozen_and_json(sim):
    s, anon, _ = sim
    with pagescan.monitor(s.pid) as mon:
        write(s, anon, [3])
        smp = mon.sample()
    with pytest.raises(dataclasses.FrozenInstanceError):
        smp.pages = 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        smp.mappings[0].pages = 7
    d = json.loads(json.dumps(smp.as_json()))
    assert d["pages"] == 1 and d["mappings"][0]["label"] == "[anon]"
    assert {"index", "pid", "comm", "backend", "mechanism", "exact", "monotonic", "wall",
            "elapsed", "interval", "pages", "bytes", "pages_per_s", "bytes_per_s",
            "mappings"} == set(d)


@pytest.mark.parametrize("mechanism,exact", [("uffd", True), ("softdirty", False),
                                              ("mprotect", False)])
def test_a_tracker_is_monitored_and_left_open(sim, mechanism, exact):
    """Any mechanism: mprotect tracks ranges, not a whole process."""
    s, anon, shm = sim
    t = s.track(anon, 64 * PS, mechanism=mechanism)
    with pagescan.monitor(t, label="state") as mon:
        assert mon.exact is exact and mon.mechanism == mechanism
        write(s, anon, range(8))
        write(s, shm, range(4))                    # not tracked
        smp = mon.sample()
        assert smp.pages == 8
        assert [(m.label, m.pages, m.start) for m in smp.mappings] == [("state", 8, anon)]
    assert not t.closed                            # the caller's tracker stays open
    t.close()


def test_a_tracker_of_the_current_simulated_process(sim):
    """A simulator tracker made with "with sim:" (no pid=) is of that process."""
    s, anon, _ = sim
    with s:
        t = pagescan.track((anon, 8 * PS), backend="simulator")
    with pagescan.monitor(t) as mon:
        assert mon.pid == s.pid and mon.alive()
        write(s, anon, [1, 2])
        assert mon.sample().pages == 2
        s.exit()
        assert not mon.alive()
    t.close()


def test_own_memory_with_uffd(uffd_ok):
    mem = pagescan.allocate(16 * PS)
    try:
        with pagescan.track(mem, backend="uffd") as t, pagescan.monitor(t) as mon:
            assert mon.pid == os.getpid() and mon.exact
            for p in (1, 5, 9):
                mem[p * PS] = 1
            smp = mon.sample()
            assert smp.pages == 3 and smp.backend == "uffd"
            (m,) = smp.mappings
            assert m.start <= t.start and t.end <= m.end and m.pages == 3
    finally:
        mem.close()


def test_iteration_count_and_schedule(sim):
    s, anon, _ = sim
    seen = []
    for smp in pagescan.monitor(s.pid, interval=0.01, count=3):
        seen.append(smp.index)
        write(s, anon, [smp.index])
    assert seen == [0, 1, 2]


def test_stop_from_another_thread_ends_iteration(sim):
    s, _, _ = sim
    mon = pagescan.monitor(s.pid, interval=0.01)
    got = []
    for smp in mon:
        got.append(smp)
        if len(got) == 2:
            threading.Thread(target=mon.stop).start()
    assert len(got) >= 2 and mon.stopped
    mon.close()


def test_duration_ends_iteration(sim):
    s, _, _ = sim
    with pagescan.monitor(s.pid, interval=0.02, duration=0.05) as mon:
        got = list(mon)
    # however late the ticks come, the iteration ends with the first sample at or past
    # the duration, and only there
    assert 1 <= len(got) <= 3
    assert got[-1].elapsed >= 0.05 - 1e-3
    assert all(g.elapsed < 0.05 - 1e-3 for g in got[:-1])


def test_process_exit_raises_no_such_process(sim):
    s, anon, _ = sim
    mon = pagescan.monitor(s.pid, interval=0.01)
    write(s, anon, [1])
    assert mon.sample().pages == 1
    s.exit()
    with pytest.raises(pagescan.NoSuchProcess, match="exited"):
        mon.sample()
    with pytest.raises(pagescan.NoSuchProcess):
        next(iter(mon))
    mon.close()


def test_async_for_does_not_block_the_event_loop(sim):
    """The collect runs off the loop: while it waits for a lock that only a
    coroutine on the loop releases, the loop keeps running (a collect on the loop
    thread would deadlock here; a safety timer turns that into a failure)."""
    s, anon, _ = sim
    lock = threading.Lock()
    released_by: list[str] = []

    async def main() -> list[int]:
        mon = pagescan.monitor(s.pid, interval=0.01, count=2, lock=lock)
        write(s, anon, [1, 2])
        lock.acquire()

        async def release() -> None:
            await asyncio.sleep(0.05)
            if lock.locked():
                lock.release()
                released_by.append("loop")

        task = asyncio.ensure_future(release())
        pages = [smp.pages async for smp in mon]
        await task
        mon.close()
        return pages

    def safety() -> None:
        if lock.locked() and not released_by:
            released_by.append("timer")
            lock.release()
    timer = threading.Timer(20, safety)
    timer.start()
    try:
        pages = asyncio.run(main())
    finally:
        timer.cancel()
    assert released_by == ["loop"]
    assert pages == [2, 0]


@pytest.mark.parametrize("kw,exc", [
    ({"interval": 0}, ValueError), ({"interval": -1}, ValueError),
    ({"interval": math.nan}, ValueError), ({"interval": math.inf}, ValueError),
    ({"interval": "1"}, TypeError), ({"count": 0}, ValueError),
    ({"count": 1.5}, ValueError), ({"duration": 0}, ValueError)])
def test_bad_arguments(sim, kw, exc):
    s, _, _ = sim
    with pytest.raises(exc):
        pagescan.monitor(s.pid, **kw)


def test_bad_targets(sim):
    s, _, _ = sim
    with pytest.raises(TypeError):
        pagescan.monitor("123")
    with pytest.raises(TypeError):
        pagescan.monitor(True)
    with pytest.raises(ValueError, match="own memory"):
        pagescan.monitor(os.getpid())
    with pytest.raises(pagescan.NoSuchProcess):
        pagescan.monitor(1, backend="simulator")      # pid 1 is no simulated process
    t = s.track(s.mmap(PS), PS)
    with pytest.raises(TypeError, match="track"):
        pagescan.monitor(t, backend="uffd")
    t.close()


def test_lazy_export():
    """import pagescan does not import the monitor; pagescan.monitor stays the function
    after the submodule is imported (no module shadowing it)."""
    code = ("import sys, pagescan; assert 'pagescan.monitoring' not in sys.modules;"
            "assert 'http.server' not in sys.modules;"
            "import pagescan.monitoring; f = pagescan.monitor; assert callable(f), f;"
            "assert f is pagescan.monitoring.monitor; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ------------------------------------------------------------- the exposition


def _om(text: str) -> dict:
    """{(name, frozenset(labels)): value} of an OpenMetrics text, by the official parser."""
    out = {}
    for fam in om_parser.text_string_to_metric_families(text):
        for smp in fam.samples:
            out[(smp.name, frozenset(smp.labels.items()))] = smp.value
    return out


def _prom(text: str) -> dict:
    out = {}
    for fam in prom_parser.text_string_to_metric_families(text):
        for smp in fam.samples:
            out[(smp.name, frozenset(smp.labels.items()))] = smp.value
    return out


def _series(pid: int, mapping: str, backend: str = "simulator", exact: str = "true",
            comm: str = "simulated") -> frozenset:
    return frozenset({"pid": str(pid), "comm": comm, "mapping": mapping, "backend": backend,
                      "exact": exact}.items())


def test_exposition_parsed_by_the_official_parsers(sim):
    s, anon, shm = sim
    metrics = monitoring.Metrics()
    with pagescan.monitor(s.pid) as mon:
        metrics.register(mon)
        empty = metrics.render()
        assert empty.endswith("# EOF\n")
        assert _om(empty)[("pagescan_monitored_processes", frozenset())] == 1
        write(s, anon, range(5))
        write(s, shm, [1])
        metrics.add(mon.sample(), mon.capabilities)
        write(s, anon, [0, 40])                     # page 0 again: a new interval
        metrics.add(mon.sample(), mon.capabilities)
    om = metrics.render(openmetrics=True)
    prom = metrics.render(openmetrics=False)
    assert om.endswith("# EOF\n") and "# EOF" not in prom
    for parsed in (_om(om), _prom(prom)):
        assert parsed[("pagescan_pages_written_total", _series(s.pid, "[anon]"))] == 7
        assert parsed[("pagescan_pages_written_total", _series(s.pid, SHM))] == 1
        assert parsed[("pagescan_written_bytes_total", _series(s.pid, "[anon]"))] == 7 * PS
        base = frozenset({"pid": str(s.pid), "comm": "simulated", "backend": "simulator",
                          "exact": "true"}.items())
        assert parsed[("pagescan_samples_total", base)] == 2
        info = {k: v for k, v in parsed.items() if k[0] == "pagescan_backend_info"}
        ((key, value),) = info.items()
        labels = dict(key[1])
        assert value == 1 and labels["mechanism"] == "uffd" and labels["exact"] == "true"
        assert labels["atomic_reset"] == "true" and labels["real"] == "false"
    types = {f.name: f.type for f in om_parser.text_string_to_metric_families(om)}
    assert types["pagescan_pages_written"] == "counter"
    assert types["pagescan_written_bytes"] == "counter"
    assert types["pagescan_backend"] == "info"


def test_labels_are_escaped():
    metrics = monitoring.Metrics()
    weird = 'a "quoted"\\path\nwith newline'
    m = monitoring.MappingSample(0x1000, 0x3000, weird, "rw-p", 2, 2 * PS, 1.0)
    smp = monitoring.Sample(0, 42, 'co"mm', "softdirty", "softdirty", False, 1.0, 2.0, 1.0,
                            1.0, 2, 2 * PS, (m,))
    metrics.add(smp)
    for parsed in (_om(metrics.render()), _prom(metrics.render(False))):
        key = ("pagescan_pages_written_total",
               _series(42, weird, "softdirty", "false", 'co"mm'))
        assert parsed[key] == 2


def test_collect_drops_a_process_that_exits(sim):
    s, anon, _ = sim
    other = SimProcess()
    b = other.mmap(4 * PS)
    metrics = monitoring.Metrics()
    mons = [pagescan.monitor(s.pid), pagescan.monitor(other.pid)]
    for m in mons:
        metrics.register(m)
    write(s, anon, [1])
    other.write(b)
    mons = metrics.collect(mons)
    assert len(mons) == 2 and metrics.pids() == sorted([s.pid, other.pid])
    other.exit()
    gone = []
    mons = metrics.collect(mons, on_exit=gone.append)
    assert [m.pid for m in gone] == [other.pid] and [m.pid for m in mons] == [s.pid]
    parsed = _om(metrics.render())
    assert not any(dict(k[1]).get("pid") == str(other.pid) for k in parsed)
    assert parsed[("pagescan_pages_written_total", _series(s.pid, "[anon]"))] == 1
    assert parsed[("pagescan_monitored_processes", frozenset())] == 1
    for m in mons:
        m.close()


def _get(url: str, accept: str | None = None) -> tuple[str, str]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers["Content-Type"], r.read().decode()


def test_http_endpoint_negotiates_the_format(sim):
    s, anon, _ = sim
    metrics = monitoring.Metrics()
    with pagescan.monitor(s.pid) as mon, monitoring.MetricsServer(metrics) as server:
        write(s, anon, range(3))
        metrics.add(mon.sample(), mon.capabilities)
        ctype, body = _get(server.url, "application/openmetrics-text;version=1.0.0,"
                           "text/plain;version=0.0.4;q=0.5")
        assert ctype == monitoring.OPENMETRICS_CONTENT_TYPE and body.endswith("# EOF\n")
        assert _om(body)[("pagescan_pages_written_total", _series(s.pid, "[anon]"))] == 3
        ctype, body = _get(server.url)
        assert ctype == monitoring.PROMETHEUS_CONTENT_TYPE and "# EOF" not in body
        assert _prom(body)[("pagescan_pages_written_total", _series(s.pid, "[anon]"))] == 3
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(server.url.replace("/metrics", "/nothing"))
        assert err.value.code == 404


# ------------------------------------------------------- a real Prometheus server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _query(base: str, q: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.load(r)
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def _wait_for(base: str, q: str, want, proc: subprocess.Popen, deadline_s: float = 90):
    """Poll the Prometheus API until ``want(result)``: synchronisation with its
    scrapes (a deadline only bounds a broken setup)."""
    deadline = time.monotonic() + deadline_s
    result: list = []
    while time.monotonic() < deadline:
        assert proc.poll() is None, "prometheus exited"
        try:
            result = _query(base, q)
        except (OSError, ValueError):
            result = []
        if want(result):
            return result
        time.sleep(0.2)
    pytest.fail(f"prometheus did not return what was expected for {q}: {result}")


@pytest.mark.slow            # starts a Prometheus server and waits for its scrapes (~7 s)
def test_scraped_by_a_real_prometheus(sim, tmp_path):
    binary = shutil.which("prometheus")
    require(binary is not None, "no prometheus binary (Debian: apt-get install prometheus)")
    s, anon, shm = sim
    metrics = monitoring.Metrics()
    mon = pagescan.monitor(s.pid, mechanism="uffd")
    server = monitoring.MetricsServer(metrics)
    metrics.register(mon)
    write(s, anon, range(12))
    write(s, shm, range(3))
    metrics.add(mon.sample(), mon.capabilities)
    port = _free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: pagescan\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.port}']\n")
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def has(n_anon, n_shm):
            def ok(result):
                got = {r["metric"].get("mapping"): float(r["value"][1]) for r in result
                       if r["metric"].get("pid") == str(s.pid)}
                return got == {"[anon]": n_anon, SHM: n_shm}
            return ok
        q = "pagescan_pages_written_total"
        result = _wait_for(base, q, has(12, 3), proc)
        print("\nPrometheus query", q, "->")
        for r in result:
            print("  ", json.dumps(r["metric"], sort_keys=True), "=", r["value"][1])
        for r in result:
            m = r["metric"]
            assert m["job"] == "pagescan" and m["backend"] == "simulator"
            assert m["exact"] == "true" and m["comm"] == "simulated"
        # more writes, another sample: the counters move by exactly that
        write(s, anon, [0, 50])
        metrics.add(mon.sample(), mon.capabilities)
        result = _wait_for(base, q, has(14, 3), proc)
        print("after 2 more pages:", {r["metric"]["mapping"]: r["value"][1] for r in result})
        info = _wait_for(base, "pagescan_backend_info", bool, proc)
        print("pagescan_backend_info:", json.dumps(info[0]["metric"], sort_keys=True))
        assert info[0]["metric"]["mechanism"] == "uffd"
        assert info[0]["metric"]["exact"] == "true"
        rate = _query(base, "pagescan_written_bytes_total")
        assert {r["metric"]["mapping"]: float(r["value"][1]) for r in rate} == \
            {"[anon]": 14 * PS, SHM: 3 * PS}
        # Prometheus asked for OpenMetrics and got it (content negotiation)
        accept, ctype = server.scrapes[-1]
        print("Prometheus sent Accept:", accept, "; served", ctype)
        assert "application/openmetrics-text" in accept
        assert ctype == monitoring.OPENMETRICS_CONTENT_TYPE
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        server.close()
        mon.close()
