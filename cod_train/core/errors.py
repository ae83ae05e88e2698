"""The error taxonomy. Commands turn a :class:`ConfigError` into one ``error:`` line and exit 2 before any work;
a :class:`RunError` (the run itself failed: a damaged checkpoint, data that changed under a resume) into one
``error:`` line and exit 1 (exit 4 for :class:`CheckpointSaveError`: a disk full while saving). Anything else is a bug and keeps its traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """The user's input is wrong (a key, a path, a combination); the message says what to change."""


class RunError(RuntimeError):
    """The run could not go on for a reason outside the configuration; the message says what happened."""

    exit_code = 1


class CheckpointSaveError(RunError):
    """A checkpoint could not be written (disk full, I/O error); the last good checkpoint is still the latest."""

    exit_code = 4
