"""The one layer over ``/proc``: maps, status, liveness, pagemap and kernel settings.

Every module that reads ``/proc`` goes through here, so that there is one parser of
``/proc/PID/maps`` (one :class:`Mapping` type), one translation of an ``OSError`` on a
``/proc`` file into pagescan's errors (:func:`proc_error`), and one liveness check
(:func:`alive`).

>>> from pagescan import procfs
>>> maps = procfs.read_maps("self")
>>> any(m.path == "[stack]" for m in maps)
True
"""

from __future__ import annotations

import errno
import gzip
import os
from typing import NamedTuple

from ._sysinfo import has_capability, sysctl
from .errors import AccessDenied, KernelError, NoSuchProcess, PagescanError

__all__ = [
    "Mapping", "alive", "has_capability", "kernel_config", "map_count", "open_pagemap",
    "open_proc", "owner_uid", "parse_maps", "parse_maps_in", "pfnmap_starts", "proc_error",
    "process_name", "read_fd", "read_maps", "read_maps_fd", "read_status", "sysctl", "thp_settings",
]

#: ``pid`` may be an int or ``"self"``
Pid = "int | str"


class Mapping(NamedTuple):
    """One line of ``/proc/PID/maps``: ``[start, end)``, ``perms`` (``"rw-p"``), the
    file ``offset``, device ``dev`` (``"08:01"``), ``inode`` and ``path`` (``""`` for
    anonymous memory, ``"[heap]"``, ``"/usr/lib/x.so (deleted)"``)."""

    start: int
    end: int
    perms: str = "rw-p"
    offset: int = 0
    dev: str = "00:00"
    inode: int = 0
    path: str = ""

    @property
    def readable(self) -> bool:
        return self.perms[0:1] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1:2] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2:3] == "x"

    @property
    def shared(self) -> bool:
        return self.perms[3:4] == "s"

    @property
    def special(self) -> bool:
        """A VM_PFNMAP mapping the kernel has no page entries for (``[vvar]``,
        ``[vvar_vclock]``): page walks skip it."""
        return self.path.startswith("[vvar")

    @property
    def device(self) -> str:
        """The same as :attr:`dev`."""
        return self.dev

    @property
    def label(self) -> str:
        return self.path or "[anon]"

    @property
    def size(self) -> int:
        return self.end - self.start

    def as_json(self) -> dict[str, object]:
        return {"start": self.start, "end": self.end, "perms": self.perms,
                "offset": self.offset, "device": self.dev, "inode": self.inode,
                "path": self.path}


def parse_maps(text: str | bytes) -> list[Mapping]:
    """The mappings of a ``/proc/PID/maps`` text, in order (short lines skipped)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    out = []
    for line in text.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 5:
            continue
        lo, _, hi = fields[0].partition("-")
        out.append(Mapping(int(lo, 16), int(hi, 16), fields[1], int(fields[2], 16),
                           fields[3], int(fields[4]),
                           fields[5].strip() if len(fields) > 5 else ""))
    return out


def parse_maps_in(text: str | bytes, start: int, end: int) -> list[Mapping]:
    """The mappings of a ``/proc/PID/maps`` text that overlap ``[start, end)``: only
    those lines are parsed (the lines are in address order)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    lines = []
    for line in text.splitlines():
        lo, _, rest = line.partition("-")
        sp = rest.find(" ")
        if sp < 0:
            continue
        if int(lo, 16) >= end:
            break
        if int(rest[:sp], 16) > start:
            lines.append(line)
    return parse_maps("\n".join(lines))


# ---------------------------------------------------------------------- errors


def owner_uid(pid: int | str) -> str:
    """The effective uid of a process as text (``"?"`` when unknown)."""
    try:
        return read_status(pid).get("Uid", "?").split()[1]
    except (PagescanError, IndexError):
        return "?"


def proc_error(err: OSError, pid: int | str, what: str) -> PagescanError:
    """An ``OSError`` on ``/proc/PID/...`` (or a ptrace/PAGEMAP_SCAN call on a process)
    as pagescan's error, naming the likely cause: :class:`NoSuchProcess`,
    :class:`AccessDenied` (with what access is needed), else :class:`KernelError`.
    ``what`` says what was being done (``"reading /proc/5/maps"``)."""
    if isinstance(err, PagescanError):
        return err
    if isinstance(err, (FileNotFoundError, ProcessLookupError)) or err.errno == errno.ESRCH:
        return NoSuchProcess(f"no process with PID {pid}: process {pid} does not exist or "
                             f"has exited ({what})")
    if err.errno in (errno.EACCES, errno.EPERM):
        scope = sysctl("kernel.yama.ptrace_scope")
        if what.endswith("clear_refs"):
            need = (f"writing /proc/{pid}/clear_refs needs the same user as process {pid} "
                    "(and a dumpable process) or root")
        else:
            need = (f"{what} needs ptrace read access to process {pid} (PTRACE_MODE_READ): "
                    "the same user as that process (which must be dumpable: not set-uid, "
                    "no prctl(PR_SET_DUMPABLE, 0)) or CAP_SYS_PTRACE (e.g. with sudo)")
        return AccessDenied(
            f"{need}; this process has uid {os.geteuid()}, process {pid} uid {owner_uid(pid)}"
            + (f"; kernel.yama.ptrace_scope={scope} (Yama restricts attaching, which "
               "freeze=True needs, not reading)" if scope is not None else ""))
    text = err.strerror or str(err)
    return KernelError(err.errno, text if text.startswith(what) else f"{what}: {text}")


