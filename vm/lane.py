#!/usr/bin/env python3
"""The kernel test lane: run a pytest selection inside stock Debian kernels under qemu.

    python vm/lane.py --install-deps                       # once per machine (apt, root)
    python vm/lane.py [--kernels 6.1,6.12] [--cache DIR] -- [pytest args]
    python vm/lane.py --kernels 6.12 --run [--out FILE] -- COMMAND [ARGS...]

For each kernel series the lane resolves Debian's ``linux-image-amd64`` meta-package
(6.1 from bookworm, 6.12 from bookworm-backports), fetches the image it depends on
with ``apt-get download`` + ``dpkg -x`` into the cache, builds a busybox initramfs
holding that kernel's 9p/virtio/overlay modules, and boots it under qemu (TCG: no
KVM needed). The guest sees the host's ``/`` read-only over 9p under a tmpfs
overlay, so it runs *this* interpreter (``sys.executable``) with the installed
pagescan, from the current directory, with ``CI=true``,
``PAGESCAN_VM_KERNEL=<uname -r>`` and ``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``. pytest
writes a JUnit XML file to a second, writable 9p share; the host reads it.

With ``--run`` the guest runs COMMAND instead of pytest (same environment, from
``/tmp``); its standard output comes back through the results share and is printed
(or written to ``--out FILE``; ``{series}`` and ``{release}`` in FILE name one file
per kernel), its standard error is printed to the host's, each line prefixed with
the kernel release. A run passes when the
command exits 0.

Exit status: 0 when, on every kernel, tests ran and none failed, errored or was
skipped (``--run``: the command exited 0); 1 when a kernel's run fails that check
(or the guest crashed or timed out: the tail of its console is printed); 2 for a
setup problem (missing tools, kernel not found in apt's lists: run
``--install-deps``).

Standard library only. The cache (default ``vm-cache``
beside ``vm/``, or ``$PAGESCAN_VM_CACHE``) keeps the unpacked kernels and modules;
the downloaded .deb files are deleted once unpacked.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import importlib.util
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_KERNELS = "6.1,6.12"
META_PACKAGE = "linux-image-amd64"
HOST_PACKAGES = ["qemu-system-x86", "busybox-static"]
QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
# The modules the guest needs to mount its root; their dependencies are added from
# each module's own .modinfo (Debian's packages ship no modules.dep: depmod runs in
# postinst). Whatever a kernel has built in is skipped.
ROOT_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay"]
GUEST_RESULTS = "/lane-results"     # where the writable share is mounted in the guest
START_MARK = b"lane: pytest starts"    # (--run: the command starts; same mark)
CACHE_LAYOUT_VERSION = 1


LIVE: set[subprocess.Popen] = set()     # running qemu processes, killed if the lane dies
STOPPING = threading.Event()
OUTPUT_LOCK = threading.Lock()          # --run: one guest's output at a time


class LaneError(Exception):
    """A setup problem: the lane cannot run (exit status 2)."""


def log(msg: str) -> None:
    print(f"lane: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, text=True, **kw)
    except FileNotFoundError as err:
        raise LaneError(f"{cmd[0]} not found: run 'python vm/lane.py --install-deps'") from err
    except subprocess.CalledProcessError as err:
        detail = (err.stderr or "").strip()
        raise LaneError(f"{shlex.join(cmd)} failed (exit {err.returncode})"
                        + (f": {detail}" if detail else "")) from err


# --------------------------------------------------------------------------- host deps


def debian_mirror() -> tuple[str, str]:
    """The Debian mirror and codename this machine's apt already uses."""
    codename = ""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            codename = line.split("=", 1)[1].strip().strip('"')
    if not codename:
        raise LaneError("cannot tell the Debian codename from /etc/os-release")
    texts = []
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if p.is_file() and p.suffix in (".list", ".sources"):
            texts.append(p.read_text())
    for text in texts:
        # deb822 stanzas (URIs: + Suites:) and one-line "deb URI SUITE COMPONENTS"
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and codename in suites.group(1).split() \
                    and "security" not in uris.group(1):
                return uris.group(1), codename
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s", text, re.M):
            if m.group(2) == codename and "security" not in m.group(1):
                return m.group(1), codename
    return "http://deb.debian.org/debian", codename


