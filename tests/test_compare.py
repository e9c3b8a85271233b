"""``pagescan compare``: the workloads' ground truth, the scoring, the isolation of
each (backend, workload) pair, and the command as a user runs it
(``python -m pagescan compare ...`` in a subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import require
from test_cli import install_plugin, run, run_pty

import pagescan
from pagescan import compare
from pagescan.compare import (Executor, Op, Tally, Workload, build_workloads, run_isolated,
                              run_workload)

SPEED_KEYS = {"arm_ms", "scan_ms", "reset_ms", "first_write_us_per_page"}


# ------------------------------------------------------------ the ground truth


class Model(Executor):
    """An executor that reports what the test tells it to, from the same ops."""

    def __init__(self, w: Workload, *, drop: int = 0, extra: int = 0,
                 failing_kwrites: bool = False) -> None:
        self.w, self.drop, self.extra, self.failing = w, drop, extra, failing_kwrites
        self.pending: set[int] = set()
        self.data = set(w.populate)

    def write(self, pages):
        self.pending |= set(pages)
        self.data |= set(pages)

    def kernel_write(self, pages):
        if self.failing:
            return list(pages)
        self.write(pages)
        return []

    def discard(self, pages):
        self.pending |= self.data & set(pages)
        self.data -= set(pages)

    def protect(self, pages, prot):
        pass

    def fork(self, child_pages):
        pass

    def neighbour(self, npages):
        pass

    def move(self, pages):
        pass

    def collapse(self, pages):
        return 0, 1

    def collect(self):
        got = set(sorted(self.pending)[self.drop:])
        got |= {self.w.npages + i for i in range(self.extra)}    # never-written pages
        self.pending = set()
        return got

    def concurrent(self, pages, threads):
        half = len(pages) // 2
        return [set(pages[:half]), set(pages[half:]) | set(pages[:3]), set()]


def _intended(w: Workload) -> int:
    """Pages each collect should report, summed: computed from the ops independently
    of run_workload's bookkeeping."""
    total, pending, data = 0, set(), set(w.populate)
    for op in w.ops:
        if op.kind in ("write", "kwrite"):
            pending |= set(op.pages)
            data |= set(op.pages)
        elif op.kind == "discard":
            pending |= data & set(op.pages)
            data -= set(op.pages)
        elif op.kind == "collect":
            total += len(pending)
            pending = set()
        elif op.kind == "concurrent":
            total += len(set(op.pages))
    return total


@pytest.mark.parametrize("w", build_workloads(1024, seed=5), ids=lambda w: w.name)
def test_a_perfect_tracker_scores_one(w):
    res = run_workload(w, Model(w))
    t = res["tally"]
    assert t["truth"] == _intended(w) > 0
    assert t["tp"] == t["truth"] == t["reported"]
    assert t["lost"] == t["fp"] == 0
    assert t["precision"] == t["recall"] == 1.0


def test_lost_writes_and_false_positives_are_counted():
    w = next(w for w in build_workloads(1024) if w.name == "sparse")
    collects = sum(op.kind == "collect" for op in w.ops)
    t = run_workload(w, Model(w, drop=2, extra=3))["tally"]
    assert t["lost"] == 2 * collects
    assert t["fp"] == 3 * collects
    assert t["tp"] == t["truth"] - t["lost"]
    assert t["precision"] == pytest.approx(t["tp"] / (t["tp"] + t["fp"]))
    assert t["recall"] == pytest.approx(t["tp"] / (t["tp"] + t["lost"]))


def test_failed_kernel_writes_are_an_outcome_not_a_change():
    w = next(w for w in build_workloads(1024) if w.name == "kernel")
    res = run_workload(w, Model(w, failing_kwrites=True))
    t = res["tally"]
    kw = sum(len(op.pages) for op in w.ops if op.kind == "kwrite")
    assert t["failed_writes"] == kw
    assert t["truth"] == _intended(w) - kw
    assert t["lost"] == 0
    assert any("EFAULT" in n for n in res["notes"])


def test_concurrent_truth_is_the_union_of_the_collects():
    w = Workload("t", "t", "t", 64, (Op("concurrent", tuple(range(10)), 2),), ())
    t = run_workload(w, Model(w))["tally"]
    assert t["truth"] == t["tp"] == 10 and t["lost"] == t["fp"] == 0
    assert t["reported_twice"] == 3


