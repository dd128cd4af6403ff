"""Files a command writes: atomic replacement, strict JSON, exclusive directory locks, free-space checks.

Every output file is written to a temporary sibling ``.NAME.XXXXXXXX.tmp`` and renamed over
``NAME``, so a killed process leaves either the old file or the new one, never half of one; the
temporaries a kill leaves behind are removed the next time the directory is opened under its lock.
Files are created with mode ``0o666`` less the user's umask (``tempfile.mkstemp`` would give 0600).

A directory that a command writes is held with :class:`DirLock`, an OS lock (``flock``) on
``DIR/.lock`` that the kernel releases when the process dies, however it dies: a crash never leaves
a stale lock behind, and two processes never write one directory at once.
"""

from __future__ import annotations

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
TMP_SUFFIX = ".tmp"


def temporary_sibling(path: Path | str) -> Path:
    """A fresh hidden name beside ``path`` that :func:`remove_stale_temporaries` recognises."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def _create(path: Path) -> IO[bytes]:
    """Open a new file for writing with the user's umask applied (``O_EXCL``: never an existing one)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], None], durable: bool = True) -> None:
    """Write through a temporary sibling, then rename over ``path``.

    A killed process never leaves a half-written ``path``. ``durable`` also fsyncs, which guards
    against an operating-system crash too; per-epoch training state skips it (it is rewritten
    often, and a kill, the case resume is for, keeps the page cache).
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
        tmp.unlink(missing_ok=True)
        if exc.filename is not None:
            raise
        # numpy's ``tofile`` reports a short write without errno or path: name both what and where
        reason = exc.strerror or f"the write stopped short ({exc}): the disk is full or a file-size limit was reached"
        raise OSError(exc.errno, reason, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    atomic_write(path, lambda f: torch.save(obj, f), durable)


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
            raise UserError(f"{self.root} is a file, not a directory; choose another output directory")
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
