"""Output files of the CLI's commands: checked before any work (``check_output``), written whole or not at all
(``replacing``), so a bad path or an interruption never costs the inputs or a finished earlier output."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError


def check_output(flag: str, output: str | Path, inputs: Iterable[str | Path] = (), *,
                 others: Mapping[str, str | Path | None] | None = None, hint: str = "") -> Path:
    """Refuse, before any work, an output file the command could not write or would destroy an input with:
    one of ``inputs``, the same file as another output (``others``: flag -> path), a folder, or a path whose
    folder cannot be made or written. ``UsageError`` naming ``flag`` and the path; else the resolved path.
    Shared by ``tinyrm score``, ``eval``, ``rank`` and ``report``."""
    path = Path(output).resolve()
    if any(Path(source).resolve() == path for source in inputs):
        raise UsageError(f"{flag} {output} is one of the inputs")
    for other_flag, other in (others or {}).items():
        if other is not None and Path(other).resolve() == path:
            raise UsageError(f"{flag} {output} is also {other_flag}: give each output its own file")
    if path.is_dir():
        raise UsageError(f"{flag} {output} is a folder; give a file name{hint}")
    folder = path.parent
    while not folder.exists():  # the nearest folder that exists: the rest is made when the file is written
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {output}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {output}: cannot write in {folder} (permission denied)")
    return path


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` (its folder made) for the block to write; it replaces ``path`` when the
    block ends (``os.replace``), so ``path`` is never seen half written, and an error or Ctrl-C in the block
    leaves the old ``path`` as it was (the temporary file is removed). A symlink is written through: its target
    is replaced, the link stays."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
