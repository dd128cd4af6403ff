"""Files a command writes: atomic replacement, strict JSON, exclusive directory locks, free-space checks.

Every output file is written to a temporary sibling ``.NAME.XXXXXXXX.tmp`` and renamed over
``NAME``, so a killed process leaves either the old file or the new one, never half of one; the
temporaries a kill leaves behind are removed the next time the directory is opened under its lock.
Files are created with mode ``0o666`` less the user's umask (``tempfile.mkstemp`` would give 0600).

A directory that a command writes is held with :class:`DirLock`, an OS lock (``flock``) on
``DIR/.lock`` that the kernel releases when the process dies, however it dies: a crash never leaves
a stale lock behind, and two processes never write one directory at once.

An output directory (a sweep, a summary, figures, a study, the demo) is an :class:`OutputDir`: its
marker ``DIR/.robust-transfer`` names the command that owns it, the command holds its lock for its
whole life, and a directory holding anything that is not that command's (:func:`foreign_entries`)
is refused before a byte is written, so a user's file is never overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch

from transfer.errors import UserError

LOCK_NAME = ".lock"
MARKER_NAME = ".robust-transfer"
TMP_SUFFIX = ".tmp"


def temporary_sibling(path: Path | str) -> Path:
    """A fresh hidden name beside ``path`` that :func:`remove_stale_temporaries` recognises."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def _create(path: Path) -> IO[bytes]:
    """Open a new file for writing with the user's umask applied (``O_EXCL``: never an existing one)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], None], durable: bool = True,
                 needed: int | None = None) -> None:  # fmt: skip
    """Write through a temporary sibling, then rename over ``path``.

    A killed process never leaves a half-written ``path``. ``durable`` also fsyncs, which guards
    against an operating-system crash too; per-epoch training state skips it (it is rewritten
    often, and a kill, the case resume is for, keeps the page cache). A full disk is an
    ``OSError(ENOSPC)`` naming ``path`` and the space it ``needed`` (about; else what was written).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with _create(tmp) as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        written = _size(tmp)
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise no_space(path, needed or written) from None
        if exc.filename is not None:
            raise
        # numpy's ``tofile`` reports a short write without errno or path: name both what and where
        reason = exc.strerror or f"the write stopped short ({exc}): the disk is full or a file-size limit was reached"
        raise OSError(exc.errno, reason, str(path)) from None
    except RuntimeError as exc:
        written = _size(tmp)
        tmp.unlink(missing_ok=True)
        # torch.save's zip writer reports a failed write as "[enforce fail at inline_container.cc] unexpected
        # pos ...", without errno: a full disk is told by the space left where the file was going
        if "inline_container" in str(exc) or "PytorchStreamWriter" in str(exc):
            if shutil.disk_usage(path.parent).free < max(needed or 0, written, 1) + 2**20:
                raise no_space(path, needed or written) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def no_space(path: Path | str, needed: int | None) -> OSError:
    """``ENOSPC`` naming the file, the space it needed (about) and the space free there."""
    path = Path(path)
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
    need = f"needed ~{max(needed, 1) / 1e6:,.1f} MB, " if needed else ""
    return OSError(errno.ENOSPC, f"no space left on the device of {path} ({need}{free / 1e6:,.1f} MB free)", str(path))


