"""``pagescan doctor``: which backends work on this kernel (and why not), which core
implementation is loaded, the kernel and the settings that matter."""

from __future__ import annotations

import argparse
import os
import platform
import sys
from typing import Any

from .. import procfs
from .._describe import capabilities_json
from ..backends import Backend, backend_class, probe_all
from ..constants import PAGE_SIZE
from ..errors import BackendUnavailable
from .exits import EXIT_OK, EXIT_UNAVAILABLE
from .output import dump_json, write_doctor

__all__ = ["SETTINGS", "cmd_doctor", "doctor_report", "loaded_class", "soft_dirty_status"]

SETTINGS = (
    ("vm.unprivileged_userfaultfd", "sysctl",
     "0: userfaultfd is limited to user-mode faults (UFFD_USER_MODE_ONLY, which the uffd "
     "backend uses) unless the process has CAP_SYS_PTRACE"),
    ("vm.max_map_count", "sysctl",
     "the mprotect backend splits a mapping at every protected/unprotected edge: "
     "scattered writes can need one mapping per page"),
    ("kernel.yama.ptrace_scope", "sysctl",
     "Yama's ptrace policy (attach); scan/watch of another process need only read access"),
    ("transparent_hugepage/enabled", "thp",
     "a write into a huge page reads as 2 MiB written; tracked ranges get MADV_NOHUGEPAGE "
     "unless thp=True"),
    ("transparent_hugepage/defrag", "thp",
     "how hard a huge page fault tries to find 2 MiB of memory"),
    ("vm.nr_hugepages", "sysctl", "hugetlb pages reserved (tracked whole, 2 MiB each)"),
)


def soft_dirty_status() -> tuple[bool | None, str]:
    """Whether the kernel has soft-dirty (CONFIG_MEM_SOFT_DIRTY), and how it is known."""
    release = platform.release()
    config = procfs.kernel_config()
    if config is None:
        return None, ("unknown: the kernel config is not readable (see the softdirty "
                      "backend's probe)")
    if "CONFIG_MEM_SOFT_DIRTY=y" in config:
        return True, f"CONFIG_MEM_SOFT_DIRTY=y (the config of kernel {release})"
    return False, f"CONFIG_MEM_SOFT_DIRTY is not set in kernel {release}"


def loaded_class(name: str) -> type[Backend] | None:
    """The class of backend ``name``, or None when it failed to load (its probe says
    why)."""
    try:
        return backend_class(name)
    except BackendUnavailable:
        return None


def doctor_report() -> dict[str, Any]:
    """The JSON-able report of ``pagescan doctor``."""
    import pagescan
    backends = []
    for name, p in probe_all().items():
        cls = loaded_class(name)
        caps = None if cls is None else capabilities_json(getattr(cls, "capabilities", None))
        backends.append({"name": name, "ok": bool(p.ok), "reason": p.reason,
                         "real": bool(caps["real"]) if caps else None,
                         "capabilities": caps,
                         "details": {k: str(v) for k, v in p.details.items()}})
    thp = procfs.thp_settings()
    settings = []
    for name, source, note in SETTINGS:
        value = procfs.sysctl(name) if source == "sysctl" else thp[name.partition("/")[2]]
        if value is None and name == "kernel.yama.ptrace_scope":
            note = "not present: the Yama LSM is not enabled (only the default ptrace checks apply)"
        settings.append({"name": name, "value": value, "note": note})
    sd_ok, sd_reason = soft_dirty_status()
    try:
        with open("/proc/version") as f:
            version: str | None = f.read().strip()
    except OSError:
        version = None
    return {
        "pagescan": {"version": pagescan.__version__,
                     "implementation": pagescan.IMPLEMENTATION,
                     "import_error": None if pagescan.IMPORT_ERROR is None
                     else repr(pagescan.IMPORT_ERROR)},
        "python": platform.python_version(),
        "kernel": {"release": platform.release(), "machine": platform.machine(),
                   "version": version},
        "page_size": PAGE_SIZE,
        "euid": os.geteuid(),
        "backends": backends,
        "settings": settings,
        "soft_dirty": {"available": sd_ok, "reason": sd_reason},
    }


def cmd_doctor(args: argparse.Namespace) -> int:
    rep = doctor_report()
    working = [b for b in rep["backends"] if b["ok"] and b["real"] is not False]
    if args.json:
        dump_json(rep, sys.stdout)
        return EXIT_OK if working else EXIT_UNAVAILABLE
    write_doctor(rep, sys.stdout)
    if not working:
        sys.stdout.write("\nno real backend works on this machine (reasons above)\n")
    return EXIT_OK if working else EXIT_UNAVAILABLE