def install_deps() -> None:
    """Add <codename>-backports (same mirror) to apt, update, install qemu + busybox."""
    if os.geteuid() != 0:
        raise LaneError("--install-deps needs root (apt-get install)")
    mirror, codename = debian_mirror()
    suite = f"{codename}-backports"
    configured = any(suite in p.read_text() for p in Path("/etc/apt/sources.list.d").glob("*")
                     if p.is_file() and p.suffix in (".list", ".sources"))
    if Path("/etc/apt/sources.list").is_file():
        configured |= suite in Path("/etc/apt/sources.list").read_text()
    if not configured:
        dest = Path(f"/etc/apt/sources.list.d/{suite}.sources")
        log(f"adding {suite} from {mirror} to apt ({dest})")
        dest.write_text(f"Types: deb\nURIs: {mirror}\nSuites: {suite}\nComponents: main\n"
                        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], env=env)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *HOST_PACKAGES], env=env)


# --------------------------------------------------------------------------- kernels


@dataclass
class Kernel:
    series: str          # "6.1"
    package: str         # linux-image-6.1.0-56-amd64
    version: str         # 6.1.192-2
    release: str = ""    # uname -r: 6.1.0-56-amd64
    dir: Path = Path()

    @property
    def vmlinuz(self) -> Path:
        return self.dir / "vmlinuz"


def parse_stanzas(text: str) -> list[dict[str, str]]:
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            out.append(fields)
    return out


def version_gt(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0


def resolve(series: str) -> Kernel:
    """The newest linux-image-amd64 of a series in apt's lists, and the image it pulls in."""
    proc = subprocess.run(["apt-cache", "show", META_PACKAGE], capture_output=True, text=True)
    best = None
    for st in parse_stanzas(proc.stdout):
        ver = st.get("Version", "")
        if ver.startswith(series + ".") and (best is None or version_gt(ver, best["Version"])):
            best = st
    if best is None:
        raise LaneError(
            f"no {META_PACKAGE} {series}.x in apt's lists (6.12 comes from bookworm-backports):"
            " run 'python vm/lane.py --install-deps'")
    for dep in best.get("Depends", "").split(","):
        m = re.match(r"\s*(linux-image-\S+)\s*\(\s*=\s*([^)\s]+)\s*\)", dep)
        if m:
            return Kernel(series, m.group(1), m.group(2))
    raise LaneError(f"{META_PACKAGE} {best['Version']}: no linux-image dependency in "
                    f"{best.get('Depends')!r}")


def elf_modinfo(data: bytes) -> dict[str, list[str]]:
    """The key=value strings of a kernel module's .modinfo section."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise LaneError("not an ELF64 kernel module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = sections[shstrndx][4]
    info: dict[str, list[str]] = {}
    for name_off, _, _, _, off, size in sections:
        name = data[strtab + name_off:data.index(b"\0", strtab + name_off)]
        if name == b".modinfo":
            for item in data[off:off + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
    return info


def read_module(path: Path) -> bytes:
    """A module file's ELF bytes (busybox insmod gets them uncompressed)."""
    if path.name.endswith(".ko"):
        return path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if path.name.endswith(".ko.zst"):
        if not shutil.which("zstd"):
            raise LaneError(f"{path.name} is zstd-compressed: install zstd")
        return subprocess.run(["zstd", "-dc", str(path)], check=True,
                              capture_output=True).stdout
    raise LaneError(f"unknown module format: {path}")


def module_closure(moddir: Path, roots: list[str]) -> list[tuple[str, bytes]]:
    """Modules to load, dependencies first, as (name, ELF bytes); built-ins skipped."""
    norm = lambda n: n.replace("-", "_")  # noqa: E731
    builtin = set()
    if (moddir / "modules.builtin").is_file():
        builtin = {norm(Path(line).name.split(".ko")[0])
                   for line in (moddir / "modules.builtin").read_text().split()}
    files = {norm(p.name.split(".ko")[0]): p for p in (moddir / "kernel").rglob("*.ko*")}
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = norm(name)
        if name in seen or name in builtin:
            return
        if name not in files:
            raise LaneError(f"module {name} (needed by {' <- '.join(chain) or 'the guest'}) "
                            f"is neither built in nor in {moddir}")
        seen.add(name)
        data = read_module(files[name])
        for deps in elf_modinfo(data).get("depends", []):
            for dep in filter(None, deps.split(",")):
                visit(dep, (name, *chain))
        order.append((name, data))

    for root in roots:
        visit(root, ())
    return order


def fetch(kernel: Kernel, cache: Path) -> Kernel:
    """Download and unpack the kernel image package once; keep vmlinuz + the modules."""
    kdir = cache / "kernels" / f"{kernel.package}_{kernel.version}"
    meta_path = kdir / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("layout") == CACHE_LAYOUT_VERSION:
            kernel.release, kernel.dir = meta["release"], kdir
            return kernel
    t0 = time.monotonic()
    shutil.rmtree(kdir, ignore_errors=True)
    (cache / "kernels").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache / "kernels", prefix=".fetch-") as tmp:
        # as root, apt drops to _apt for downloads; let it write here
        os.chmod(tmp, 0o777)
        run(["apt-get", "download", "-q", f"{kernel.package}={kernel.version}"],
            cwd=tmp, capture_output=True)
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise LaneError(f"apt-get download {kernel.package} left {debs}")
        root = Path(tmp) / "root"
        run(["dpkg", "-x", str(debs[0]), str(root)], capture_output=True)
        debs[0].unlink()
        images = list((root / "boot").glob("vmlinuz-*"))
        if len(images) != 1:
            raise LaneError(f"{kernel.package}: expected one boot/vmlinuz-*, found {images}")
        release = images[0].name[len("vmlinuz-"):]
        modules = module_closure(root / "lib" / "modules" / release, ROOT_MODULES)
        stage = Path(tmp) / "stage"
        (stage / "modules").mkdir(parents=True)
        shutil.copy2(images[0], stage / "vmlinuz")
        names = []
        for i, (name, data) in enumerate(modules):
            fname = f"{i:02d}-{name}.ko"
            (stage / "modules" / fname).write_bytes(data)
            names.append(fname)
        (stage / "meta.json").write_text(json.dumps(
            {"layout": CACHE_LAYOUT_VERSION, "package": kernel.package,
             "version": kernel.version, "release": release, "modules": names}, indent=1))
        stage.rename(kdir)
    kernel.release, kernel.dir = release, kdir
    log(f"fetched {kernel.package} {kernel.version} ({time.monotonic() - t0:.1f} s): "
        f"modules {', '.join(n[3:-3] for n in names) or '(all built in)'}")
    return kernel