def test_discarding_a_page_that_held_data_changes_it():
    w = Workload("d", "d", "d", 8, (Op("discard", (0, 1, 5)), Op("collect"),
                                    Op("discard", (0,)), Op("collect")), populate=(0, 1))
    t = run_workload(w, Model(w))["tally"]
    assert t["truth"] == 2            # pages 0 and 1 held data; 5 never did; 0 is zero now


def test_workloads_are_deterministic_and_seeded():
    a = build_workloads(2048, seed=3)
    assert a == build_workloads(2048, seed=3)
    assert a != build_workloads(2048, seed=4)
    assert [w.name for w in a] == compare.WORKLOAD_NAMES
    for w in a:
        for op in w.ops:
            assert all(0 <= p < w.npages for p in op.pages)
    thp = {w.name: w for w in a if w.name.startswith("thp")}
    assert thp["thp-on"].thp and not thp["thp-off"].thp
    assert thp["thp-on"].ops == thp["thp-off"].ops


def test_tally_without_pages_has_no_ratios():
    t = Tally()
    assert t.precision is None and t.recall is None


# ---------------------------------------------------------------- isolation


def test_isolated_result():
    assert run_isolated(lambda: {"x": 1}, 10) == {"ok": {"x": 1}}


def test_isolated_exception_is_reported():
    def boom():
        raise RuntimeError("nope")
    res = run_isolated(boom, 10)
    assert "RuntimeError: nope" in res["error"]


def test_isolated_crash_is_reported():
    def crash():
        os.kill(os.getpid(), signal.SIGSEGV)
        return {}
    import faulthandler
    was = faulthandler.is_enabled()
    faulthandler.disable()
    try:
        res = run_isolated(crash, 10)
    finally:
        if was:
            faulthandler.enable()
    assert res == {"error": "crashed: killed by SIGSEGV"}


def test_isolated_timeout_kills_the_child():
    t0 = time.monotonic()
    res = run_isolated(lambda: time.sleep(30) or {}, 0.5)
    assert "timed out" in res["error"]
    assert time.monotonic() - t0 < 10


