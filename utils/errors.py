"""The two kinds of mistake a user can make, and how main.py reports them.

A ``UsageError`` is a wrong command line: a missing or bad flag value, a path that does not exist, an unknown name.
A ``DataError`` is a problem in the files the command points at: a corrupt image, an empty class folder, a CSV naming
a missing image, a file that is not a checkpoint. main.py prints either as one ``error: ...`` line (no traceback;
``--debug`` shows it, the run's log always records it) and exits with ``USAGE_EXIT`` or ``DATA_EXIT``.

Older code raises ValueError / FileNotFoundError with the same kind of message; main.py treats those as usage
errors, so only a message that names the flag or file and says what to do belongs in them.
"""
from __future__ import annotations

USAGE_EXIT = 2  # argparse's own exit code for a bad command line
DATA_EXIT = 1
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped by a signal after writing last.pth; run again with --resume auto


class UsageError(ValueError):
    """A flag value the command cannot run with; the message names the flag and what to pass instead."""


class DataError(RuntimeError):
    """A file or folder the command reads is unusable; the message names it and what to do."""


class Preempted(SystemExit):
    """Training stopped on a signal (SIGTERM, SIGINT, SIGUSR1) after every rank finished its step and last.pth was
    written; the process exits with PREEMPTED_EXIT, and ``--resume auto`` continues bit for bit."""

    def __init__(self, message: str) -> None:
        super().__init__(PREEMPTED_EXIT)
        self.message = message