# --------------------------------------------------------------------------- initramfs


class Cpio:
    """An uncompressed newc cpio archive (the kernel unpacks it as the initramfs)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name) + 1, 0]
        self.ino += 1
        self.buf += b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf += name.encode() + b"\0"
        self.buf += b"\0" * (-len(self.buf) % 4)
        self.buf += data
        self.buf += b"\0" * (-len(self.buf) % 4)

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return bytes(self.buf)


# PID 1 in the guest: load the modules, build the root (host / read-only under a
# tmpfs overlay), mount the results share, run the host-written run.sh in a chroot,
# record its exit status and power off. "lane:" lines are progress marks on the console.
INIT = r"""#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() { echo "lane: FAILED: $*"; poweroff -f; }
for m in $(ls /modules); do insmod /modules/$m || fail "insmod $m"; done
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $opts,ro,cache=loose hostroot /lower || fail "mount host /"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work root /root \
    || fail "mount overlay"
mkdir -p /root/proc /root/sys /root/dev /root/tmp /root/run /root@RESULTS@
mount -t 9p -o $opts results /root@RESULTS@ || fail "mount results"
mount -t proc proc /root/proc
mount -t sysfs sys /root/sys
mount -t devtmpfs dev /root/dev
mkdir -p /root/dev/shm /root/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /root/dev/shm
mount -t devpts devpts /root/dev/pts
# host paths under /tmp that the run needs (a clone in /tmp/ci-*) stay visible
mkpoint() { if [ -d "$1" ]; then mkdir -p "$2"; else : > "$2"; fi; }
i=0
while read -r p; do
    mkpoint "/root$p" /carry/$i && mount --bind "/root$p" /carry/$i || fail "carry $p"
    i=$((i + 1))
done < /root@RESULTS@/carry
mount -t tmpfs -o mode=1777 tmpfs /root/tmp
i=0
while read -r p; do
    mkpoint /carry/$i "/root$p" && mount --move /carry/$i "/root$p" || fail "carry $p"
    i=$((i + 1))