# -------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def quick_report():
    r = run("compare", "--quick", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_compare_json_schema(quick_report):
    rep = quick_report
    assert set(rep) >= {"schema_version", "pagescan", "implementation", "kernel",
                        "environment", "pages", "bytes", "seed", "rounds", "repeat",
                        "workloads", "rows", "left_out", "seconds"}
    assert rep["schema_version"] == compare.SCHEMA_VERSION
    assert rep["environment"]["where"] == "host" and rep["environment"]["emulated"] is False
    assert rep["kernel"] == os.uname().release
    assert [w["name"] for w in rep["workloads"]] == compare.WORKLOAD_NAMES
    assert rep["rows"]
    for row in rep["rows"]:
        assert set(row) >= {"name", "label", "kind", "probe", "capabilities", "totals",
                            "speed", "speed_error", "workloads", "workloads_failed"}
        assert row["kind"] in ("real", "simulated")
        assert set(row["workloads"]) == set(compare.WORKLOAD_NAMES)
        for cell in row["workloads"].values():
            assert set(cell) >= {"tally", "seconds", "notes", "error", "refused",
                                 "program_error"}
            if cell["tally"] is not None:
                assert set(cell["tally"]) >= {"truth", "reported", "tp", "fp", "lost",
                                              "failed_writes", "precision", "recall"}
        t = row["totals"]
        assert t["tp"] + t["lost"] == t["truth"]
        assert t["tp"] + t["fp"] == t["reported"]
        if row["kind"] == "real":
            assert row["label"] == row["name"]
            assert set(row["speed"]) >= SPEED_KEYS
            assert all(row["speed"][k] >= 0 for k in SPEED_KEYS)
            assert row["speed"]["arm_ms"] > 0
            for k in SPEED_KEYS:
                sp = row["speed"]["spread"][k]
                assert sp["n"] == row["speed"]["repeat"] == rep["repeat"] == 3
                assert sp["min"] <= sp["q1"] <= sp["median"] <= sp["q3"] <= sp["max"]
                assert sp["median"] == row["speed"][k]
        else:
            assert row["label"] == f"{row['name']} (simulated)"
            assert row["speed"] is None
    for lo in rep["left_out"]:
        assert lo["reason"]


def test_compare_covers_every_backend(quick_report):
    """Every registered real backend is a real row (its probe passes), a simulated row
    or left out with its probe's reason."""
    rows = {(r["name"], r["kind"]) for r in quick_report["rows"]}
    left = {lo["name"]: lo["reason"] for lo in quick_report["left_out"]}
    for name, p in pagescan.probe_all().items():
        if p.ok and (name, "real") in rows:
            continue
        if not p.ok:
            assert (name, "real") not in rows
            assert (name, "simulated") in rows or p.reason in left.get(name, "")


def test_compare_truth_matches_the_workloads(quick_report):
    """The truth counts are those of the operations (the same seed and size)."""
    rep = quick_report
    wls = {w.name: w for w in build_workloads(rep["pages"], rep["seed"], rep["rounds"])}
    for row in rep["rows"]:
        for name, cell in row["workloads"].items():
            if cell["tally"] is not None:
                t = cell["tally"]
                assert t["truth"] + t["failed_writes"] == _intended(wls[name]), (row, name)


def test_uffd_loses_nothing(quick_report):
    p = pagescan.probe("uffd")
    require(p.ok, p.reason)
    (row,) = [r for r in quick_report["rows"] if r["name"] == "uffd" and r["kind"] == "real"]
    assert row["totals"]["lost"] == 0
    assert row["totals"]["recall"] == 1.0
    assert row["workloads_failed"] == 0


def test_mprotect_kernel_writes_fail_as_an_outcome(quick_report):
    p = pagescan.probe("mprotect")
    require(p.ok, p.reason)
    rows = [r for r in quick_report["rows"] if r["name"] == "mprotect" and r["kind"] == "real"]
    cell = rows[0]["workloads"]["kernel"]
    assert cell["error"] is None
    assert cell["tally"]["failed_writes"] > 0
    assert any("EFAULT" in n for n in cell["notes"])


def test_compare_numbers_are_measured_in_the_run():
    """Two runs: the truth follows the seed, and the times are not constants."""
    a = json.loads(run("compare", "--quick", "--json", "--workload", "sparse", "--seed", "1",
                       timeout=300).stdout)
    b = json.loads(run("compare", "--quick", "--json", "--workload", "sparse", "--seed", "2",
                       "--size", "12M", timeout=300).stdout)
    assert a["pages"] != b["pages"]
    ta = [r["workloads"]["sparse"]["tally"]["truth"] for r in a["rows"]]
    tb = [r["workloads"]["sparse"]["tally"]["truth"] for r in b["rows"]]
    assert ta and tb and ta[0] != tb[0]
    sa = [r["speed"] for r in a["rows"] if r["speed"]]
    sb = [r["speed"] for r in b["rows"] if r["speed"]]
    if sa and sb:
        assert sa[0]["pages"] != sb[0]["pages"]
        assert sa[0]["arm_ms"] != sb[0]["arm_ms"]


def test_compare_table(quick_report):
    r = run("compare", "--quick", timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for head in ("precision", "recall", "lost", "false+", "arm ms", "scan ms", "reset ms",
                 "1st write"):
        assert head in out
    for row in quick_report["rows"]:
        assert row["label"] in out
    for w in quick_report["workloads"]:
        assert w["title"] in out
    assert r.stderr == ""           # no progress bar when stderr is not a terminal


def test_compare_progress_bar_on_a_terminal():
    code, out = run_pty("compare", "--quick", "--workload", "sparse", timeout=300)
    assert code == 0, out
    assert "[" in out and "/" in out and "\r" in out
    assert "sparse random writes" in out


@pytest.mark.parametrize("args", [["--workload", "nope"], ["--backend", "nope"],
                                  ["--size", "1M"], ["--size", "lots"], ["--rounds", "1"],
                                  ["--simulate", "sometimes"]])
def test_compare_usage_errors(args):
    r = run("compare", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["--plot", "/nonexistent/x.png"], "no such directory /nonexistent"),
    (["--plot", "{tmp}/x.txt"], "cannot draw a .txt file"),
    (["--plot", "{tmp}/noextension"], "cannot draw a file without an extension"),
    (["--timeout", "0"], "--timeout must be a number of seconds above 0"),
    (["--timeout", "-1"], "--timeout must be a number of seconds above 0"),
    (["--timeout", "nan"], "--timeout must be a number of seconds above 0"),
    (["--rounds", "0"], "--rounds must be at least 2"),
    (["--repeat", "0"], "--repeat must be at least 1"),
    (["--from", "/nonexistent.json"], "cannot read /nonexistent.json"),
])
def test_compare_bad_options_stop_before_the_run(tmp_path, args, message):
    """Issue 12 item 17: --plot to a missing directory or an unknown format was a
    traceback after the whole run, --timeout 0 made every cell "error", --rounds 0
    ran the default silently. Each is a usage error now, before anything runs."""
    r = run("compare", "--quick", *(a.format(tmp=tmp_path) for a in args), timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_saved_runs_side_by_side(tmp_path, quick_report):
    """--from shows a saved report without running; --against puts two side by side
    (totals over the workloads both have)."""
    a = tmp_path / "a.json"
    a.write_text(json.dumps(quick_report))
    b = dict(quick_report, kernel="9.9.9-other",
             workloads=[w for w in quick_report["workloads"] if w["name"] != "sparse"])
    (tmp_path / "b.json").write_text(json.dumps(b))
    r = run("compare", "--from", str(a), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == quick_report
    r = run("compare", "--from", str(a), "--against", str(tmp_path / "b.json"))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "2 saved runs side by side" in out
    for row in quick_report["rows"]:
        assert f"{row['label']} @{quick_report['kernel']}" in out
        assert f"{row['label']} @9.9.9-other" in out
    assert "sparse random writes" not in out       # not in b: not shared
    both = compare.combine([quick_report, b], ["a", "b"])
    shared = [w["name"] for w in both["workloads"]]
    assert "sparse" not in shared and len(shared) == len(quick_report["workloads"]) - 1
    for row in both["rows"]:
        lost = sum(row["workloads"][n]["tally"]["lost"] for n in shared
                   if row["workloads"][n]["tally"])
        assert row["totals"]["lost"] == lost


def test_spread():
    s = compare.spread([5.0, 1.0, 3.0, 2.0, 4.0], 10)
    assert (s["n"], s["min"], s["q1"], s["median"], s["q3"], s["max"]) == \
        (5, 10, 20, 30, 40, 50)
    one = compare.spread([2.0])
    assert one["q1"] == one["median"] == one["q3"] == 2.0
    assert compare.spread([])["median"] is None


def test_uffd_refuses_a_remapped_range(quick_report):
    """mremap away and back: the uffd registration does not follow the pages
    (no UFFD_FEATURE_EVENT_REMAP), and the backend says so instead of losing writes."""
    p = pagescan.probe("uffd")
    require(p.ok, p.reason)
    (row,) = [r for r in quick_report["rows"] if r["name"] == "uffd" and r["kind"] == "real"]
    cell = row["workloads"]["mremap"]
    assert cell["tally"] is None and cell["error"] is None
    assert "RangeError" in cell["refused"] and "remapped" in cell["refused"]
    assert row["workloads_refused"] == 1 and row["workloads_failed"] == 0


@pytest.mark.slow            # needs matplotlib: the slow tier installs it (tox -e slow)
def test_compare_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "cmp.png"
    r = run("compare", "--quick", "--workload", "sparse", "--workload", "kernel",
            "--plot", str(png), timeout=300)
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_plot_without_matplotlib(tmp_path):
    """Without the plot extra: a clear message naming it, before anything runs."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "matplotlib.py").write_text("raise ImportError('matplotlib is not installed')\n")
    env = dict(os.environ, PYTHONPATH=f"{block}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run([sys.executable, "-m", "pagescan", "compare", "--quick", "--plot",
                        str(tmp_path / "x.png")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 1
    assert "pagescan[plot]" in r.stderr
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- the simulator


def _sim_ok() -> None:
    ok, why = compare.sim_status()
    require(ok, f"the simulator does not work here: {why}")


def _tallies(row: dict) -> dict:
    """Per workload: (lost, fp, failed writes), or the outcome that stopped it (the
    exception's class: the addresses differ between the real and simulated runs)."""
    out = {}
    for name, c in row["workloads"].items():
        if c["tally"] is None:
            stop = c["refused"] or c["program_error"] or c["error"]
            out[name] = stop.split(":")[0]
        else:
            out[name] = (c["tally"]["lost"], c["tally"]["fp"], c["tally"]["failed_writes"])
    return out


def test_the_simulator_agrees_with_the_kernel():
    """Where a backend works here, its simulated row gives the same lost writes,
    false positives and failed writes on every workload as the real one."""
    _sim_ok()
    r = run("compare", "--quick", "--json", "--simulate", "all", timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {(x["name"], x["kind"]): x for x in json.loads(r.stdout)["rows"]}
    pairs = [n for n, k in rows if k == "real" and (n, "simulated") in rows]
    if not pairs:
        pytest.skip("no backend both works here and is simulated")
    for name in pairs:
        real, sim = rows[name, "real"], rows[name, "simulated"]
        assert real["workloads_failed"] == sim["workloads_failed"] == 0
        assert _tallies(real) == _tallies(sim), name


def test_simulated_soft_dirty_shows_its_known_inaccuracies():
    """Soft-dirty played by the simulator (the softdirty backend's own code on the
    simulated kernel): huge pages read as 2 MiB written, a discard is not seen, and a
    store between the pagemap read and clear_refs is lost."""
    _sim_ok()
    r = run("compare", "--quick", "--json", "--simulate", "only", "--backend", "softdirty",
            timeout=300)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)["rows"]
    assert row["kind"] == "simulated" and row["label"] == "softdirty (simulated)"
    assert row["speed"] is None and "softdirty backend" in row["model"]
    t = {k: c["tally"] for k, c in row["workloads"].items()}
    assert t["thp-on"]["fp"] >= 512 and t["thp-off"]["fp"] == 0
    assert t["dontneed"]["lost"] > 0
    assert t["threads"]["lost"] > 0
    # a new mapping merged with the buffer's VMA: VM_SOFTDIRTY, every page reported
    assert t["merge"]["fp"] >= 2048 - 64 and t["merge"]["lost"] == 0
    # mremap marks the moved PTEs soft-dirty
    assert t["mremap"]["fp"] > 0 and t["mremap"]["lost"] == 0
    for name in ("sparse", "sequential", "kernel", "fork"):
        assert t[name]["lost"] == t[name]["fp"] == 0, name
    assert "simulated threads" in " ".join(row["workloads"]["threads"]["notes"])


def test_simulate_none_leaves_missing_backends_out():
    r = run("compare", "--quick", "--json", "--simulate", "none", "--workload", "sparse",
            timeout=300)
    rep = json.loads(r.stdout)
    assert all(x["kind"] == "real" for x in rep["rows"])
    for name, p in pagescan.probe_all().items():
        if not p.ok and name != "simulator":
            (lo,) = [x for x in rep["left_out"] if x["name"] == name]
            assert p.reason in lo["reason"]


@pytest.mark.parametrize("mechanism", sorted(compare.SIM_MODELS))
def test_sim_executor_runs_the_real_backend_untouched(mechanism):
    """A simulated row is the mechanism's real backend over the simulated kernel,
    reached through the public API: no backend module is patched, before, during or
    after the run."""
    _sim_ok()

    def backend_modules() -> dict:
        return {name: {k: id(v) for k, v in vars(mod).items()}
                for name, mod in list(sys.modules.items())
                if name.startswith("pagescan.backends") and mod is not None}
    before = backend_modules()
    w = next(w for w in build_workloads(1024) if w.name == "sparse")
    ex = compare.SimExecutor(mechanism, w)
    try:
        assert ex.tracker.backend == "simulator" and ex.tracker.mechanism == mechanism
        assert not ex.tracker.capabilities.real
        during = backend_modules()
        res = run_workload(w, ex)
    finally:
        ex.close()
    after = backend_modules()
    for name, attrs in before.items():
        for state in (during, after):
            assert {k: state[name].get(k) for k in attrs} == attrs, name
    assert res["tally"]["lost"] == res["tally"]["fp"] == 0
    assert res["tally"]["tp"] > 0


def test_watch_demo_simulated():
    _sim_ok()
    r = run("watch", "--demo", "--simulate", "--interval", "200ms", "--count", "2",
            "--demo-size", "8", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["index"] for x in lines[:2]] == [0, 1]
    assert all(x["pages"] > 0 for x in lines[:2])
    assert lines[0]["mappings"][0]["path"] == "[simulated demo buffer]"
    assert lines[2]["summary"]["ended"] == "count"


def test_watch_simulate_needs_demo():
    r = run("watch", str(os.getpid()), "--simulate", "--count", "1")
    assert r.returncode == 2 and "--demo" in r.stderr


CRASHING = r"""
import os, signal
from pagescan.backends.base import Backend, Capabilities, Probe


class Crashing(Backend):
    name = "crashing"
    capabilities = Capabilities(atomic_reset=True, range_reset=True, other_processes=False,
                                kernel_filtering=False, kernel_writes_seen=True, categories=0)

    @classmethod
    def probe(cls):
        return Probe(True)

    def register(self, start, end):
        pass

    def unregister(self, start, end):
        pass

    def reset(self, start, end):
        pass

    def scan(self, start, end, masks, *, max_pages=0, max_regions=None, reset=False):
        os.kill(os.getpid(), signal.SIGSEGV)
"""


def test_a_crashing_backend_is_an_outcome_not_the_end(tmp_path):
    """A third-party backend that dies on a signal: its cells say so, the other
    backends are still measured, and the exit code says some runs failed."""
    env = install_plugin(tmp_path, "pagescan_crashing", CRASHING, "crashing", "Crashing")
    names = ["--backend", "crashing"] + (["--backend", "uffd"] if pagescan.probe("uffd").ok
                                         else [])
    r = run("compare", "--quick", "--json", "--workload", "sparse", "--workload", "fork",
            *names, env=env, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "runs failed" in r.stderr
    rows = {x["name"]: x for x in json.loads(r.stdout)["rows"]}
    crashing = rows["crashing"]
    assert crashing["workloads_failed"] == 2
    for cell in crashing["workloads"].values():
        assert cell["error"] == "crashed: killed by SIGSEGV"
    assert crashing["speed_error"] == "crashed: killed by SIGSEGV"
    if "uffd" in rows:
        assert rows["uffd"]["workloads_failed"] == 0 and rows["uffd"]["speed"]


# ------------------------------------------------------------ the documented JSON


DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                   "compare.md")


def _documented() -> dict[str, set[str]]:
    """docs/compare.md: the keys of each object (### name, then a table whose first
    column is the key in backticks)."""
    out: dict[str, set[str]] = {}
    section = None
    with open(DOC, encoding="utf-8") as f:
        for line in f:
            if line.startswith("### "):
                section = line[4:].strip()
                out[section] = set()
            elif line.startswith("## "):
                section = None
            elif section and line.startswith("| `"):
                out[section].add(line.split("`")[1])
    return out


def test_documented_json_keys_match_a_real_report(quick_report):
    """Every key of a real ``--json`` report is documented in docs/compare.md, and
    every documented key is in the report, object by object."""
    doc = _documented()
    rep = quick_report
    seen: dict[str, list[dict]] = {k: [] for k in doc}
    seen["report"].append(rep)
    seen["environment"].append(rep["environment"])
    seen["workload"] += rep["workloads"]
    seen["left_out"] += rep["left_out"] + compare.plan_rows(simulate="none")[1]
    for row in rep["rows"]:
        seen["row"].append(row)
        seen["probe"].append(row["probe"])
        seen["tally"].append(row["totals"])
        for cell in row["workloads"].values():
            seen["cell"].append(cell)
            if cell["tally"]:
                seen["tally"].append(cell["tally"])
        if row["speed"]:
            seen["speed"].append(row["speed"])
            seen["spread"] += row["speed"]["spread"].values()
    seen["combined"].append(compare.combine([rep, rep], ["a", "b"]))
    assert set(seen) == set(doc)
    for name, objects in seen.items():
        if name == "left_out" and not objects:
            continue                         # every backend works here: none left out
        assert objects, name
        for obj in objects:
            assert set(obj) == doc[name], (name, set(obj) ^ doc[name])
    assert doc["report"] >= {"schema_version"}
    assert f"schema version {compare.SCHEMA_VERSION}" in open(DOC, encoding="utf-8").read()
