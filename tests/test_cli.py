"""The ``pagescan`` command, run as a user runs it: ``python -m pagescan ...`` in a
subprocess, checking exit codes, ``--json`` schemas and messages.

Exit codes: 0 ok, 1 error, 2 usage, 3 no such process / exited, 4 access denied,
5 no backend works here for what was asked.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import pty
import select
import signal
import subprocess
import sys
import time
from typing import ClassVar

import pytest
from conftest import require

import pagescan
from pagescan.kernel import LinuxKernel

PS = mmap.PAGESIZE
CATEGORY_NAMES = set(pagescan.Category.__members__)


def run(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pagescan", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


def run_pty(*args: str, timeout: float = 60) -> tuple[int, str]:
    """Run with stdout and stderr on a terminal; (exit code, everything written)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "pagescan", *args], stdin=subprocess.DEVNULL,
                         stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                b = os.read(master, 65536)
            except OSError:            # EIO: the other side closed
                break
            if not b:
                break
            chunks.append(b)
        elif p.poll() is not None:
            break
    os.close(master)
    return p.wait(timeout=10), b"".join(chunks).decode(errors="replace")


# A process with a 64-page buffer, pages 1-3, 10 and 40 written; it prints the
# buffer's address and waits until its stdin closes.
TARGET = r"""
import ctypes, mmap, sys
m = mmap.mmap(-1, 64 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for p in (1, 2, 3, 10, 40):
    m[p * mmap.PAGESIZE] = 1
print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)
sys.stdin.read()
"""
WRITTEN = (1, 2, 3, 10, 40)


