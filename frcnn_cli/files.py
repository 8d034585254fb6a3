"""Path checks, the output rule, atomic writes and run-folder locks shared by every command.

The promises kept here:

- a command never writes over its own input;
- it replaces an existing file only when that file is an earlier output of the same kind,
  recognised by its content (:mod:`frcnn_cli.outputs` lists the kinds): an eval result over
  an eval result, a dataset ``data split`` wrote over one it wrote. Anything else (a
  checkpoint, a dataset of the user's, an image, a file of unknown kind) is refused with one
  line naming what it holds, and left as it is;
- an output file is either the old one or the complete new one (temp file + rename), with
  the permissions a plain write would give it (the umask's for a new file);
- a folder a run writes is locked while it does (:func:`lock_folder`): a second run is
  refused naming the process that holds it, and the lock of a process that is gone is taken
  over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from frcnn_cli.errors import DataError, InputError
from frcnn_cli.outputs import OutputKind, describe, result_marker, with_article

log = logging.getLogger("frcnn")


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


def resolved(path: Path) -> Path:
    """``path`` with its links followed, else (a loop, a missing parent) made absolute."""
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def _same(a: Path, b: Path) -> bool:
    """One file under two names: the same path once resolved, or a hard link."""
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def prepare_output_file(
    path: str | os.PathLike, kind: OutputKind, inputs: Iterable[str | os.PathLike] = (),
    what: str = "output"
) -> Path:
    """Check that ``path`` may be written; create its folder.

    Raises InputError when the output would replace an input, is a folder, is an existing
    file that is not ``kind`` (see :mod:`frcnn_cli.outputs`), or its folder cannot be
    created or written. ``inputs`` is only read when ``path`` exists, so a dataset's image
    files can be passed as a generator at no cost.
    """
    out = Path(path)
    if out.exists():  # only an existing file can be an input: ``inputs`` may be long and lazy
        for src in inputs:
            if src is not None and _same(out, Path(src)):
                raise InputError(f"{what} {out} is the same file as the input; "
                                 "choose another path")
        if out.is_dir():
            raise InputError(f"{what} {out} is a folder; give a file path")
        refuse_unless(out, kind, what)
    _writable_dir(out.parent if str(out.parent) else Path("."), what)
    return out


def prepare_output_dir(
    path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
    what: str = "output folder", writes: Iterable[tuple[str | Path, OutputKind]] = ()
) -> Path:
    """Create ``path`` as a folder (parents too) and check it is writable and is no input.

    ``writes``: ``(name, kind)`` of the files the command will write in it (names relative
    to it); each that exists must be an earlier output of that kind (:func:`refuse_unless`).
    """
    out = Path(path)
    for src in inputs:
        if src is not None and _same(out, Path(src)):
            raise InputError(f"{what} {out} is an input; choose another folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"{what} {out} exists and is not a folder")
    if out.is_dir():
        for name, kind in writes:
            existing = out / name
            if existing.is_dir():
                raise InputError(f"{what} {out} holds a folder {name} where a file is to be "
                                 "written; choose another folder")
            if existing.exists():
                refuse_unless(existing, kind, what)
    _writable_dir(out, what)
    return out


def refuse_unless(path: Path, kind: OutputKind, what: str = "output") -> None:
    """InputError unless the existing file ``path`` is an earlier output of ``kind``."""
    if kind.recognise(path):
        return
    wanted = with_article(kind.name)
    raise InputError(f"{what} {path} already holds {describe(path)}, not {wanted}; frcnn "
                     f"replaces only {wanted} it wrote before: move the file away or choose "
                     "another path")


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
    a read-only or unwritable folder surface as InputError naming the file. The file gets the
    mode a plain ``open(path, "w")`` would leave: the old file's, or the umask's for a new one
    (mkstemp alone makes every output private, 0600).
    """
    target = Path(path)
    kept = "the previous file is intact" if target.exists() else "nothing was written"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise InputError(f"cannot write {target}: {e.strerror or e}; {kept}") from e
    try:
        os.chmod(tmp, _mode_for(target))
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


def _mode_for(target: Path) -> int:
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        return 0o666 & ~umask


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically; returns the path."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
    return Path(path)


def write_result(path: str | os.PathLike, kind: OutputKind, result: dict[str, Any]) -> Path:
    """Write a JSON result of ``kind`` atomically, marked as frcnn's (its first key,
    :func:`frcnn_cli.outputs.result_marker`), so that the next run may replace it."""
    return write_json(path, {**result_marker(kind), **result})


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically; returns the path."""
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


# --------------------------------------------------------------------------- run-folder locks

LOCK_NAME = ".frcnn.lock"


class FolderLock:
    """The lock a process holds on a folder it writes (:func:`lock_folder`); ``release()``
    it, or use it as a context manager. The kernel drops it when the process dies."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # before closing: a waiter re-checks the file it locked
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_folder(folder: str | os.PathLike, what: str = "run folder",
                command: str = "frcnn") -> FolderLock:
    """Lock ``folder`` (created if missing) for this process: ``FOLDER/.frcnn.lock`` holds
    its PID, host and ``command`` under an exclusive ``flock``.

    Raises InputError naming the holder when another live process has the folder. A lock
    left by a process that is gone (killed, crashed) is free, because the kernel released
    its ``flock``; it is taken over with a warning naming the old holder.
    """
    import socket

    folder = Path(folder)
    _writable_dir(folder, what)
    path = folder / LOCK_NAME
    fd = _acquire(path, what, folder)
    stale = _holder(fd) if os.fstat(fd).st_size else None
    if stale is not None:
        log.warning("%s %s was locked by %s, which is gone; taking it over", what, folder,
                    stale)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode())
    return FolderLock(path, fd)


def folder_holder(folder: str | os.PathLike) -> str | None:
    """Who holds ``folder``'s lock now (a live process, in words), or None. Nothing is
    created: a folder without a lock file is held by no one."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if fcntl is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        return None
    finally:
        os.close(fd)  # closing drops a shared lock taken here


def _acquire(path: Path, what: str, folder: Path) -> int:
    """An open descriptor of the lock file, under this process's ``flock`` (POSIX; elsewhere
    the file only records the holder)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise InputError(f"cannot lock {what} {folder}: {e.strerror or e}") from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise InputError(f"{what} {folder} is in use by {holder}; wait for it to end or "
                             "stop it, or choose another folder") from None
        try:  # its holder may have released it and unlinked the file we opened: try again
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _holder(fd: int) -> str:
    """Who wrote the lock file open as ``fd``, in words."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        record = json.loads(os.read(fd, 4096).decode() or "{}")
        return (f"process {record['pid']} on {record['host']} ({record['command']}, since "
                f"{record['started']})")
    except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError):
        return "another process"
