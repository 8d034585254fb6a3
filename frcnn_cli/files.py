"""Path checks and atomic writes shared by every command.

Two promises are kept here: a command never writes over its own input, and an output file is
either the old one or the complete new one (temp file + rename), never half written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from frcnn_cli.errors import DataError, InputError


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Return ``path`` as a Path if it is an existing file, else raise InputError."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} not found: {p}")
    if not p.is_file():
        raise InputError(f"{what} is not a file: {p}")
    return p


def require_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    """Return ``path`` as a Path if it is an existing folder, else raise InputError."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} not found: {p}")
    if not p.is_dir():
        raise InputError(f"{what} is not a folder: {p}")
    return p


def _same(a: Path, b: Path) -> bool:
    """One file under two names: the same path once resolved, or a hard link."""
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def prepare_output_file(
    path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), what: str = "output"
) -> Path:
    """Check that ``path`` can be written and is none of ``inputs``; create its folder.

    Raises InputError when the output would replace an input, is a folder, or its folder
    cannot be created or written. ``inputs`` is only read when ``path`` exists, so a
    dataset's image files can be passed as a generator at no cost.
    """
    out = Path(path)
    if out.exists():  # only an existing file can be an input: ``inputs`` may be long and lazy
        for src in inputs:
            if src is not None and _same(out, Path(src)):
                raise InputError(f"{what} {out} is the same file as the input; "
                                 "choose another path")
        if out.is_dir():
            raise InputError(f"{what} {out} is a folder; give a file path")
    _writable_dir(out.parent if str(out.parent) else Path("."), what)
    return out


def prepare_output_dir(
    path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), what: str = "output folder"
) -> Path:
    """Create ``path`` as a folder (parents too) and check it is writable and is no input.

    Files written inside it are checked one by one with :func:`prepare_output_file`.
    """
    out = Path(path)
    for src in inputs:
        if src is not None and _same(out, Path(src)):
            raise InputError(f"{what} {out} is an input; choose another folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"{what} {out} exists and is not a folder")
    _writable_dir(out, what)
    return out


def _writable_dir(folder: Path, what: str) -> None:
    name = what if what.endswith("folder") else f"{what} folder"
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{name} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create {name} {folder}: {e.strerror or e}") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{name} {folder} is not writable")
    # Permission bits do not tell everything (root, read-only mounts, /proc): try it, so a
    # command fails here rather than after its slow part.
    try:
        fd, probe = tempfile.mkstemp(prefix=".frcnn-write-test.", dir=folder)
    except OSError as e:
        raise InputError(f"{name} {folder} is not writable ({e.strerror or e})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of ``path``; DataError naming it when it is binary or unreadable."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{what} {p} is not a UTF-8 text file") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {p}: {e.strerror or e}") from None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``.

    On any error the temp file is removed and ``path`` keeps its previous content. A full disk,
    a read-only or unwritable folder surface as InputError naming the file.
    """
    target = Path(path)
    kept = "the previous file is intact" if target.exists() else "nothing was written"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise InputError(f"cannot write {target}: {e.strerror or e}; {kept}") from e
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InputError(f"no space left on device while writing {target}; {kept}") from e
        if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM,
                                                  errno.EIO):
            raise InputError(f"cannot write {target}: {e.strerror or e}; {kept}") from e
        raise


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically; returns the path."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically; returns the path."""
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)
