"""Small reads of the running system's settings, shared by the backends and the CLI."""

from __future__ import annotations

__all__ = ["has_capability", "sysctl"]


def sysctl(name: str) -> str | None:
    """The value of a sysctl (``vm.max_map_count``), or None when it can't be read."""
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


def has_capability(bit: int) -> bool:
    """Whether this process has the capability ``bit`` in its effective set."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return False
