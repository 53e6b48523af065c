"""Every file llmkit writes goes through here: atomically, with the debris of killed writers
cleaned up, under a lock where two processes must not share a directory, and with the operating
system's errors turned into one message that names the path.

- `atomic_open(path)`: write a temporary `.NAME.PID.RANDOM.tmp` beside the target, flush it to
  disk, then rename it over the target. `os.replace` is atomic on POSIX and Windows, so a reader
  sees the old file or the whole new one, never half of one, even if the writer is killed.
- `clean_stale(directory)`: temporaries whose writer (the PID in the name) no longer runs are
  what `kill -9` left behind; every write removes its own target's, and commands call this for
  the directories they write (a run, a shard directory) when they start.
- `DirectoryLock(directory)`: an exclusive lock (flock) on DIRECTORY/.lock holding the owner's
  PID, so a second `llmkit train` into the same run is refused instead of interleaving.
- `os_error(e, path)`: an OSError (full disk, read-only, a file where a directory should be, a
  name too long) as an LlmkitError saying what failed and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from llmkit.errors import LlmkitError

_STALE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write somewhere else",
    errno.EDQUOT: "the disk quota is used up: free some space or write somewhere else",
    errno.EROFS: "the filesystem is read-only: write somewhere else",
    errno.EACCES: "you may not write there: choose a directory you own",
    errno.EPERM: "you may not write there: choose a directory you own",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another path",
    errno.EISDIR: "the path is a directory: give a file name",
    errno.EEXIST: "a file stands where a directory must go: remove it or choose another path",
    errno.ENAMETOOLONG: "a name in the path is too long: choose a shorter one",
    errno.ENOENT: "a directory in the path does not exist",
}


def shown(path: str | os.PathLike, width: int = 120) -> str:
    """A path as a message shows it: whole, or its start and end around `...` when very long."""
    text = str(path)
    return text if len(text) <= width else f"{text[: width // 2]}...{text[-width // 3:]}"


def os_error(e: OSError, path: str | os.PathLike, doing: str = "write") -> LlmkitError:
    """The message for an OSError met while doing something to `path`."""
    reason = e.strerror or type(e).__name__
    return LlmkitError(f"cannot {doing} {shown(path)}: {reason}", hint=_HINTS.get(e.errno))


def make_dir(path: str | os.PathLike) -> Path:
    """mkdir -p, with a message instead of a traceback when it cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LlmkitError(f"cannot make the directory {shown(path)}: a file of that name is in the way",
                          hint=_HINTS[errno.EEXIST]) from None
    except OSError as e:
        raise os_error(e, path, "make the directory") from None
    return path


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def clean_stale(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporaries of dead writers in `directory` (of one target `name`, or all)."""
    directory, removed = Path(directory), []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _STALE.match(entry.name)
        if match and (name is None or match["name"] == name) and not _alive(int(match["pid"])):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _temporary(path: Path) -> tuple[int, str]:
    """An open temporary file beside `path`, named so that a dead writer's can be found."""
    if path.is_dir():
        raise LlmkitError(f"cannot write {shown(path)}: it is a directory", hint=_HINTS[errno.EISDIR])
    make_dir(path.parent)
    clean_stale(path.parent, path.name)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
    except OSError as e:
        raise os_error(e, path) from None
    return fd, tmp


@contextlib.contextmanager
def _replacing(path: Path, tmp: str) -> Iterator[None]:
    """Rename `tmp` over `path` if the block succeeds; otherwise remove it (and name any OSError)."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, BrokenPipeError):
            raise os_error(e, path) from None
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces `path`, on error it is removed.
    Any OSError on the way (including while the caller writes) becomes an LlmkitError."""
    path = Path(path)
    fd, tmp = _temporary(path)
    with _replacing(path, tmp), os.fdopen(fd, mode, **kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """For writers that open a path themselves (a library's file writer): a temporary path beside
    the target, renamed over it on success and removed on error."""
    path = Path(path)
    fd, tmp = _temporary(path)
    os.close(fd)
    with _replacing(path, tmp):
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def read_json(path: str | os.PathLike, limit: int = 16 << 20) -> dict:
    """A JSON object from a settings file (config.json, tokenizer_config.json), refusing one
    larger than `limit` bytes before reading it: such files are small, and a huge one is not one."""
    import json

    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limit:
            raise LlmkitError(f"{shown(path)} is {size:,} bytes: too large for a settings file (at most {limit:,})")
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LlmkitError(f"cannot read {shown(path)}: {str(e)[:200]}") from None
    if not isinstance(value, dict):
        raise LlmkitError(f"{shown(path)} is not a JSON object")
    return value


class DirectoryLock:
    """`with DirectoryLock(run_dir):` — one process at a time writes the directory. The lock is
    the kernel's (flock), so it goes away with its process however that process ends; the PID
    in the file only names the holder in the message."""

    def __init__(self, directory: str | os.PathLike, what: str = "directory"):
        self.directory, self.what, self._fd = Path(directory), what, None

    def __enter__(self) -> DirectoryLock:
        import fcntl

        # What this lock creates (the directory and any missing parents) goes again if nothing else lands in it.
        self._created = [p for p in (self.directory, *self.directory.parents) if not p.exists()]
        path = make_dir(self.directory) / ".lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise os_error(e, path, "lock") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LlmkitError(f"{self.directory} is in use: process {holder} is writing this {self.what}",
                              hint="wait for it to finish (or stop it), or choose another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
            if self._created and [p.name for p in self.directory.iterdir()] == [".lock"]:
                with contextlib.suppress(OSError):  # a run that failed before writing anything
                    (self.directory / ".lock").unlink()
                    for directory in self._created:  # innermost first; rmdir refuses a non-empty one
                        directory.rmdir()
