"""Errors that are the user's to fix (a bad model path, a missing file, a bad option value).

The CLI prints them as one ``tinyrm COMMAND: error: ...`` line on stderr and exits with code 2; the
traceback only appears with ``tinyrm -v``. Library callers get an ordinary exception.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what was asked for; the message alone says what is wrong (one line)."""


class ModelNotFoundError(UserError, OSError):
    """A model argument that is neither a loadable local folder nor a reachable hub model.

    Also an ``OSError``, like the error transformers raises for the same problem.
    """


class UsageError(UserError):
    """A wrong combination of options: printed as one line, exit code 2."""


def not_a_file(path: object) -> str:
    """What a data path that is not a file is: ``path: is a folder, ...`` where a folder stands, else ``no such
    file`` (every reader of --data says the same)."""
    from pathlib import Path

    return f"{path}: {'is a folder, not a JSONL file' if Path(str(path)).is_dir() else 'no such file'}"