# ---------------------------------------------------------------------- files


def open_proc(pid: int | str, name: str, flags: int = os.O_RDONLY) -> int:
    """``os.open("/proc/PID/name")`` with O_CLOEXEC; errors through :func:`proc_error`."""
    path = f"/proc/{pid}/{name}"
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError as err:
        if pid in ("self", os.getpid()) or not os.path.isdir("/proc/self"):
            raise KernelError(err.errno, f"{path} does not exist: /proc is not mounted"
                              ) from err
        raise proc_error(err, pid, f"opening {path}") from err
    except OSError as err:
        verb = "opening" if flags & (os.O_WRONLY | os.O_RDWR) == 0 else "opening for writing"
        raise proc_error(err, pid, f"{verb} {path}") from err


def open_pagemap(pid: int | str = "self") -> int:
    """A file descriptor of ``/proc/PID/pagemap`` (read-only)."""
    return open_proc(pid, "pagemap")


def read_fd(fd: int) -> bytes:
    """All of a ``/proc`` file from an open descriptor, from its start (the file is
    generated at read time: reading again gives the current state)."""
    chunks = []
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def read_maps_fd(fd: int, pid: int | str) -> list[Mapping]:
    """The mappings from an open ``/proc/PID/maps``. A process without mappings (a
    zombie, a kernel thread) raises :class:`NoSuchProcess`."""
    try:
        out = parse_maps(read_fd(fd))
    except OSError as err:
        raise proc_error(err, pid, f"reading /proc/{pid}/maps") from err
    if not out:
        raise NoSuchProcess(f"process {pid} has exited (no address space left: it is a "
                            "zombie or a kernel thread)")
    return out


def read_maps(pid: int | str = "self") -> list[Mapping]:
    """The mappings of a process (:class:`NoSuchProcess`, :class:`AccessDenied`)."""
    fd = open_proc(pid, "maps")
    try:
        return read_maps_fd(fd, pid)
    finally:
        os.close(fd)


def map_count(pid: int | str = "self") -> int | None:
    """How many mappings a process has (None when /proc cannot be read)."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def pfnmap_starts(pid: int | str) -> set[int]:
    """Starts of the VM_PFNMAP mappings (smaps ``VmFlags: pf``), which the kernel's
    page walk skips."""
    out: set[int] = set()
    try:
        with open(f"/proc/{pid}/smaps") as f:
            start = None
            for line in f:
                head = line.split(maxsplit=1)[0] if line.strip() else ""
                if "-" in head and not head.endswith(":"):
                    start = int(head.partition("-")[0], 16)
                elif head == "VmFlags:" and start is not None and " pf" in " " + line[8:]:
                    out.add(start)
    except OSError:
        pass
    return out


def read_status(pid: int | str = "self") -> dict[str, str]:
    """``/proc/PID/status`` as ``{"Name": "python3", "Uid": "1000 1000 1000 1000", ...}``."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError as err:
        raise proc_error(err, pid, f"reading /proc/{pid}/status") from err
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k] = v.strip()
    return out


def alive(pid: int | str) -> bool:
    """Whether ``pid`` exists and is not exiting (a zombie, whose memory is gone, or
    a dead task is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X", b"x", b"")


def process_name(pid: int | str) -> str:
    """The command line of a process, or ``[comm]`` for a kernel thread, or ``"?"``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").strip().decode(errors="replace")
        if cmd:
            return cmd
        with open(f"/proc/{pid}/comm") as f:
            return f"[{f.read().strip()}]"
    except OSError:
        return "?"


# ---------------------------------------------------------------------- kernel settings


def kernel_config() -> str | None:
    """The running kernel's build configuration (``/proc/config.gz`` or
    ``/boot/config-RELEASE``), or None when neither can be read."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return f.read()
    except OSError:
        pass
    try:
        with open(f"/boot/config-{os.uname().release}") as f:
            return f.read()
    except OSError:
        return None


def _selected(value: str | None) -> str | None:
    """``always [madvise] never`` -> ``madvise``."""
    if value and "[" in value and "]" in value:
        return value[value.index("[") + 1:value.index("]")]
    return value


def thp_settings() -> dict[str, str | None]:
    """Transparent huge page settings: ``enabled`` (``"always"``, ``"madvise"``,
    ``"never"``), ``defrag`` and ``use_zero_page`` (``"1"``/``"0"``); None where the
    file is missing (no THP in this kernel)."""
    base = "/sys/kernel/mm/transparent_hugepage/"
    out: dict[str, str | None] = {}
    for name in ("enabled", "defrag", "use_zero_page"):
        try:
            with open(base + name) as f:
                out[name] = _selected(f.read().strip())
        except OSError:
            out[name] = None
    return out