def torch_nbytes(obj) -> int:
    """Bytes of the tensors in a (nested) object that ``torch.save`` would write: about the file's size."""
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(torch_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(torch_nbytes(v) for v in obj)
    return 0


@contextmanager
def staged(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path for a writer that opens files itself (``np.lib.format.open_memmap``).

    On normal exit the temporary is renamed over ``path``; on any exception it is removed.
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _finite_or_null(obj):
    """NaN and infinities become ``null``: strict JSON has no spelling for them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_null(v) for v in obj]
    return obj


def strict_json(obj, indent: int | None = 2) -> str:
    """``json.dumps`` that never writes the bare ``NaN`` / ``Infinity`` of Python's default (they become null)."""
    return json.dumps(_finite_or_null(obj), indent=indent, sort_keys=True, allow_nan=False)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path | str, obj) -> None:
    atomic_write_text(path, strict_json(obj) + "\n")


def atomic_write_jsonl(path: Path | str, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(strict_json(r, indent=None) + "\n" for r in rows))


def atomic_torch_save(obj, path: Path | str, durable: bool = True) -> None:
    atomic_write(path, lambda f: torch.save(obj, f), durable, needed=torch_nbytes(obj))


def read_json(path: Path | str, what: str = "file"):
    """Parse a JSON file; a missing or malformed one is a :class:`UserError` naming the path."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path} is missing; this {what} is incomplete or was not written by robust-transfer") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); the {what} is damaged: restore or delete it") from None


def remove_stale_temporaries(root: Path | str) -> list[Path]:
    """Delete the ``.*.tmp`` files a killed writer left in ``root``; call only while holding its lock."""
    removed = []
    for p in Path(root).glob(f".*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def check_free_space(root: Path | str, nbytes: int, what: str) -> None:
    """Refuse, before anything is created, to write ``nbytes`` where fewer bytes are free.

    Memory-mapped outputs are sparse files: a full disk would otherwise surface as SIGBUS in the
    middle of the computation instead of an error.
    """
    free = shutil.disk_usage(root).free
    if nbytes > free:
        raise UserError(
            f"not enough disk space in {root} for {what}: it needs {nbytes / 1e9:.2f} GB and "
            f"{free / 1e9:.2f} GB are free; free some space or choose another output directory"
        )


class DirLock:
    """An exclusive OS lock on directory ``root`` (created if missing), held until :meth:`release`.

    Use as a context manager. A second process (or a second lock in this one) that asks for the
    same directory gets a :class:`UserError` at once, naming the holder's pid; the kernel drops
    the lock when the holding process exits, so nothing stale survives a crash.
    """

    def __init__(self, root: Path | str, what: str = "directory"):
        self.root = Path(root)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root} is a file, not a directory: it is in the way; choose another output directory")
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _lock_fd(fd)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"{self.root} is being written by another robust-transfer process (pid {holder}); "
                f"wait for it to finish or choose another {self.what}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def foreign_entries(root: Path | str, ours: Callable[[str], bool]) -> list[str]:
    """Names in ``root`` that ``ours`` does not claim, sorted; hidden names are skipped (the lock,
    the marker and a writer's temporaries are the only hidden names robust-transfer writes)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and not ours(p.name))


def refuse_foreign(root: Path | str, foreign: list[str], what: str) -> None:
    """The one refusal of a directory holding files that are not ``what`` (nothing written yet)."""
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise UserError(f"{root} holds files that are not {what} ({shown}); nothing was written: choose a new or empty --out")


def name_patterns(*patterns: str) -> Callable[[str], bool]:
    """``ours`` for :class:`OutputDir`: a name matching any of the shell ``patterns``."""
    from fnmatch import fnmatchcase

    return lambda name: any(fnmatchcase(name, p) for p in patterns)


class OutputDir:
    """A directory one command owns: marked, locked for the command's life, never holding foreign files.

    On entry the lock is taken (:class:`DirLock`), then: a directory marked by another command is
    refused; one holding names that ``ours`` does not claim is refused; an unmarked directory that
    is not empty is refused unless ``adopt(root)`` recognises it as one this command wrote before
    markers existed; temporaries a killed writer left are removed and the marker is written. Use as
    a context manager; nothing in the directory is touched before these checks pass. A directory
    this call created is removed again when the command fails before writing anything into it.
    """

    def __init__(self, root: Path | str, kind: str, ours: Callable[[str], bool],
                 adopt: Callable[[Path], bool] | None = None, what: str = "--out"):  # fmt: skip
        self.root, self.kind, self.ours, self.adopt = Path(root), kind, ours, adopt
        self.marker = self.root / MARKER_NAME
        self._lock = DirLock(self.root, what)

    def check(self) -> None:
        """Raise :class:`UserError` unless this command may write the directory (call under the lock)."""
        owner = self.marker.read_text().strip() if self.marker.is_file() else None
        if owner is not None and owner != self.kind:
            raise UserError(
                f"{self.root} belongs to robust-transfer's {owner}, not its {self.kind}; nothing was written: "
                "choose another --out"
            )
        refuse_foreign(self.root, foreign_entries(self.root, self.ours), f"robust-transfer's {self.kind}")
        present = foreign_entries(self.root, lambda _: False)  # every visible name
        if owner is None and present and not (self.adopt and self.adopt(self.root)):
            shown = ", ".join(present[:4])
            raise UserError(
                f"{self.root} is not empty ({shown}) and has no {MARKER_NAME} marker, so it was not written by "
                f"robust-transfer's {self.kind}; nothing was written: choose a new or empty --out"
            )

    def __enter__(self) -> OutputDir:
        self._created = not self.root.exists()
        if self.root.is_dir():
            self.check()  # a refused directory gets not even a lock file; checked again under the lock
        self._lock.acquire()
        try:
            self.check()
            remove_stale_temporaries(self.root)
            if not self.marker.is_file():
                atomic_write_text(self.marker, self.kind + "\n")
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is not None and self._created:
            # a failed command leaves no empty directory behind (only the marker and the lock were written)
            left = {p.name for p in self.root.iterdir()} if self.root.is_dir() else set()
            if left <= {LOCK_NAME, MARKER_NAME}:
                for name in left:
                    (self.root / name).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.root.rmdir()
        self._lock.release()


def describe_os_error(exc: OSError) -> str:
    """One line for a failure of the file system: the path, the reason and what to do."""
    path = exc.filename if exc.filename is not None else "a file"
    hints = {
        errno.ENOSPC: "the disk is full: free some space or write elsewhere",
        errno.EDQUOT: "the disk quota is exhausted: free some space or write elsewhere",
        errno.EFBIG: "the file is larger than this process may write (ulimit -f): raise the limit or write elsewhere",
        errno.EACCES: "permission denied: choose a place you can write to",
        errno.EPERM: "operation not permitted: choose a place you can write to",
        errno.EROFS: "the file system is read-only: write elsewhere",
        errno.ENOTDIR: "a part of the path is a file, not a directory: choose another path",
        errno.EISDIR: "it is a directory, a file was expected: choose another path",
        errno.ENOENT: "no such file or directory: check the path",
        errno.EEXIST: "it exists already and is in the way: choose another path",
    }
    reason = hints.get(exc.errno, exc.strerror or type(exc).__name__)
    if exc.errno is not None and exc.strerror and exc.strerror != os.strerror(exc.errno) and exc.errno in hints:
        reason = f"{exc.strerror}: {reason}"  # our own detail (space needed and free) before the advice
    return f"cannot use {path}: {reason}"


def _lock_fd(fd: int) -> None:
    """Non-blocking exclusive ``flock`` (POSIX); ``BlockingIOError`` when another holder has it."""
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def atomic_write_figure(path: Path | str, fig, dpi: int = 130, close: bool = True) -> None:
    """Save a matplotlib figure atomically, in the format its suffix names; close it unless told not to."""
    import matplotlib.pyplot as plt

    atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png"))
    if close:
        plt.close(fig)


def atomic_write_csv(path: Path | str, header: list[str], rows: Iterable[Iterable]) -> None:
    """A CSV file with ``header`` and ``rows``, written atomically."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
