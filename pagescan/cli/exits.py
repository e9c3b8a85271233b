"""The command's exit codes and the two exceptions that end a subcommand early.

===  ==============================================================================
0    success
1    an error of the kernel or environment not covered below
2    usage error (bad option, bad range, unknown category)
3    no such process, or the process exited while being watched or scanned
4    access denied: no ptrace read access to the process
5    no backend works here for what was asked (the probe's reason is printed)
130  interrupted (Ctrl-C) before anything was measured
===  ==============================================================================
"""

from __future__ import annotations

__all__ = ["EXIT_ACCESS", "EXIT_ERROR", "EXIT_GONE", "EXIT_INTERRUPTED", "EXIT_OK",
           "EXIT_UNAVAILABLE", "EXIT_USAGE", "PTRACE_HINT", "Exit", "UsageError"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_GONE = 3
EXIT_ACCESS = 4
EXIT_UNAVAILABLE = 5
EXIT_INTERRUPTED = 130

PTRACE_HINT = ("reading another process's page tables needs ptrace read access to it "
               "(PTRACE_MODE_READ): run as the user that owns the process (which must "
               "be dumpable), or with CAP_SYS_PTRACE (e.g. with sudo)")


class UsageError(Exception):
    """A bad argument found after parsing (exit code 2)."""


class Exit(Exception):
    """End the command with ``code`` after printing ``message`` to stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
