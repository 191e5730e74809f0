"""The errors d2v_mini raises for bad input it anticipates.

Each says what is wrong, what was expected and how to fix it; `python -m d2v_mini` prints any of
them as one line and exits with status 1 (`--debug` shows the traceback). They subclass the
built-in error a caller would otherwise catch (ValueError, FileNotFoundError), so existing
`except ValueError` code keeps working.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A config value of the wrong type or out of range (raised when the config is built or used)."""


class InputError(ValueError):
    """A model input (source, padding_mask) of the wrong shape, dtype or content."""


class RunFolderError(ValueError):
    """A run folder that holds another run, or a file in it that must not be written."""


class CheckpointError(ValueError):
    """A file that is not a readable d2v_mini checkpoint, or one that does not fit this run."""


class DataFileError(ValueError):
    """A data file that cannot be read or decoded (the message names it)."""


__all__ = ["ConfigError", "InputError", "RunFolderError", "CheckpointError", "DataFileError"]