done < /root@RESULTS@/carry
mount -t tmpfs -o mode=0755 tmpfs /root/run
echo "lane: booted in $(cut -d' ' -f1 /proc/uptime) s"
chroot /root /bin/sh @RESULTS@/run.sh
echo "lane: exit status $? at $(cut -d' ' -f1 /proc/uptime) s"
sync
poweroff -f
"""


def build_initramfs(kernel: Kernel, dest: Path) -> None:
    if not Path(BUSYBOX).is_file():
        raise LaneError(f"{BUSYBOX} not found: run 'python vm/lane.py --install-deps'"
                        " (busybox-static)")
    cpio = Cpio()
    for d in ("bin", "dev", "proc", "sys", "lower", "rw", "root", "modules", "carry"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3)
    cpio.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    for applet in ("sh", "mount", "mkdir", "insmod", "ls", "cut", "chroot", "poweroff",
                   "sync"):
        cpio.symlink(f"bin/{applet}", "busybox")
    cpio.file("init", INIT.replace("@RESULTS@", GUEST_RESULTS).encode(), 0o755)
    for ko in sorted((kernel.dir / "modules").glob("*.ko")):
        cpio.file(f"modules/{ko.name}", ko.read_bytes())
    dest.write_bytes(cpio.finish())


# --------------------------------------------------------------------------- guest run


def carried_tmp_paths(pytest_args: list[str]) -> list[str]:
    """Top-level entries of the host's /tmp that the guest run needs.

    The guest gets a fresh tmpfs on /tmp; a clone, venv or editable install living
    under /tmp (``git clone . /tmp/ci-$$``) is bind-mounted back on top of it.
    """
    needed = [os.getcwd(), sys.executable, sys.prefix, sys.base_prefix, *sys.path,
              *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    spec = importlib.util.find_spec("pagescan")      # finds, does not import
    if spec is not None:
        needed += [*(spec.submodule_search_locations or []), spec.origin or ""]
    needed += [a for a in pytest_args if not a.startswith("-")]
    carry: set[str] = set()
    for path in needed:
        if not path:
            continue
        for p in {os.path.abspath(path), os.path.realpath(path)}:
            parts = Path(p).parts
            if len(parts) >= 3 and parts[1] == "tmp" and os.path.exists(f"/tmp/{parts[2]}"):
                carry.add(f"/tmp/{parts[2]}")
    if any("\n" in c for c in carry):
        raise LaneError(f"cannot carry a path with a newline into the guest: {carry}")
    return sorted(carry)


def guest_script(kernel: Kernel, pytest_args: list[str], command: bool = False) -> str:
    """run.sh, executed by the host's /bin/sh inside the guest's chroot. ``command``:
    ``pytest_args`` is a command of its own (``--run``), its stdout kept in the share."""
    py = sys.executable                     # as called (a venv's symlink must stay one)
    path = [str(Path(py).parent), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin",
            "/usr/bin", "/sbin", "/bin"]
    env = {
        "PATH": ":".join(dict.fromkeys(path)),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "CI": "true",
        "PAGESCAN_VM_KERNEL": kernel.release,
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    for key, value in os.environ.items():   # the selection's own knobs
        if key == "PYTHONPATH" or (key.startswith("PAGESCAN_") and
                                   not key.startswith("PAGESCAN_VM_")):
            env.setdefault(key, value)
    # pytest runs from /tmp with absolute test paths, so that a source tree in the
    # working directory never shadows the installed package
    args = [os.path.abspath(a) if not a.startswith("-") and os.path.exists(a) else a
            for a in pytest_args]
    if command:
        run_cmd = (shlex.join(pytest_args) + f" > {GUEST_RESULTS}/stdout"
                   f" 2> {GUEST_RESULTS}/stderr")
    else:
        run_cmd = shlex.join([py, "-m", "pytest", "-p", "no:cacheprovider", "--color=no",
                              f"--junitxml={GUEST_RESULTS}/junit.xml", *args])
    lines = ["exec </dev/null 2>&1"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines += [f"cd {shlex.quote(os.getcwd())} || exit 90",
              "cd /tmp || exit 90",
              "echo lane: pytest starts at $(cut -d' ' -f1 /proc/uptime) s",
              "echo " + shlex.quote("lane: --run: " + shlex.join(pytest_args)[:200])
              if command else ":",
              run_cmd,
              "rc=$?",
              f"echo $rc > {GUEST_RESULTS}/exitcode",
              "exit $rc"]
    return "\n".join(lines) + "\n"


@dataclass
class Outcome:
    kernel: Kernel
    ok: bool
    summary: str
    seconds: float
    console: Path
    problem: str = ""
    started: bool = False    # pytest started in the guest (a later failure is not retried)
    attempts: int = 1


def junit_counts(path: Path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    return counts


def judge(results: Path, command: bool = False) -> tuple[str, str]:
    """(summary, problem) from a finished guest's results share; problem "" means pass."""
    exitcode, junit = results / "exitcode", results / "junit.xml"
    if not exitcode.is_file():
        return "no results", ("the guest stopped before the command finished" if command
                              else "the guest stopped before pytest finished")
    rc = int(exitcode.read_text().strip() or -1)
    if command:
        out = results / "stdout"
        size = out.stat().st_size if out.is_file() else 0
        summary = f"command exited {rc}, {size} bytes of output"
        return summary, "" if rc == 0 else f"the command exited {rc}"
    if not junit.is_file():
        return "no results", f"pytest exited {rc} and wrote no JUnit XML"
    try:
        c = junit_counts(junit)
    except (ET.ParseError, ValueError) as err:
        return "no results", f"unreadable JUnit XML {junit}: {err}"
    failed = c["failures"] + c["errors"]
    summary = (f"{c['tests'] - failed - c['skipped']} passed, {failed} failed, "
               f"{c['skipped']} skipped")
    bad = [f"{c[k]} {k}" for k in ("failures", "errors", "skipped") if c[k]]
    if c["tests"] == 0:
        return summary, f"no tests ran (pytest exited {rc})"
    if bad:
        return summary, ", ".join(bad)
    if rc != 0:
        return summary, f"pytest exited {rc}"
    return summary, ""


