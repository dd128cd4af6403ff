"""Run directories: the files a run leaves, who may write them, and resuming a killed run.

A run directory holds ``config.json`` (every setting, what ``auto`` speed settings resolved to, and the
library versions),
``subset.json`` (training indices), ``metrics.jsonl`` (one line per evaluation),
``summary.json`` (written last: its presence means the run finished), ``model.pt`` and, while
the run is under way, ``state.pt`` (trainable weights, BatchNorm statistics, optimiser, schedule
and history after the last saved epoch, from which ``--resume`` continues).

Rules, enforced by :meth:`RunDir.open` under the directory's lock (:class:`~transfer.files.DirLock`):
a fresh run starts only in a missing or empty directory; ``--resume`` continues only a run whose
recorded settings equal the requested ones (a finished run too); a directory holding any file
that is not a run's is never written.
"""

from __future__ import annotations

import platform
from pathlib import Path

from transfer.errors import UserError
from transfer.files import (
    LOCK_NAME,
    TMP_SUFFIX,
    DirLock,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    read_json,
    refuse_foreign,
    remove_stale_temporaries,
)

__all__ = [
    "RunDir",
    "atomic_torch_save",
    "atomic_write_json",
    "atomic_write_jsonl",
    "atomic_write_text",
    "read_json",
    "versions",
]


def versions() -> dict:
    import numpy
    import torch
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
    }


# settings added after runs were first recorded, with the value a run recorded before them ran with: such a
# run resumes under these values instead of being refused for a setting it could not have recorded
ADDED_SETTINGS = {"precision": "auto", "channels_last": "auto", "augment_on": "auto"}


class RunDir:
    """Paths and checks of one run directory."""

    FILES = ("config.json", "subset.json", "metrics.jsonl", "summary.json", "model.pt", "state.pt")

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.subset = self.root / "subset.json"
        self.metrics = self.root / "metrics.jsonl"
        self.summary = self.root / "summary.json"
        self.model = self.root / "model.pt"
        self.state = self.root / "state.pt"

    def lock(self) -> DirLock:
        """The exclusive lock every writer of this directory holds for its whole life.

        A directory holding files that are not a run's is refused first, so it gets not even a lock file."""
        self._refuse_foreign()
        return DirLock(self.root, "--out")

    def _refuse_foreign(self) -> None:
        entries = {n for n in self._entries() if not n.endswith(TMP_SUFFIX)}
        refuse_foreign(self.root, sorted(entries - set(self.FILES)), "a robust-transfer run")

    def _entries(self) -> set[str]:
        return {p.name for p in self.root.iterdir()} - {LOCK_NAME} if self.root.is_dir() else set()

    def open(self, settings: dict, resume: bool, source_sha256: str | None = None, speed: dict | None = None) -> None:
        """Check the directory may take this run, then record ``settings`` (fresh) or compare them (resume).

        ``source_sha256``: the hash of the source model's file, recorded beside the settings; a resume
        from another file is refused (a run recorded before hashes were kept is resumed unchecked).
        ``speed``: what the speed settings resolved to at the start (:mod:`transfer.precision`), recorded
        beside the settings on a fresh start (:meth:`recorded_speed`), so that a resumed run keeps them.

        Call while holding :meth:`lock`. Removes temporaries a killed writer left. Raises
        :class:`UserError` when the directory holds files that are not a run's, when a fresh run
        finds anything of another run (``state.pt`` included), and when ``resume`` finds different
        settings, so a foreign run is never continued and a user's file never overwritten.
        """
        remove_stale_temporaries(self.root)
        entries = self._entries()
        self._refuse_foreign()
        if entries and not resume:
            raise UserError(
                f"{self.root} already holds a run ({', '.join(sorted(entries))}); "
                "pass --resume to continue it or choose another --out"
            )
        if not entries:
            record = {"settings": settings, "versions": versions()}
            if source_sha256:
                record["source_sha256"] = source_sha256
            if speed is not None:
                record["speed"] = speed
            atomic_write_json(self.config, record)
            return
        if not self.config.exists():
            raise UserError(
                f"cannot resume {self.root}: it has no config.json, so its settings are unknown; "
                "delete the directory to start again"
            )
        config = self._config()
        old = {**ADDED_SETTINGS, **config["settings"]}
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            shown = "; ".join(f"{k}: recorded {old.get(k)!r}, asked {settings.get(k)!r}" for k in diff[:4])
            raise UserError(f"cannot resume {self.root}: its settings differ ({shown})")
        before = config.get("source_sha256")
        if before and source_sha256 and before != source_sha256:
            raise UserError(f"cannot resume {self.root}: it started from a source file of SHA-256 {before}, and "
                            f"{settings.get('source')!r} is now a file of SHA-256 {source_sha256}")  # fmt: skip

    def recorded(self) -> dict:
        """The settings in ``config.json``; a malformed file is a :class:`UserError`."""
        return self._config()["settings"]

    def recorded_speed(self) -> dict | None:
        """The speed settings the run resolved at its start (``precision``, ``channels_last``, ``augment_on``), or
        ``None`` for a run started before they were recorded."""
        return self._config().get("speed")

    def _config(self) -> dict:
        """``config.json``, checked to hold settings."""
        config = read_json(self.config, "run directory")
        if not isinstance(config, dict) or not isinstance(config.get("settings"), dict):
            raise UserError(f"{self.config} has no 'settings'; it was not written by robust-transfer")
        return config

    def finished(self) -> bool:
        return self.summary.exists()

    def read_summary(self) -> dict:
        return read_json(self.summary, "run directory")
