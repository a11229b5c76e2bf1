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


class UsageError(ValueError):
    """A flag value the command cannot run with; the message names the flag and what to pass instead."""


class DataError(RuntimeError):
    """A file or folder the command reads is unusable; the message names it and what to do."""

