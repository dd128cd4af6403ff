"""Influence directories: the one place that knows their file names, and that they are complete or refused.

An influence directory holds ``influence_test.npy`` ``(n_test, n_train)``, ``influence_train.npy``
``(n_train, n_train)``, ``y_test.npy``, ``y_train.npy``, ``idx_test.npy``, ``idx_train.npy`` (indices
into the dataset's test and train splits), optionally ``hessian.npy`` and ``spectrum.npy``, and
``meta.json``, written last: it carries :data:`FORMAT` and is the directory's mark of completion.
A sensitivity run (several cut-offs or dampings) adds ``influence_test.s<i>.npy`` and
``influence_train.s<i>.npy`` for its settings after the first; ``meta["settings"]`` lists them all. An
ensemble (``--ensemble K``) holds the average of K models' matrices, and under ``ensemble/`` their fine-tunes
(``runs/kNN``) and influence directories (``influence/kNN``); ``meta["ensemble"]`` lists them.

Writing (:meth:`InfluenceDir.writing`) holds the directory's lock, first removes ``meta.json`` and
every output derived from the old contents (class-match tables, plots), so a run killed half-way
leaves a directory that every reader refuses rather than a mix of old and new files. Each array is
written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import numpy as np

from transfer.errors import UserError
from transfer.files import (
    LOCK_NAME,
    TMP_SUFFIX,
    DirLock,
    atomic_write,
    atomic_write_json,
    check_free_space,
    read_json,
    refuse_foreign,
    remove_stale_temporaries,
    staged,
)

FORMAT = "robust-transfer-influence/1"
ARRAYS = ("influence_test", "influence_train", "y_test", "y_train", "idx_test", "idx_train")
OPTIONAL_ARRAYS = ("hessian", "spectrum")
META = "meta.json"
# outputs of class-match and plot-influence that may sit in the directory; stale once it is rewritten
DERIVED = ("class_match*.csv", "class_match*.png", "influence_heatmap.png", "influence_grid_*.png")
SETTING_ARRAYS = ("influence_test.s*.npy", "influence_train.s*.npy")
# an ensemble's fine-tunes and per-model directories (study.attribution.ensemble): kept when the directory is
# rewritten, so that a killed or repeated ensemble resumes from the models it has
ENSEMBLE_DIR = "ensemble"


@dataclass
class InfluenceResult:
    """A complete influence directory, read: ``meta`` and the arrays (memory-mapped)."""

    root: Path
    meta: dict
    arrays: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    @property
    def settings(self) -> list[dict]:
        """The (cut-off, damping) settings written, the first being the main matrices."""
        return self.meta.get("settings") or [{"index": 0, "label": "as computed"}]

    def setting(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(influence_test, influence_train)`` of setting ``index`` (memory-mapped)."""
        if index == 0:
            return self.arrays["influence_test"], self.arrays["influence_train"]
        return self.arrays[f"influence_test.s{index}"], self.arrays[f"influence_train.s{index}"]

    def describe(self, index: int = 0) -> str:
        """The choices behind setting ``index``, for plot titles: cut-off, directions kept, normalisation."""
        st = self.settings[index]
        kept = f", kept {st['rank_kept']}/{st['size']}" if st.get("rank_kept") is not None else ""
        return f"{st['label']}{kept}, normalize {self.meta.get('normalize', 'none')}"

    @property
    def label(self) -> str:
        settings = self.meta.get("run_settings", {})
        return (
            f"{settings.get('source', self.root.name)} -> {settings.get('target', '?')}" if settings else self.root.name
        )


class InfluenceDir:
    """Reader and writer of one influence directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.meta = self.root / META

    def path(self, name: str) -> Path:
        return self.root / f"{name}.npy"

    def _ours(self, name: str) -> bool:
        known = {f"{a}.npy" for a in ARRAYS + OPTIONAL_ARRAYS} | {META, LOCK_NAME, ENSEMBLE_DIR}
        return name in known or any(fnmatch(name, pattern) for pattern in DERIVED + SETTING_ARRAYS)

    def _foreign(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if not self._ours(p.name) and not p.name.endswith(TMP_SUFFIX))

    @contextmanager
    def writing(self, nbytes: int = 0) -> Iterator[InfluenceDir]:
        """Lock the directory and empty it of a previous result; refuse a directory with foreign files.

        ``nbytes``, the size of what will be written, is checked against the free space first.
        ``meta.json`` is written by :meth:`complete`, last; until then readers refuse the directory.
        """
        if self.root.is_dir():  # refused before the lock file is created
            refuse_foreign(self.root, self._foreign(), "an influence directory's")
        with DirLock(self.root, "--out"):
            remove_stale_temporaries(self.root)
            entries = [p.name for p in self.root.iterdir()]
            refuse_foreign(self.root, self._foreign(), "an influence directory's")
            old = [self.root / n for n in entries if n not in (LOCK_NAME, ENSEMBLE_DIR)]
            check_free_space(self.root, nbytes - sum(p.stat().st_size for p in old), "the influence matrices")
            self.meta.unlink(missing_ok=True)  # from here on the directory reads as incomplete
            for p in old:
                p.unlink(missing_ok=True)
            yield self

    def save(self, name: str, array) -> None:
        """Write ``name.npy`` atomically."""
        atomic_write(self.path(name), lambda f: np.save(f, np.asarray(array)))

    def staged(self, name: str):
        """A temporary path for a writer that creates ``name.npy`` itself; renamed into place on success."""
        return staged(self.path(name))

    def complete(self, meta: dict) -> None:
        """Write ``meta.json`` with the format mark: the directory is now complete."""
        atomic_write_json(self.meta, {"format": FORMAT, **meta})

    def read(self) -> InfluenceResult:
        """Open a complete directory; an incomplete, foreign or inconsistent one is a :class:`UserError`."""
        if not self.root.is_dir():
            raise UserError(
                f"{self.root} is not a directory; give an influence directory from robust-transfer influence"
            )
        if not self.meta.exists():
            raise UserError(
                f"{self.root} is not a complete influence directory (no {META}: the command that wrote it was "
                "interrupted or failed, or it is not one); run robust-transfer influence again"
            )
        meta = read_json(self.meta, "influence directory")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UserError(f"{self.meta} is not an influence directory's meta.json (no format {FORMAT!r})")
        arrays = {}
        extra = [
            f"influence_{kind}.s{st['index']}" for st in meta.get("settings", [])[1:] for kind in ("test", "train")
        ]
        for name in (*ARRAYS, *extra):
            if not self.path(name).is_file():
                raise UserError(
                    f"{self.path(name)} is missing; the influence directory is damaged: run influence again"
                )
            try:
                arrays[name] = np.load(self.path(name), mmap_mode="r")
            except (ValueError, OSError) as exc:
                raise UserError(f"{self.path(name)} is damaged ({exc}); run influence again") from None
        n_test, n_train = len(arrays["y_test"]), len(arrays["y_train"])
        expected = {
            name: (n_test if "test" in name else n_train, n_train) for name in arrays if name.startswith("influence")
        }
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise UserError(
                    f"{self.path(name)} has shape {arrays[name].shape}, not {shape} as its labels say; "
                    "the influence directory is damaged: run influence again"
                )
        return InfluenceResult(self.root, meta, arrays)