def qemu_command(kernel: Kernel, initrd: Path, results: Path,
                 args: argparse.Namespace) -> list[str]:
    cmdline = ("console=ttyS0 quiet loglevel=3 panic=-1 random.trust_cpu=on mitigations=off "
               "i8042.noaux i8042.nokbd i8042.nopnp tsc=reliable no_timer_check")
    return [QEMU, "-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", args.cpu,
            "-smp", str(args.smp), "-m", args.memory,
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", "stdio", "-monitor", "none",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd), "-append", cmdline,
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                       "multidevs=remap",
            "-virtfs", f"local,path={results},mount_tag=results,security_model=none,"
                       "multidevs=remap"]


def boot_once(kernel: Kernel, pytest_args: list[str], args: argparse.Namespace,
              runs: Path) -> Outcome:
    t0 = time.monotonic()
    rundir = Path(tempfile.mkdtemp(dir=runs, prefix=f"{kernel.release}-"))
    results = rundir / "results"
    results.mkdir()
    os.chmod(results, 0o777)
    (results / "run.sh").write_text(guest_script(kernel, pytest_args, args.run))
    (results / "carry").write_text("".join(p + "\n" for p in carried_tmp_paths(pytest_args)))
    initrd = rundir / "initramfs.cpio"
    build_initramfs(kernel, initrd)
    console = rundir / "console.log"
    started = threading.Event()
    prefix = f"[{kernel.release}] "
    problem = ""
    with open(console, "wb") as out:
        if STOPPING.is_set():
            raise LaneError("stopped")
        try:
            proc = subprocess.Popen(qemu_command(kernel, initrd, results, args),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
        except FileNotFoundError as err:
            raise LaneError(f"{QEMU} not found: run 'python vm/lane.py --install-deps'") \
                from err

        def pump() -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                out.write(line)
                out.flush()
                if line.startswith(START_MARK):
                    started.set()
                if args.verbose:
                    sys.stdout.write(prefix + line.decode(errors="replace"))
                    sys.stdout.flush()

        LIVE.add(proc)
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        while proc.poll() is None:
            elapsed = time.monotonic() - t0
            if not started.is_set() and elapsed > args.boot_timeout:
                problem = (f"no {'command' if args.run else 'pytest'} after "
                           f"{args.boot_timeout:.0f} s of boot (qemu killed)")
            elif elapsed > args.timeout:
                problem = f"timed out after {args.timeout:.0f} s (qemu killed)"
            if problem:
                proc.kill()
                break
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        proc.wait()
        LIVE.discard(proc)
        reader.join(timeout=10)
    summary, judged = judge(results, args.run)
    problem = problem or judged
    if problem and not (results / "exitcode").is_file():
        problem += f" (qemu exit {proc.returncode})"
    if args.run and (results / "stdout").is_file():
        deliver_stdout(kernel, results / "stdout", args.out)
    if args.run and (results / "stderr").is_file():
        err = (results / "stderr").read_bytes().decode(errors="replace")
        if err.strip():
            with OUTPUT_LOCK:
                for ln in err.rstrip("\n").splitlines():
                    print(f"[{kernel.release}] {ln}", file=sys.stderr)
                sys.stderr.flush()
    if not problem and not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    return Outcome(kernel, not problem, summary, time.monotonic() - t0, console, problem,
                   started.is_set())


def deliver_stdout(kernel: Kernel, path: Path, out: str | None) -> None:
    """--run: the guest command's stdout to ``out`` (``{series}``/``{release}``
    expanded) or to this process's stdout."""
    data = path.read_bytes()
    if out:
        dest = Path(out.format(series=kernel.series, release=kernel.release))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        log(f"{kernel.release}: the command's output ({len(data)} bytes) is in {dest}")
    else:
        with OUTPUT_LOCK:
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.flush()


def boot(kernel: Kernel, pytest_args: list[str], args: argparse.Namespace,
         runs: Path) -> Outcome:
    """Run the selection in one guest; a guest that dies before pytest starts (TCG
    has rare crashes while the kernel boots) is booted again, up to --boot-retries."""
    t0 = time.monotonic()
    for attempt in range(1, args.boot_retries + 2):
        o = boot_once(kernel, pytest_args, args, runs)
        if o.ok or o.started or attempt > args.boot_retries or STOPPING.is_set():
            break
        log(f"{kernel.release}: the guest died before pytest started ({o.problem}; "
            f"console: {o.console}); booting it again")
    o.attempts, o.seconds = attempt, time.monotonic() - t0
    return o


def report(o: Outcome, tail: int, stream=None) -> None:
    """The outcome of one guest (``stream``: stdout; stderr with --run, whose stdout
    is the command's)."""
    out = stream or sys.stdout
    boots = f", {o.attempts} boots" if o.attempts > 1 else ""
    line = f"vm {o.kernel.release}: {o.summary} ({o.seconds:.1f} s{boots})"
    if o.ok:
        print(line, file=out, flush=True)
        return
    print(f"{line} FAILED: {o.problem}", file=out, flush=True)
    text = o.console.read_bytes().decode(errors="replace").splitlines()
    print(f"--- last {min(tail, len(text))} lines of the guest console ({o.console}) ---",
          file=out)
    for ln in text[-tail:]:
        print(f"  | {ln}", file=out)
    print("---", file=out, flush=True)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_args = argv[:i], argv[i + 1:]
    else:
        pytest_args = []
    p = argparse.ArgumentParser(
        prog="python vm/lane.py", description=__doc__.split("\n\n")[0],
        epilog="Everything after -- goes to pytest (default: tests/vm), or with --run is "
               "the command to run in the guest.")
    p.add_argument("--install-deps", action="store_true",
                   help="first add <codename>-backports to apt and install "
                        f"{' '.join(HOST_PACKAGES)} (root); alone, exit after that")
    p.add_argument("--fetch-only", action="store_true",
                   help="resolve and fetch the kernels into the cache, then exit")
    p.add_argument("--kernels", default=DEFAULT_KERNELS,
                   help=f"comma-separated kernel series (default {DEFAULT_KERNELS})")
    p.add_argument("--cache", type=Path,
                   default=Path(os.environ.get("PAGESCAN_VM_CACHE", REPO / "vm-cache")),
                   help="kernel cache (default $PAGESCAN_VM_CACHE or vm-cache/ in the repo)")
    p.add_argument("--jobs", type=int, default=0,
                   help="guests at once (default: one per kernel, at most one per host CPU)")
    p.add_argument("--smp", type=int, default=0,
                   help="CPUs per guest (default: the host CPUs shared out, 1 or 2)")
    p.add_argument("--memory", default="2G", help="guest RAM (default 2G)")
    p.add_argument("--cpu", default="max", help="qemu CPU model (default max)")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds per guest before qemu is killed (default 300)")
    p.add_argument("--boot-timeout", type=float, default=90,
                   help="seconds for a guest to reach pytest before qemu is killed (default 90)")
    p.add_argument("--boot-retries", type=int, default=1,
                   help="boot again when a guest dies before pytest starts (default 1)")
    p.add_argument("--tail", type=int, default=80,
                   help="console lines shown for a failed guest (default 80)")
    p.add_argument("--keep", action="store_true", help="keep run dirs of passing guests too")
    p.add_argument("-v", "--verbose", action="store_true", help="stream the guest consoles")
    p.add_argument("--run", action="store_true",
                   help="everything after -- is a command to run in the guest instead of "
                        "pytest (passes when it exits 0); its stdout comes back")
    p.add_argument("--out", metavar="FILE",
                   help="--run: write the command's stdout to FILE instead of printing it "
                        "({series} and {release} in FILE: one file per kernel)")
    args = p.parse_args(argv)
    if args.out and not args.run:
        p.error("--out needs --run")
    if args.run and not pytest_args:
        p.error("--run needs a command after --")
    if args.out and len([s for s in args.kernels.split(",") if s.strip()]) > 1 \
            and "{series}" not in args.out and "{release}" not in args.out:
        p.error("--out with several kernels needs {series} or {release} in FILE")

    try:
        if args.install_deps:
            t0 = time.monotonic()
            install_deps()
            log(f"host packages installed ({time.monotonic() - t0:.1f} s)")
            if not (args.fetch_only or pytest_args):
                return 0
        series = [s.strip() for s in args.kernels.split(",") if s.strip()]
        if not series:
            p.error("--kernels: no kernel series given")
        for tool in ("apt-get", "dpkg") + (() if args.fetch_only else (QEMU,)):
            if not shutil.which(tool):
                raise LaneError(f"{tool} not found: run 'python vm/lane.py --install-deps'")
        cache = args.cache.resolve()
        runs = cache / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        resolved = [resolve(s) for s in series]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(resolved)) as pool:
            kernels = list(pool.map(lambda k: fetch(k, cache), resolved))
        log(f"kernels ready ({time.monotonic() - t0:.1f} s): "
            + ", ".join(f"{k.release} ({k.version})" for k in kernels))
    except LaneError as err:
        print(f"lane: error: {err}", file=sys.stderr)
        return 2
    if args.fetch_only:
        return 0

    pytest_args = pytest_args or ["tests/vm"]      # (--run has a command: checked above)
    prune(runs)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    return run_guests(kernels, pytest_args, args, runs, t0)


