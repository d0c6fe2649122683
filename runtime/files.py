"""Files a user names: read with a bound, written atomically onto a regular file or a new path.

Reading: only regular files are read, opened without blocking (a FIFO never hangs us), and the
bound holds while reading, not only by `stat()` (a file that grows, or a /proc file that says
it is empty, still stops at the limit). `/dev/zero`, `/dev/stdin`, FIFOs and sockets are
refused with one sentence.

Writing: the target must be a regular file or a path that does not exist yet, in a directory
that exists. A symlink, a device node (`/dev/null`, `/dev/full`), a FIFO or a directory is
refused *before* any work, and again right before the rename; so is an existing SQLite
database (an output never replaces a store). Data goes to a temporary file
beside the target and is renamed over it, so a reader never sees half a file and a failure
leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from runtime.errors import UserError


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


# ---------------------------------------------------------------- reading


def read_bounded(path: str | Path, limit: int, what: str, error: type[UserError] = UserError) -> bytes:
    """The bytes of the regular file at `path`, refused past `limit` bytes while reading.

    `what` names the file in messages ("plan file"); `error` is the class raised."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(
                f"{what} {path} is {_kind(mode)}, not a regular file: save it to a file and give that path"
            )
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise error(
                    f"{what} {path} is over the {_limit_text(limit)} limit: it is not a {what}"
                )
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from e
    finally:
        os.close(fd)
    return b"".join(chunks)


def open_regular(path: str | Path, what: str, error: type[UserError] = UserError):
    """A binary file object on the regular file at `path` (never blocks on a FIFO)."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from e
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        os.close(fd)
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from e
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{what} {path} is {_kind(mode)}, not a regular file: give the path of a file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _limit_text(limit: int) -> str:
    if limit >= 1 << 20 and limit % (1 << 20) == 0:
        return f"{limit >> 20} MB"
    return f"{limit}-byte"


# ---------------------------------------------------------------- writing


def check_target(
    path: str | Path, option: str, suffixes: tuple[str, ...] = (), example: str | None = None
) -> Path:
    """`path` if it can be written atomically: a regular file or a new path in an existing
    directory (and, where `suffixes` are given, ending in one of them). `option` names the
    command-line option in the message ("-o"); `example` is a file name to suggest."""
    path = Path(path)
    shown = f"{option} {path}"
    example = example or ("out" + suffixes[0] if suffixes else "plan.json")
    if not path.name or path.name in (".", ".."):
        raise UserError(f"{shown} names a directory: give a file name, e.g. {path / example}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UserError(f"{shown} cannot be used ({e.strerror}): choose another path") from e
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UserError(
            f"{shown} is {_kind(st.st_mode)}, and only a regular file or a new path is written: "
            f"{_instead(path, st.st_mode, example)}"
        )
    if st is not None and is_database(path):
        raise UserError(
            f"{shown} is an SQLite database (perhaps the plan store), which an output never "
            f"replaces: give a new file name, e.g. {path.parent / example}"
        )
    if suffixes and path.suffix.lower() not in suffixes:
        shown_suffixes = ", ".join(suffixes[:3]) + (" or another that" if len(suffixes) > 3 else "")
        raise UserError(
            f"{shown} does not end in a suffix this output takes ({shown_suffixes}): give a name "
            f"such as {path.with_suffix(suffixes[0]).name if path.suffix else path.name + suffixes[0]}"
        )
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"{shown}: the directory {parent} does not exist; create it or choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{shown}: this user cannot write in {parent}; choose a writable directory")
    if st is not None and not os.access(path, os.W_OK):
        raise UserError(f"{shown} is read-only for this user: choose another path or make it writable")
    return path


_SQLITE_MAGIC = b"SQLite format 3\x00"


def is_database(path: str | Path) -> bool:
    """True where the regular file at `path` is an SQLite database (its 16-byte header)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def _instead(path: Path, mode: int, example: str) -> str:
    """What to give instead of a target that is not a regular file."""
    if stat.S_ISDIR(mode):
        return f"give a file in it, e.g. {path / example}"
    if stat.S_ISLNK(mode):
        return f"give the file it points to ({os.path.realpath(path)}) or a new path"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return f"give a file path, e.g. ./{example}"
    return f"give a regular file, e.g. {path.parent / example}"


@contextlib.contextmanager
def atomic_path(path: str | Path, option: str, suffixes: tuple[str, ...] = (),
                example: str | None = None) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix) for a writer that wants a file name; on
    success it replaces `path`, on any failure it is removed."""
    path = check_target(path, option, suffixes, example)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    tmp = Path(name)
    try:
        os.close(fd)
        yield tmp
        check_target(path, option, suffixes, example)  # nothing swapped in while we worked
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: str | Path, data: bytes | str, option: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Write `data` to `path` atomically (see `atomic_path`); a clear error where that fails."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path = Path(path)
    try:
        with atomic_path(path, option, suffixes) as tmp:
            with open(tmp, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        raise UserError(f"cannot write {option} {path} ({e.strerror or e}): choose a writable path") from e
    return path


def _mode_for(path: Path) -> int:
    """Keep an existing file's permissions; a new file gets the usual 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
