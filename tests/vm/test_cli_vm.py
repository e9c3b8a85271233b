"""``pagescan scan`` inside the qemu lane's Debian 6.1 and 6.12 guests (issue 12.5).

    python vm/lane.py -- tests/vm/test_cli_vm.py

On 6.7-6.14 ``pagescan scan PID`` failed with ``[Errno 22] PAGEMAP_SCAN``: its
default return mask named GUARD, which PAGEMAP_SCAN knows only from 6.15 on. On
6.1 (no PAGEMAP_SCAN) the command reads pagemap entries. Outside a guest
(``PAGESCAN_VM_KERNEL`` unset) everything skips. Few child processes: Python runs
~14x slower under emulation; the scanned child is ``sleep``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GUEST_KERNEL = os.environ.get("PAGESCAN_VM_KERNEL", "")
pytestmark = pytest.mark.skipif(not GUEST_KERNEL,
                                reason="not in a VM guest (PAGESCAN_VM_KERNEL unset)")

KERNEL = tuple(int(x) for x in os.uname().release.split(".")[:2])
HAS_PAGEMAP_SCAN = KERNEL >= (6, 7)
HAS_GUARD = KERNEL >= (6, 15)


def run(*args: str) -> subprocess.CompletedProcess:
    """``python -m pagescan ARGS`` with the pagescan this test imports (the guest's
    working directory is not the checkout)."""
    import pagescan
    root = str(Path(pagescan.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, "-m", "pagescan", *args], capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def child():
    """A child process that does nothing until it is killed."""
    sleep = shutil.which("sleep")
    assert sleep, "no sleep(1) in the guest"
    p = subprocess.Popen([sleep, "3600"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait()


def test_scan_a_child(child):
    """The command succeeds with its defaults, and text and JSON give the same total."""
    text = run("scan", str(child))
    assert text.returncode == 0, text.stderr
    assert "Errno" not in text.stderr
    js = run("scan", str(child), "--json")
    assert js.returncode == 0, js.stderr
    rep = json.loads(js.stdout)
    assert rep["method"] == ("PAGEMAP_SCAN" if HAS_PAGEMAP_SCAN else "pagemap")
    t = rep["total"]
    assert t["pages"] > 0 and t["mappings"] > 0
    assert t["mappings"] == sum(1 for m in rep["mappings"] if m["regions"])
    line = next(x for x in text.stdout.splitlines() if x.startswith("total:"))
    assert f"total: {t['pages']} pages " in line, line
    assert f"in {t['regions']} regions of {t['mappings']} mappings" in line, line
    guard_note = any("does not know GUARD" in n for n in rep["notes"])
    assert guard_note == (HAS_PAGEMAP_SCAN and not HAS_GUARD), rep["notes"]
    if not HAS_PAGEMAP_SCAN:
        assert any("no PAGEMAP_SCAN" in n or "pagemap entries" in n for n in rep["notes"])


def test_scan_a_child_filtering_on_guard(child):
    """A filter that names GUARD is answered, not refused: no page is a guard page."""
    r = run("scan", str(child), "--required", "GUARD", "--return", "all", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["total"]["pages"] == 0