def stop(signum: int, _frame: object) -> None:
    """On SIGTERM/SIGINT: kill the guests (no reboots) and exit 128+signal."""
    STOPPING.set()
    for proc in list(LIVE):
        proc.kill()
    raise SystemExit(128 + signum)


def prune(runs: Path, max_age: float = 86400) -> None:
    """Forget run dirs (kept for failed guests) older than a day."""
    for d in runs.iterdir():
        try:
            if time.time() - d.stat().st_mtime > max_age:
                shutil.rmtree(d, ignore_errors=True)
        except FileNotFoundError:
            pass


def run_guests(kernels: list[Kernel], pytest_args: list[str], args: argparse.Namespace,
               runs: Path, t0: float) -> int:
    # Under TCG a guest's pytest runs on one vCPU: a second one buys nothing, while
    # guests side by side (one host CPU each) halve the wall time.
    cpus = len(os.sched_getaffinity(0))
    jobs = args.jobs or max(1, min(len(kernels), cpus))
    args.smp = args.smp or min(2, max(1, cpus // jobs))
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(boot, k, pytest_args, args, runs) for k in kernels]
        outcomes = []
        try:
            for f in futures:
                outcomes.append(f.result())
                report(outcomes[-1], args.tail, sys.stderr if args.run else None)
        except LaneError as err:
            print(f"lane: error: {err}", file=sys.stderr)
            return 2
    total = time.monotonic() - t0
    failed = [o.kernel.release for o in outcomes if not o.ok]
    print(f"vm lane: {len(outcomes) - len(failed)}/{len(outcomes)} kernels passed "
          f"({total:.1f} s)" + (f"; FAILED: {', '.join(failed)}" if failed else ""),
          file=sys.stderr if args.run else sys.stdout, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
