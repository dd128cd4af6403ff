"""Run directories: atomic writes, the files a run leaves, and resuming a killed run.

A run directory holds ``config.json`` (every setting and the library versions),
``subset.json`` (training indices), ``metrics.jsonl`` (one line per evaluation),
``summary.json`` (written last: its presence means the run finished), ``model.pt`` and, while
the run is under way, ``state.pt`` (trainable weights, BatchNorm statistics, optimiser, schedule and history after the last
finished epoch, from which ``--resume`` continues).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from transfer.errors import UserError


def _atomic(path: Path | str, write, durable: bool = True) -> None:
    """Write through a temporary file in the same directory, then rename over ``path``.

    A killed process never leaves a half-written ``path``. ``durable`` also fsyncs, which guards
    against an operating-system crash too; per-epoch training state skips it (it is rewritten
    every epoch and a kill, the case resume is for, keeps the page cache).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: Path | str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path: Path | str, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def atomic_torch_save(obj, path: Path | str, durable: bool = True) -> None:
    _atomic(path, lambda f: torch.save(obj, f), durable)


def read_json(path: Path | str):
    return json.loads(Path(path).read_text())


def versions() -> dict:
    import numpy
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
    }


# settings that may differ when a run is resumed (where and how fast it runs, not what it computes)
RESUMABLE = ("device", "workers", "save_every")


def recorded_settings(settings: dict) -> dict:
    """The settings a run directory records and checks on resume: all but :data:`RESUMABLE`."""
    return {k: v for k, v in settings.items() if k not in RESUMABLE}


class RunDir:
    """Paths and checks of one run directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.subset = self.root / "subset.json"
        self.metrics = self.root / "metrics.jsonl"
        self.summary = self.root / "summary.json"
        self.model = self.root / "model.pt"
        self.state = self.root / "state.pt"

    def prepare(self, config: dict, resume: bool) -> None:
        """Create the directory and its ``config.json``, or check it matches on ``resume``.

        A fresh run refuses a directory that already holds a run, so nothing is overwritten.
        """
        if self.config.exists():
            if not resume:
                raise UserError(
                    f"{self.root} already holds a run; pass --resume to continue it or choose another --out"
                )
            old = read_json(self.config)
            diff = sorted(k for k in set(old["settings"]) | set(config) if old["settings"].get(k) != config.get(k))
            if diff:
                raise UserError(f"cannot resume {self.root}: its settings differ in {', '.join(diff)}")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config, {"settings": config, "versions": versions()})

    def finished(self) -> bool:
        return self.summary.exists()