@pytest.fixture
def target():
    p = subprocess.Popen([sys.executable, "-c", TARGET], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    addr = int(p.stdout.readline())
    yield p, addr
    p.stdin.close()
    p.wait(timeout=10)


def gone_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _drop_all_capabilities() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):                   # PR_CAPBSET_DROP; past the last cap: EINVAL
        if libc.prctl(24, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def forbidden():
    """(pid, preexec_fn): a process the command run with preexec_fn may not ptrace-read.

    As root: a process of user nobody, and the command loses every capability (a
    root process keeps uid 0 but loses CAP_SYS_PTRACE, as an ordinary user would
    not have it). As another user: PID 1, which belongs to root."""
    if os.geteuid() != 0:
        yield 1, None
        return
    p = subprocess.Popen(["sleep", "60"], user=65534, group=65534)
    try:
        yield p.pid, _drop_all_capabilities
    finally:
        p.kill()
        p.wait()


# ------------------------------------------------------------------------ general


def test_help_and_version():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("doctor", "scan", "watch", "compare", "serve"):
        assert cmd in r.stdout
    r = run("--version")
    assert r.returncode == 0 and pagescan.__version__ in r.stdout


def test_no_subcommand_is_a_usage_error():
    r = run()
    assert r.returncode == 2
    assert "usage:" in r.stderr


def test_unknown_subcommand_is_a_usage_error():
    r = run("frobnicate")
    assert r.returncode == 2


# ------------------------------------------------------------------------ doctor


def test_doctor_json_schema():
    r = run("doctor", "--json")
    rep = json.loads(r.stdout)
    assert set(rep) >= {"pagescan", "python", "kernel", "page_size", "backends", "settings",
                        "soft_dirty"}
    assert rep["kernel"]["release"] == os.uname().release
    assert rep["pagescan"]["implementation"] == pagescan.IMPLEMENTATION
    names = [b["name"] for b in rep["backends"]]
    assert names == pagescan.backend_names()
    probes = pagescan.probe_all()
    for b in rep["backends"]:
        assert set(b) >= {"name", "ok", "reason", "real", "capabilities", "details"}
        assert b["ok"] == probes[b["name"]].ok
        if not b["ok"]:
            assert b["reason"] == probes[b["name"]].reason and b["reason"]
    settings = {s["name"]: s for s in rep["settings"]}
    assert set(settings) == {"vm.unprivileged_userfaultfd", "vm.max_map_count",
                             "kernel.yama.ptrace_scope", "transparent_hugepage/enabled",
                             "transparent_hugepage/defrag", "vm.nr_hugepages"}
    with open("/proc/sys/vm/max_map_count") as f:
        assert settings["vm.max_map_count"]["value"] == f.read().strip()
    assert isinstance(rep["soft_dirty"]["reason"], str)
    assert rep["soft_dirty"]["available"] in (True, False, None)
    working = any(b["ok"] and b["real"] is not False for b in rep["backends"])
    assert r.returncode == (0 if working else 5)


def test_doctor_text_names_every_backend_and_reason():
    r = run("doctor")
    assert r.returncode in (0, 5)
    for name, p in pagescan.probe_all().items():
        assert name in r.stdout
        if not p.ok:
            assert p.reason in r.stdout
    for setting in ("vm.unprivileged_userfaultfd", "vm.max_map_count",
                    "kernel.yama.ptrace_scope", "transparent_hugepage/enabled",
                    "transparent_hugepage/defrag", "vm.nr_hugepages", "soft-dirty"):
        assert setting in r.stdout
    assert os.uname().release in r.stdout


# ------------------------------------------------------------------------ scan


def _regions(rep: dict, lo: int, hi: int) -> list[tuple[int, int, list[str]]]:
    return [(g["start"], g["end"], g["categories"]) for m in rep["mappings"]
            for g in m["regions"] if lo <= g["start"] and g["end"] <= hi]


def test_scan_json_schema(target):
    p, _ = target
    r = run("scan", str(p.pid), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert set(rep) >= {"pid", "command", "method", "range", "masks", "page_size",
                        "mappings", "total", "notes"}
    assert rep["pid"] == p.pid and rep["method"] in ("PAGEMAP_SCAN", "pagemap")
    assert rep["mappings"]
    with open(f"/proc/{p.pid}/maps") as f:
        assert len(rep["mappings"]) == len(f.read().splitlines())
    pages = 0
    for m in rep["mappings"]:
        assert set(m) >= {"start", "end", "perms", "offset", "device", "inode", "path",
                          "regions"}
        assert m["start"] < m["end"] and len(m["perms"]) == 4
        prev = m["start"]
        for g in m["regions"]:
            assert set(g) >= {"start", "end", "pages", "categories", "flags"}
            assert prev <= g["start"] < g["end"] <= m["end"]
            assert (g["end"] - g["start"]) // PS == g["pages"]
            assert set(g["categories"]) <= CATEGORY_NAMES
            assert g["flags"] == sum(pagescan.Category[c] for c in g["categories"])
            prev = g["end"]
            pages += g["pages"]
    assert rep["total"]["pages"] == pages
    assert rep["total"]["bytes"] == pages * PS


def test_scan_filters_and_range(target):
    p, addr = target
    rng = f"{addr:x}-{addr + 64 * PS:x}"
    r = run("scan", str(p.pid), "--range", rng, "--required", "PRESENT",
            "--return", "present,written", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["range"] == {"start": addr, "end": addr + 64 * PS}
    assert rep["masks"]["required"] == ["PRESENT"]
    got = _regions(rep, addr, addr + 64 * PS)
    want = [(addr + PS, addr + 4 * PS), (addr + 10 * PS, addr + 11 * PS),
            (addr + 40 * PS, addr + 41 * PS)]
    assert [(a, b) for a, b, _ in got] == want
    assert all(c == ["WRITTEN", "PRESENT"] for _, _, c in got)
    # excluded: the pages of the buffer that are not present
    r = run("scan", str(p.pid), "--range", rng, "--excluded", "PRESENT", "--return", "none",
            "--json")
    rep = json.loads(r.stdout)
    got = _regions(rep, addr, addr + 64 * PS)
    assert [(a, b) for a, b, _ in got] == [(addr, addr + PS), (addr + 4 * PS, addr + 10 * PS),
                                           (addr + 11 * PS, addr + 40 * PS),
                                           (addr + 41 * PS, addr + 64 * PS)]
    assert all(c == [] for _, _, c in got)


def test_scan_pagemap_method_agrees_with_the_ioctl(target):
    if pagescan.IMPLEMENTATION != "cython":
        pytest.skip("PAGEMAP_SCAN needs the compiled core")
    p, addr = target
    rng = f"{addr:x}-{addr + 64 * PS:x}"
    common = ("--range", rng, "--required", "present", "--return", "PRESENT,FILE,SWAPPED,"
              "WRITTEN", "--json")
    a = json.loads(run("scan", str(p.pid), "--method", "ioctl", *common).stdout)
    b = json.loads(run("scan", str(p.pid), "--method", "pagemap", *common).stdout)
    assert a["method"] == "PAGEMAP_SCAN" and b["method"] == "pagemap"
    assert a["mappings"] == b["mappings"]
    assert b["notes"]            # what pagemap entries cannot tell is said


def test_scan_with_the_pure_python_core_reads_pagemap(target):
    p, addr = target
    rng = f"{addr:x}-{addr + 64 * PS:x}"
    env = dict(os.environ, PAGESCAN_PUREPYTHON="1")
    r = run("scan", str(p.pid), "--range", rng, "--required", "PRESENT", "--return",
            "PRESENT", "--json", env=env)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["method"] == "pagemap"
    assert [(a - addr) // PS for a, _, _ in _regions(rep, addr, addr + 64 * PS)] == [1, 10, 40]


def test_scan_text(target):
    p, addr = target
    r = run("scan", str(p.pid), "--range", f"{addr:x}-{addr + 64 * PS:x}",
            "--required", "WRITTEN,PRESENT")
    assert r.returncode == 0, r.stderr
    assert f"{addr + PS:012x}-{addr + 4 * PS:012x}" in r.stdout
    assert "WRITTEN,PRESENT" in r.stdout
    assert "total: 5 pages" in r.stdout


@pytest.mark.parametrize("bad", ["zz-10000", "10000", "20000-10000", "1000-1000",
                                 "1001-3000", "0-ffffffffffffffff"])
def test_scan_bad_range_is_a_usage_error(target, bad):
    p, _ = target
    r = run("scan", str(p.pid), "--range", bad)
    assert r.returncode == 2
    assert "--range" in r.stderr and "range" in r.stderr
    assert r.stdout == ""


def test_scan_unknown_category_is_a_usage_error(target):
    p, _ = target
    r = run("scan", str(p.pid), "--required", "WRITTEN,DIRTYISH")
    assert r.returncode == 2
    assert "DIRTYISH" in r.stderr and "WRITTEN" in r.stderr


def test_scan_bad_pid_is_a_usage_error():
    for bad in ("abc", "0", "-5"):
        assert run("scan", bad).returncode == 2


def test_scan_no_such_process():
    pid = gone_pid()
    r = run("scan", str(pid))
    assert r.returncode == 3
    assert f"no process with PID {pid}" in r.stderr


def test_scan_without_permission(forbidden):
    pid, preexec = forbidden
    r = run("scan", str(pid), preexec_fn=preexec)
    assert r.returncode == 4, (r.stdout, r.stderr)
    assert "ptrace read access" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("scan", str(pid), "--json", preexec_fn=preexec)
    assert r.returncode == 4 and r.stdout == ""


# ------------------------------------------------------------------------ watch


def _other_process_backend() -> str | None:
    """A real backend that can watch another process here, or None."""
    from pagescan.cli.exits import EXIT_UNAVAILABLE, Exit
    from pagescan.cli.watch import other_process_backend as pick
    try:
        return pick("auto")
    except Exit as err:
        assert err.code == EXIT_UNAVAILABLE
        return None


def test_watch_another_process_without_a_backend_fails_with_the_reason(target):
    if _other_process_backend() is not None:
        pytest.skip("a backend here can watch other processes")
    p, _ = target
    r = run("watch", str(p.pid), "--count", "1", "--interval", "100ms")
    assert r.returncode == 5
    sd = pagescan.probe("softdirty")
    assert not sd.ok
    assert sd.reason in r.stderr
    assert "Traceback" not in r.stderr
    # asking for it by name says the same
    r = run("watch", str(p.pid), "--backend", "softdirty", "--count", "1")
    assert r.returncode == 5 and sd.reason in r.stderr
    # and the uffd backend cannot watch another process at all
    r = run("watch", str(p.pid), "--backend", "uffd", "--count", "1")
    assert r.returncode == 5 and "another process" in r.stderr


def test_watch_no_such_process():
    r = run("watch", str(gone_pid()), "--count", "1")
    assert r.returncode == 3
    assert "no process" in r.stderr


def test_watch_without_permission(forbidden):
    pid, preexec = forbidden
    r = run("watch", str(pid), "--count", "1", preexec_fn=preexec)
    assert r.returncode == 4
    assert "ptrace read access" in r.stderr


@pytest.mark.parametrize("args", [["--interval", "0"], ["--interval", "soon"],
                                  ["--count", "0"], ["--duration", "-1s"], [],
                                  ["--demo", "1"]])
def test_watch_usage_errors(args):
    r = run("watch", *args)
    assert r.returncode == 2, r.stderr
    assert "usage:" in r.stderr


def test_watch_unknown_backend():
    r = run("watch", str(os.getpid()), "--backend", "nosuch", "--count", "1")
    assert r.returncode == 2 and "nosuch" in r.stderr


def _uffd_ok() -> None:
    p = pagescan.probe("uffd")
    require(p.ok, p.reason)


def test_watch_demo_json_lines():
    """Own memory (uffd): one JSON object per sample, then a summary; the rate is the
    demo writer's (distinct pages, so at most the rate asked for)."""
    _uffd_ok()
    r = run("watch", "--demo", "--demo-rate", "3000", "--interval", "250ms", "--count", "3",
            "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 4
    samples, summary = lines[:3], lines[3]["summary"]
    for i, s in enumerate(samples):
        assert set(s) == {"index", "t", "interval", "pages", "pages_per_s", "mib_per_s",
                          "mappings"}
        assert s["index"] == i
        assert 0.1 < s["interval"] < 1.0
        assert 0 < s["pages"] and s["pages_per_s"] < 3000 * 1.5
        assert s["mib_per_s"] == pytest.approx(s["pages_per_s"] * PS / 2**20, rel=1e-3)
        (m,) = s["mappings"]
        assert m["path"] == "[pagescan demo buffer]" and m["pages"] == s["pages"]
    assert summary["ended"] == "count" and summary["samples"] == 3
    assert summary["pages"] == sum(s["pages"] for s in samples)


def test_watch_demo_plain_lines_when_piped():
    _uffd_ok()
    r = run("watch", "--demo", "--interval", "200ms", "--duration", "0.6s")
    assert r.returncode == 0, r.stderr
    totals = [line for line in r.stdout.splitlines() if " total " in line]
    assert 2 <= len(totals) <= 3
    assert "\x1b[" not in r.stdout
    assert "samples over" in r.stdout.splitlines()[-1]


def test_watch_demo_refreshes_on_a_terminal():
    _uffd_ok()
    code, out = run_pty("watch", "--demo", "--interval", "200ms", "--count", "2")
    assert code == 0, out
    assert out.count("\x1b[H\x1b[2J") == 2
    assert "pages/s" in out and "[pagescan demo buffer]" in out


# ------------------------------------------- watch: a process that exits mid-watch

# A third-party backend, registered through the entry-point group as a plugin would
# be, for kernels without soft-dirty: "first touch" of another process, i.e. the
# pages that became present since the last reset (PAGEMAP_SCAN, required=PRESENT).
PLUGIN = r'''
import errno
import os

from pagescan import Category, Masks, NoSuchProcess, ScanResult
from pagescan._impl import impl
from pagescan.backends.base import Backend, Capabilities, Probe

PS = os.sysconf("SC_PAGE_SIZE")


class FirstTouch(Backend):
    name = "firsttouch"
    capabilities = Capabilities(atomic_reset=False, range_reset=False, other_processes=True,
                                kernel_filtering=False, kernel_writes_seen=True,
                                categories=0)

    @classmethod
    def probe(cls):
        return Probe(hasattr(impl, "pm_scan"), "needs the compiled core")

    def __init__(self, *, pid=None, thp=False):
        self.pid = pid or os.getpid()
        self.fd = os.open(f"/proc/{self.pid}/pagemap", os.O_RDONLY)
        self.seen = set()

    def _present(self, start, end):
        try:
            res = impl.pm_scan(self.fd, start, end, 0,
                               Masks(required=Category.PRESENT, return_mask=0))
        except OSError as err:
            if err.errno == errno.ESRCH:
                raise NoSuchProcess(f"process {self.pid} has exited") from None
            raise
        return {a // PS for s, e, _ in res.regions for a in range(s, e, PS)}

    def register(self, start, end):
        self.reset(start, end)

    def unregister(self, start, end):
        pass

    def reset(self, start, end):
        self.seen = self._present(start, end)

    def scan(self, start, end, masks, *, max_pages=0, max_regions=None, reset=False):
        now = self._present(start, end)
        new = sorted(now - self.seen)
        if reset:
            self.seen = now
        regions = impl.RegionArray([(p * PS, (p + 1) * PS, int(Category.WRITTEN))
                                    for p in new])
        return ScanResult(impl.coalesce(regions), end)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
'''

# Writes 64 new pages every 50 ms for about 1.2 s, then exits.
WRITER = r"""
import ctypes, mmap, sys
m = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)
page = 0
for line in sys.stdin:          # a line: write 64 more pages; end of input: exit
    for _ in range(64):
        m[page * mmap.PAGESIZE] = 1
        page += 1
    print("wrote", flush=True)
"""


def start_writer() -> tuple[subprocess.Popen, int]:
    """The WRITER process (it runs until its stdin is closed) and its buffer's address."""
    w = subprocess.Popen([sys.executable, "-c", WRITER], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    return w, int(w.stdout.readline())


def start_watch(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pagescan", "watch", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def install_plugin(where, module: str, source: str, name: str, cls: str) -> dict:
    """Install a backend plugin (a module and its entry point in the group
    ``pagescan.backends``) under ``where``; the environment of a command that has it."""
    (where / f"{module}.py").write_text(source)
    info = where / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[pagescan.backends]\n{name} = {module}:{cls}\n")
    path = os.pathsep.join(p for p in (str(where), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path)


@pytest.fixture
def plugin_env(tmp_path):
    """The environment of a command that has the "firsttouch" plugin installed."""
    if pagescan.IMPLEMENTATION != "cython":
        pytest.skip("the test plugin needs the compiled core (PAGEMAP_SCAN)")
    return install_plugin(tmp_path, "pagescan_firsttouch", PLUGIN, "firsttouch", "FirstTouch")


def _watch_backend_args(plugin_env: dict) -> tuple[list[str], dict | None]:
    """Soft-dirty where the kernel has it, else the test plugin."""
    if _other_process_backend() is not None:
        return [], None
    return ["--backend", "firsttouch"], plugin_env


def test_watch_a_process_that_exits(plugin_env):
    """Synchronised by pipes, not time: the writer writes a batch of 64 pages
    after each sample the watch prints (the watch is tracking by then), until
    the watch has reported them; then it exits, and so does the watch."""
    extra, env = _watch_backend_args(plugin_env)
    w, buf = start_writer()
    watch = start_watch(str(w.pid), "--interval", "100ms", "--json", *extra, env=env)
    samples: list[dict] = []

    def buffer_pages(s: dict) -> int:
        return sum(m["pages"] for m in s["mappings"]
                   if m["start"] is not None and m["start"] <= buf < m["end"])
    try:
        batches = 0
        while batches < 3 or sum(buffer_pages(s) for s in samples) < 64:
            line = watch.stdout.readline()
            assert line, watch.communicate(timeout=60)
            samples.append(json.loads(line))
            assert len(samples) < 600, "the writer's pages were never reported"
            if batches < 3:
                w.stdin.write("go\n")
                w.stdin.flush()
                assert w.stdout.readline().strip() == "wrote"
                batches += 1
        w.stdin.close()                         # the writer exits
        w.wait(timeout=60)
        out, err = watch.communicate(timeout=60)
    finally:
        for p in (w, watch):
            p.kill()
            p.wait()
    assert watch.returncode == 3, (out, err)
    assert f"process {w.pid} exited after" in err and "watch ended" in err
    assert "Traceback" not in err
    lines = samples + [json.loads(line) for line in out.splitlines()]
    samples, summary = lines[:-1], lines[-1]["summary"]
    assert summary["ended"] == "exited" and summary["samples"] == len(samples)
    assert len(samples) >= 3
    assert sum(s["pages"] for s in samples) >= 64
    busiest = max(samples, key=buffer_pages)     # the writer's buffer leads that sample
    assert busiest["mappings"][0]["start"] <= buf < busiest["mappings"][0]["end"]


def test_watch_a_process_that_exits_plain(plugin_env):
    """The writer runs until the watch has printed a sample, then exits."""
    extra, env = _watch_backend_args(plugin_env)
    w, _ = start_writer()
    watch = start_watch(str(w.pid), "--interval", "100ms", "--count", "1000", *extra,
                        env=env)
    try:
        first = watch.stdout.readline()         # a sample: the watch is running
        w.stdin.close()
        w.wait(timeout=60)
        out, err = watch.communicate(timeout=60)
    finally:
        for p in (w, watch):
            p.kill()
            p.wait()
    assert first.startswith("t=") and " total " in first, (first, err)
    assert watch.returncode == 3, (out, err)
    assert "samples over" in out
    assert "exited" in err


def test_watch_count_and_duration_end_the_watch(plugin_env, target):
    extra, env = _watch_backend_args(plugin_env)
    p, _ = target
    t0 = time.monotonic()
    r = run("watch", str(p.pid), "--interval", "100ms", "--count", "3", "--json", *extra,
            env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["summary"]["ended"] == "count"
    r = run("watch", str(p.pid), "--interval", "100ms", "--duration", "0.35s", "--json",
            *extra, env=env)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])["summary"]
    assert summary["ended"] == "duration" and 3 <= summary["samples"] <= 4
    assert summary["seconds"] == pytest.approx(0.35, abs=0.1)
    assert time.monotonic() - t0 < 30


def test_watch_ends_cleanly_on_ctrl_c():
    _uffd_ok()
    p = subprocess.Popen([sys.executable, "-m", "pagescan", "watch", "--demo", "--interval",
                          "100ms", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    first = p.stdout.readline()             # one sample is out: the watch is running
    assert json.loads(first)["index"] == 0
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    summary = json.loads(out.splitlines()[-1])["summary"]
    assert summary["ended"] == "interrupted" and summary["samples"] >= 1
    assert "Traceback" not in err


# ------------------------------------------- watch --openmetrics and serve (issue 15)


def _om_families(text: str) -> dict:
    """{(name, labels...): value} of one OpenMetrics exposition, by the official parser."""
    parser = pytest.importorskip("prometheus_client.openmetrics.parser")
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        for smp in fam.samples:
            out[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    return out


def _written(parsed: dict, mapping: str) -> float:
    (v,) = [v for (name, labels), v in parsed.items()
            if name == "pagescan_pages_written_total" and dict(labels)["mapping"] == mapping]
    return v


def test_watch_openmetrics_prints_an_exposition_per_sample():
    """On a simulated process (soft-dirty): one exposition per sample, each ending with
    '# EOF' and parsed by prometheus_client; the counters only grow; the backend's
    accuracy is a label."""
    r = run("watch", "--demo", "--simulate", "--demo-rate", "2000", "--demo-size", "4",
            "--interval", "100ms", "--count", "3", "--openmetrics")
    assert r.returncode == 0, r.stderr
    parts = r.stdout.split("# EOF\n")
    assert parts[-1] == "" and len(parts) == 4
    values = []
    for part in parts[:-1]:
        parsed = _om_families(part + "# EOF\n")
        samples = [v for (name, _), v in parsed.items() if name == "pagescan_samples_total"]
        assert samples == [len(values) + 1]
        values.append(_written(parsed, "[simulated demo buffer]") if any(
            n == "pagescan_pages_written_total" for n, _ in parsed) else 0)
        info = [dict(k) for (name, k) in parsed if name == "pagescan_backend_info"]
        assert info[0]["mechanism"] == "softdirty" and info[0]["exact"] == "false"
    assert values == sorted(values) and values[-1] > 0
    assert "samples over" not in r.stdout          # the text summary is not mixed in


def test_watch_openmetrics_and_json_is_a_usage_error():
    r = run("watch", "--demo", "--openmetrics", "--json", "--count", "1")
    assert r.returncode == 2 and "--openmetrics" in r.stderr


@pytest.mark.parametrize("args,code,words", [
    ([], 2, "at least one PID"), (["--port", "70000", "--demo"], 2, "--port"),
    (["--port", "-1", "--demo"], 2, "--port"), (["1", "1"], 2, "twice"),
    (["--interval", "0", "--demo"], 2, "--interval")])
def test_serve_usage_errors(args, code, words):
    r = run("serve", *args)
    assert r.returncode == code, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr


def test_serve_no_such_process():
    r = run("serve", "--port", "0", str(gone_pid()))
    assert r.returncode == 3 and "no process" in r.stderr


def _scrape(url: str, accept: str | None = None) -> tuple[str, str]:
    import urllib.request
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


def _serve(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-m", "pagescan", "serve", "--port", "0", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    if not line.startswith("serving "):
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"serve did not start: {line}{out}{err}")
    return p, line.split()[1]


def _poll(url: str, want, proc: subprocess.Popen, accept: str | None = None):
    """Scrape until ``want(parsed)``: the server samples on its own schedule, the
    test waits for what it needs (a deadline only bounds a broken run)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        _, body = _scrape(url, "application/openmetrics-text")
        parsed = _om_families(body)
        if want(parsed):
            return parsed
        time.sleep(0.05)
    pytest.fail(f"the metrics never showed what was expected: {parsed}")


def test_serve_demo_answers_both_formats():
    prom = pytest.importorskip("prometheus_client.parser")
    p, url = _serve("--demo", "--simulate", "--demo-size", "4", "--interval", "50ms")
    try:
        def sampled(parsed):
            return any(n == "pagescan_samples_total" and v >= 2 for (n, _), v in parsed.items())
        _poll(url, sampled, p)
        ctype, body = _scrape(url, "application/openmetrics-text;version=1.0.0")
        assert ctype.startswith("application/openmetrics-text") and body.endswith("# EOF\n")
        _om_families(body)
        ctype, body = _scrape(url)
        assert ctype.startswith("text/plain; version=0.0.4") and "# EOF" not in body
        names = {s.name for f in prom.text_string_to_metric_families(body) for s in f.samples}
        assert {"pagescan_samples_total", "pagescan_backend_info",
                "pagescan_monitored_processes"} <= names
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "Traceback" not in err


def test_serve_a_process_that_exits(plugin_env):
    """Synchronised by pipes: the writer writes 64 pages once the server is up (its
    tracker armed), the test scrapes until they are counted; then the writer exits:
    its series are dropped and the server goes on."""
    extra, env = _watch_backend_args(plugin_env)
    w, _ = start_writer()
    try:
        p, url = _serve(str(w.pid), "--interval", "100ms", *extra, env=env)
    except BaseException:
        w.kill()
        w.wait()
        raise
    try:
        mine = str(w.pid)

        def written(parsed):
            return sum(v for (n, k), v in parsed.items()
                       if n == "pagescan_pages_written_total" and dict(k)["pid"] == mine)
        w.stdin.write("go\n")
        w.stdin.flush()
        assert w.stdout.readline().strip() == "wrote"
        first = _poll(url, lambda parsed: written(parsed) >= 64, p)
        assert first[("pagescan_monitored_processes", ())] == 1
        w.stdin.close()                             # the writer exits
        w.wait(timeout=60)
        gone = _poll(url, lambda parsed: parsed[("pagescan_monitored_processes", ())] == 0,
                     p)
        assert written(gone) == 0                   # its series are dropped
    finally:
        w.kill()
        w.wait()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert f"process {w.pid}" in err and "exited" in err and "Traceback" not in err


# ============================================ scan on kernels before 6.15 (issue 12.5)


class Pre615Kernel(LinuxKernel):
    """This machine's kernel as a 6.7-6.14 one at the seam: its PAGEMAP_SCAN refuses
    (EINVAL) masks that name GUARD (PAGE_IS_GUARD arrived in 6.15), as those kernels
    do; everything else is the real kernel. Its own probe cache, so that the
    categories it accepts are probed on it, not taken from the real kernel's."""

    cache: ClassVar[dict] = {}
    refused: ClassVar[list] = []

    @property
    def probe_cache(self) -> dict:
        return self.cache

    def __init__(self, pid: int | None = None) -> None:
        super().__init__(pid)
        real = self.pagemap_scan       # the core's pm_scan on this kernel's pagemap fd

        def pagemap_scan(start, end, flags=0, masks=None, max_pages=0, max_regions=None):
            named = pagescan.ALL_CATEGORIES if masks is None else (
                masks.inverted | masks.mask | masks.anyof | masks.return_mask)
            if named & pagescan.Category.GUARD:
                self.refused.append(named)
                raise OSError(errno.EINVAL, "PAGEMAP_SCAN: Invalid argument")
            return real(start, end, flags, masks, max_pages, max_regions)
        self.pagemap_scan = pagemap_scan


@pytest.fixture
def pre615(monkeypatch):
    """``pagescan scan`` (in this process) on a kernel without GUARD."""
    if pagescan.IMPLEMENTATION != "cython":
        pytest.skip("PAGEMAP_SCAN needs the compiled core")
    with LinuxKernel() as k:
        try:
            k.scan_categories()
        except OSError as err:
            require(err.errno != errno.ENOTTY, "the kernel has no PAGEMAP_SCAN (6.7+)")
            raise
    import pagescan.cli.scan as scan_module
    Pre615Kernel.cache = {}
    Pre615Kernel.refused = []
    monkeypatch.setattr(scan_module, "LinuxKernel", Pre615Kernel)
    return Pre615Kernel


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    from pagescan.cli import main
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_scan_on_a_kernel_without_guard_uses_the_categories_it_accepts(target, pre615,
                                                                         capsys):
    """Issue 12.5: ``pagescan scan PID`` failed on 6.7-6.14 with ``[Errno 22]
    PAGEMAP_SCAN``: its default return mask named GUARD. It asks the kernel with the
    probed categories (Masks.restrict), as the backends do."""
    p, addr = target
    code, out, err = _main(capsys, "scan", str(p.pid))
    assert code == 0, err
    assert "Errno" not in err and "total:" in out
    assert "does not know GUARD" in out
    assert pre615.cache["scan_categories"] == pagescan.ALL_CATEGORIES & ~pagescan.Category.GUARD
    assert pre615.refused, "the fake kernel was not asked (the test tests nothing)"
    # the answers are those of the real kernel, without GUARD
    rng = f"{addr:x}-{addr + 64 * PS:x}"
    code, out, err = _main(capsys, "scan", str(p.pid), "--range", rng, "--required",
                           "PRESENT", "--return", "all", "--json")
    assert code == 0, err
    rep = json.loads(out)
    got = [((a - addr) // PS, (b - addr) // PS, c)
           for a, b, c in _regions(rep, addr, addr + 64 * PS)]
    assert [(a, b) for a, b, _ in got] == [(1, 4), (10, 11), (40, 41)]
    assert all("PRESENT" in c and "GUARD" not in c for _, _, c in got)
    # a filter naming GUARD: required matches nothing, excluded everything
    code, out, err = _main(capsys, "scan", str(p.pid), "--range", rng, "--required",
                           "GUARD", "--json")
    assert code == 0, err
    assert json.loads(out)["total"]["pages"] == 0
    code, out, err = _main(capsys, "scan", str(p.pid), "--range", rng, "--excluded",
                           "GUARD", "--required", "PRESENT", "--json")
    assert code == 0, err
    assert json.loads(out)["total"]["pages"] == 5


def test_scan_text_and_json_totals_agree(target):
    """Issue 12.5: the text said '36 mappings' where the JSON said 39: the text
    counted the mappings it lists (those with regions), the JSON every mapping
    scanned ([vvar], [vvar_vclock], [vsyscall] have none)."""
    p, addr = target
    for extra in ((), ("--required", "PRESENT"), ("--range", f"{addr:x}-{addr + 64 * PS:x}"),
                  ("--excluded", "all")):
        text = run("scan", str(p.pid), *extra)
        js = run("scan", str(p.pid), "--json", *extra)
        assert text.returncode == js.returncode == 0, (text.stderr, js.stderr)
        t = json.loads(js.stdout)["total"]
        listed = [m for m in json.loads(js.stdout)["mappings"] if m["regions"]]
        assert t["mappings"] == len(listed)
        assert t["mappings_scanned"] == len(json.loads(js.stdout)["mappings"])
        line = next(x for x in text.stdout.splitlines() if x.startswith("total:"))
        assert (f"total: {t['pages']} pages " in line
                and f"in {t['regions']} regions of {t['mappings']} mappings" in line), line
        hidden = t["mappings_scanned"] - t["mappings"]
        assert (f"({hidden} more without matching pages not listed)" in line) == bool(hidden)
        # the text lists exactly the mappings the JSON counts
        heads = [x for x in text.stdout.splitlines() if x[:1] not in (" ", "") and "-" in
                 x.split()[0] and not x.startswith(("total:", "note:", "Address"))]
        assert len(heads) == t["mappings"]


# A process with 16 pages tracked by the uffd backend (registered for write-protect),
# page 2 written after arming; prints the buffer's address, waits for stdin to close.
TRACKED_TARGET = r"""
import mmap, sys, pagescan
m = pagescan.allocate(16 * mmap.PAGESIZE)
t = pagescan.track(m, backend="uffd")
m[2 * mmap.PAGESIZE] = 1
print(m.address, flush=True)
sys.stdin.read()
t.close()
m.close()
"""


def test_scan_reports_written_only_where_it_means_something(target, uffd_ok):
    """Issue 12.5: in memory no userfaultfd registered for write-protect the kernel
    reports every page WRITTEN ('not write-protected'); by default scan leaves it out
    there (and says so), keeps it where it means written since the last arm, and
    shows the kernel's answer with a note when WRITTEN is asked for."""
    p, addr = target
    rng = f"{addr:x}-{addr + 64 * PS:x}"
    rep = json.loads(run("scan", str(p.pid), "--json").stdout)
    flags = [g["flags"] for m in rep["mappings"] for g in m["regions"]]
    W, WP = pagescan.Category.WRITTEN, pagescan.Category.WPALLOWED
    assert flags and not any(f & W and not f & WP for f in flags)
    assert any("WRITTEN is shown only in memory registered" in n for n in rep["notes"])
    text = run("scan", str(p.pid), "--range", rng).stdout
    assert "WRITTEN" in text.split("note:")[1]       # only in the note
    assert "WRITTEN," not in text.split("note:")[0]
    # asked for: the kernel's answer, with what it means
    for args in (("--return", "all"), ("--return", "written,present"),
                 ("--required", "written")):
        rep = json.loads(run("scan", str(p.pid), "--range", rng, *args, "--json").stdout)
        got = _regions(rep, addr, addr + 64 * PS)
        assert got and all("WRITTEN" in c for _, _, c in got)
        assert any("says nothing about writes" in n for n in rep["notes"])
    # registered memory: WRITTEN is the pages written since the arm, shown by default
    q = subprocess.Popen([sys.executable, "-c", TRACKED_TARGET], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        base = int(q.stdout.readline())
        rep = json.loads(run("scan", str(q.pid), "--range", f"{base:x}-{base + 16 * PS:x}",
                             "--json").stdout)
    finally:
        q.stdin.close()
        q.wait(timeout=30)
    got = [((a - base) // PS, (b - base) // PS, c)
           for a, b, c in _regions(rep, base, base + 16 * PS)]
    assert [(a, b) for a, b, c in got if "WRITTEN" in c] == [(2, 3)]
    assert all("WPALLOWED" in c for _, _, c in got)
    assert not any("says nothing" in n or "shown only" in n for n in rep["notes"])


# ================================================= bad input to every option (issue 12.17)

HUGE = str(2**64)
BAD_NUMBERS = ["inf", "-inf", "nan", "NaN", "-1", "0", HUGE, str(2**70), "1e400", "abc",
               "", "9" * 5000, "0x10"]

# (arguments before the bad value, the option, the bad values, what the message says)
BAD_OPTIONS = [
    (["watch", "--demo"], "--demo-rate",
     ["inf", "-inf", "nan", "-1", "1e12", "1000001", HUGE, "1e400", "abc", "", "0x10"],
     "from 0 to 1000000 pages per second"),
    (["watch", "--demo"], "--demo-size",
     [*BAD_NUMBERS, "4097", "100000000", "1.5", "64M"], "from 1 to 4096"),
    (["watch", "--demo"], "--interval", [*BAD_NUMBERS, "1e300", "0.0001s", "31d", "1e9s",
                                                    "1e400h", "soon"],
     "from 1ms to 30 days"),
    (["watch", "--demo"], "--duration", [*BAD_NUMBERS, "1e300", "1us", "-1s"],
     "from 1ms to 30 days"),
    (["watch", "--demo"], "--count", ["0", "-1", "abc", "", "1e3", "nan", "inf", "9" * 5000],
     "> 0"),
    (["watch", "--demo"], "--top", ["0", "-1", "abc", "1.5", "inf", "9" * 5000], "> 0"),
    (["compare"], "--size", [*BAD_NUMBERS, "1e400M", "3M", "5G", "infM", "nanG"],
     "from 4M to 4G"),
    (["checkpoint"], "--count", ["0", "-1", "abc", "inf", "nan", "9" * 5000], "> 0"),
    (["checkpoint"], "--interval", [*BAD_NUMBERS, "1e300"], "from 1ms to 30 days"),
]
PID_CASES = ["0", "-1", "abc", "", "inf", "nan", "1e3", HUGE, str(2**70), "4194305",
             "9" * 5000]


def _usage_error(argv: list[str], capsys) -> str:
    """Parse ``argv`` as the command does; the usage error's message (exit 2)."""
    from pagescan.cli import build_parser
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("head,option,values,allowed", BAD_OPTIONS,
                         ids=[o for _, o, _, _ in BAD_OPTIONS])
def test_bad_numbers_are_usage_errors_naming_the_option_and_range(head, option, values,
                                                                  allowed, capsys):
    """Issue 12.17: inf, nan, negative, zero, huge (past 2**64), overflowing and
    garbage values of every numeric, size and duration option: a usage error (exit 2)
    whose message names the option and the allowed range."""
    for value in values:
        err = _usage_error([*head, f"{option}={value}"], capsys)
        assert f"argument {option}" in err, (value, err)
        assert allowed in err, (value, err)


@pytest.mark.parametrize("sub", ["scan", "watch", "checkpoint"])
def test_bad_pids_are_usage_errors(sub, capsys):
    for value in PID_CASES:
        err = _usage_error([sub, "--", value, *(["f"] if sub == "checkpoint" else [])],
                           capsys)
        assert "PID" in err and "from 1 to 4194304" in err, (value, err)


@pytest.mark.parametrize("value", ["ffffffffffffffffffffffff-fffffffffffffffffffffffff",
                                   "0-" + "f" * 40, "1000-1000" + "0" * 30,
                                   "-1000", "0x-0x1000", "1000-", "1000--2000"])
def test_bad_ranges_are_usage_errors(value, capsys):
    err = _usage_error(["scan", "1", "--range", value], capsys)
    assert "argument --range" in err


@pytest.mark.parametrize("head,option,value,want", [
    (["watch", "--demo"], "--demo-rate", "0", 0.0),
    (["watch", "--demo"], "--demo-rate", "1e6", 1e6),
    (["watch", "--demo"], "--demo-rate", "2.5", 2.5),
    (["watch", "--demo"], "--demo-size", "4096", 4096),
    (["watch", "--demo"], "--interval", "1ms", 1e-3),
    (["watch", "--demo"], "--interval", "720h", 720 * 3600.0),
    (["watch", "--demo"], "--duration", "1.5m", 90.0),
    (["watch", "--demo"], "--count", HUGE, 2**64),
    (["compare"], "--size", "4G", (4 << 30) // PS),
    (["compare"], "--size", "8M", (8 << 20) // PS),
])
def test_good_values_at_the_ends_of_the_ranges(head, option, value, want):
    from pagescan.cli import build_parser
    args = build_parser().parse_args([*head, option, value])
    assert getattr(args, option.lstrip("-").replace("-", "_")) == want


@pytest.mark.parametrize("args", [["--demo-rate", "inf"], ["--demo-rate", "nan"],
                                  ["--demo-rate", "1e12"], ["--demo-size", "100000000"],
                                  ["--demo-size", str(2**70)], ["--interval", "1e300"]])
def test_watch_demo_bad_values_end_at_once(args):
    """Issue 12.17, as a user meets it: a traceback (inf, nan, --demo-size, 1e300) or
    a hang (--demo-rate 1e12) before; now exit 2 with the option named."""
    r = run("watch", "--demo", "--count", "1", "--interval", "100ms", *args, timeout=30)
    assert r.returncode == 2, r.stderr
    assert f"argument {args[0]}" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


# ================================================ a POSIX locale, an ASCII stdout (12.17)

ASCII_ENVS = {"LC_ALL=C PYTHONUTF8=0": {"LC_ALL": "C", "PYTHONUTF8": "0"},
              "PYTHONIOENCODING=ascii": {"PYTHONIOENCODING": "ascii"}}


def _ascii_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONIOENCODING", "PYTHONUTF8", "LANG", "LC_ALL", "LC_CTYPE")}
    env.update(extra)
    return env


@pytest.mark.parametrize("env", [
    "LC_ALL=C PYTHONUTF8=0",                         # the POSIX locale: the default run
    pytest.param("PYTHONIOENCODING=ascii", marks=pytest.mark.slow),
])
def test_every_subcommand_prints_on_an_ascii_stream(env, target, uffd_ok):
    """Issue 12.17: with a POSIX locale (no UTF-8 mode) or PYTHONIOENCODING=ascii,
    'µs' (compare), '∩' (compare --help) ... raised UnicodeEncodeError. What a
    stream cannot encode is printed in ASCII ('us')."""
    p, addr = target
    e = _ascii_env(ASCII_ENVS[env])
    r = subprocess.run([sys.executable, "-c", "import sys; print(sys.stdout.encoding)"],
                       capture_output=True, text=True, env=e)
    assert r.stdout.strip().lower() in ("ascii", "ansi_x3.4-1968"), r.stdout
    rng = f"{addr:x}-{addr + 64 * PS:x}"
    cases = [
        (["--help"], 0), (["doctor"], 0), (["doctor", "--json"], 0),
        (["doctor", "--help"], 0), (["scan", "--help"], 0), (["watch", "--help"], 0),
        (["compare", "--help"], 0), (["checkpoint", "--help"], 0),
        (["checkpoint-info", "--help"], 0),
        (["scan", str(p.pid)], 0), (["scan", str(p.pid), "--json"], 0),
        (["scan", str(p.pid), "--range", rng, "--method", "pagemap"], 0),
        (["watch", "--demo", "--count", "1", "--interval", "100ms"], 0),
        (["watch", "--demo", "--count", "1", "--interval", "100ms", "--json"], 0),
        (["watch", "--demo", "--simulate", "--count", "1", "--interval", "100ms",
          "--demo-size", "4"], 0),
        (["compare", "--quick"], 0), (["compare", "--quick", "--json"], 0),
        (["watch", "--demo-rate", "nan"], 2), (["scan", "999999"], 3),
    ]
    for argv, code in cases:
        r = subprocess.run([sys.executable, "-m", "pagescan", *argv], capture_output=True,
                           env=e, timeout=300)
        assert r.returncode == code, (argv, r.stderr.decode(errors="replace")[-2000:])
        assert b"Traceback" not in r.stderr and b"UnicodeEncodeError" not in r.stderr, argv
        r.stdout.decode("ascii")          # everything printed is ASCII
        if argv == ["compare", "--quick"]:
            assert b"us/page" in r.stdout


def test_the_ascii_fallback():
    from pagescan.cli.output import ASCII_ERRORS
    assert "1st write µs/page · a ∩ b — ☃".encode("ascii", ASCII_ERRORS) == \
        b"1st write us/page - a & b -- \\u2603"
    assert "µs ∩".encode("latin-1", ASCII_ERRORS) == "µs &".encode("latin-1")


def test_watch_demo_buffer_that_cannot_be_allocated_is_an_error(uffd_ok):
    """Issue 12.17: a --demo-size inside the range that the machine cannot allocate
    (here: an address-space limit of 1 GiB) ends with exit code 1 and a message
    naming --demo-size, not a traceback."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    r = subprocess.run([sys.executable, "-m", "pagescan", "watch", "--demo", "--demo-size",
                        "4096", "--count", "1", "--interval", "100ms"], capture_output=True,
                       text=True, timeout=60, preexec_fn=limit)
    assert r.returncode == 1, r.stderr
    assert "cannot allocate the 4096 MiB demo buffer" in r.stderr
    assert "--demo-size" in r.stderr and "Traceback" not in r.stderr
