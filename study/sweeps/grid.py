"""Sweep grids: a TOML file that expands to one fine-tuning run per (source, target, blocks, size, seed).

A grid names the axes and, per subset size, how many of the paper's seeds
``S_k = 20000000 + 100000 i`` to run; every other fine-tune setting goes under ``[finetune]``::

    sources = ["mnist5k-natural", "mnist5k-l2"]
    targets = ["digits"]
    blocks = [0, 1]

    [seeds]          # subset size (or "all") -> number of seeds
    100 = 3
    all = 1

    [finetune]       # any FinetuneConfig field but source, target, blocks, subset and seed
    epochs = 20
    augment = "none"

Every run's settings are validated (by :class:`~transfer.finetune.FinetuneConfig`) when the grid
is read, and an unknown key anywhere is a one-line error naming the allowed ones; before a sweep
starts, :func:`check_runnable` makes the checks that need the sources and data (the same as
``finetune``'s). Runs are counted without being expanded, and a grid of more than :data:`MAX_RUNS`
runs is refused with its count.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from transfer.errors import UserError
from transfer.finetune import FinetuneConfig, check_feasible, source_block_count, training_split_size
from transfer.runtime import offered_fields
from transfer.subsets import paper_seeds
from transfer.zoo import source_names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

AXES = ("sources", "targets", "blocks", "seeds")
TOP_LEVEL = (*AXES, "name", "finetune")
PER_RUN = ("source", "target", "blocks", "subset", "seed")  # set by the axes, not by [finetune]
SETTABLE = tuple(f.name for f in offered_fields(FinetuneConfig) if f.name not in PER_RUN)
_TEXT_FIELDS = {f.name for f in fields(FinetuneConfig) if f.type in ("str", "str | None")}
# the paper's grid is 12,576 runs; a grid far beyond it is a typo (a seed count of 100000000), refused with its count
MAX_RUNS = 200_000


def _as_declared(settings: dict) -> dict:
    """TOML's ``epochs = 20`` as the ``"20"`` the CLI would record, so a run's settings do not depend on where they came from."""
    return {k: str(v) if k in _TEXT_FIELDS and v is not None else v for k, v in settings.items()}


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its settings and the key that names it in the ledger and on disk."""

    key: str
    settings: dict
    indices: tuple[int, ...] | None = None  # train on exactly these training images (a retraining on a subset)

    def config(self) -> FinetuneConfig:
        return FinetuneConfig(**self.settings)

    def run_dir(self, root: Path | str) -> Path:
        return Path(root) / "runs" / self.key


@dataclass(frozen=True)
class Grid:
    """A parsed grid: its name, axes, fine-tune settings and the text it came from."""

    name: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    blocks: tuple[str, ...]
    seeds: dict[str, int]  # subset size ("100", "all") -> number of paper seeds
    finetune: dict
    text: str

    @property
    def digest(self) -> str:
        """What identifies the grid's runs: the axes and settings, not the file's comments or layout."""
        canon = {k: v for k, v in asdict(self).items() if k not in ("text", "name")}
        return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def count(self) -> int:
        """Number of runs, counted without expanding the grid."""
        return len(self.sources) * len(self.targets) * len(self.blocks) * sum(self.seeds.values())

    def source_dirs(self) -> dict[str, str]:
        """Each source's directory name in run keys: see :func:`source_dirs`."""
        return source_dirs(self.sources)

    def combinations(self) -> Iterator[tuple[RunSpec, int]]:
        """Each (target, size, blocks, source) once, as its first seed's run, with its number of seeds.

        Seeds change neither what is validated nor what a run costs, so checks and plans walk
        these instead of every run (a grid may hold many seeds).
        """
        first, dirs = paper_seeds(1)[0], self.source_dirs()
        for target in self.targets:
            for size, k in self.seeds.items():
                for blocks in self.blocks:
                    for source in self.sources:
                        yield self._spec(dirs, target, size, blocks, source, first), k

    def _spec(self, dirs: dict[str, str], target: str, size: str, blocks: str, source: str, seed: int) -> RunSpec:
        settings = {**self.finetune, "source": source, "target": target, "blocks": blocks, "subset": size,
                    "seed": seed}  # fmt: skip
        return RunSpec(f"{target}/{dirs[source]}/b{blocks}/n{size}/s{seed}", _as_declared(settings))

    def runs(self) -> list[RunSpec]:
        """Every run, ordered target, size, blocks, seed, source (so a partial sweep covers whole comparisons)."""
        specs, dirs = [], self.source_dirs()
        for target in self.targets:
            for size, k in self.seeds.items():
                for blocks in self.blocks:
                    for seed in paper_seeds(k):
                        specs += [self._spec(dirs, target, size, blocks, source, seed) for source in self.sources]
        keys = [s.key for s in specs]
        if len(set(keys)) != len(keys):  # source_dirs makes them unique; a merge of two runs must never happen
            raise UserError(f"grid {self.name!r}: two runs share a key; rename a source")
        return specs


def _slug(source: str) -> str:
    """A source name, or a path's last part, safe as a directory name."""
    name = Path(source).name if ("/" in source or "\\" in source) else source
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "source"


def source_dirs(sources: Iterable[str]) -> dict[str, str]:
    """``source -> directory name`` for run keys and influence directories, distinct per distinct source.

    A zoo name is its own name; a path gives its last part (``model.pt``). Sources whose names
    would collide (``/a/model.pt``, ``/b/model.pt``) get a short hash of the source as written
    appended, so two sources never share a run directory.
    """
    sources = list(dict.fromkeys(sources))
    slugs = {s: _slug(s) for s in sources}
    clash = Counter(slugs.values())
    return {s: f"{slug}-{hashlib.sha256(s.encode()).hexdigest()[:8]}" if clash[slug] > 1 else slug
            for s, slug in slugs.items()}  # fmt: skip


def _list(raw: dict, key: str, path: Path, kinds: tuple[type, ...] = (str,)) -> tuple[str, ...]:
    """A non-empty list of distinct ``kinds`` values, as strings."""
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise UserError(f"{path}: '{key}' must be a non-empty list")
    names = " or ".join({str: "strings", int: "integers"}[k] for k in kinds)
    for item in value:
        if isinstance(item, bool) or not isinstance(item, kinds) or (isinstance(item, str) and not item.strip()):
            raise UserError(f"{path}: '{key}' must list {names}; got {item!r}")
    items = tuple(str(v) for v in value)
    if len(set(items)) != len(items):
        raise UserError(f"{path}: '{key}' lists a value twice: {list(items)}")
    return items


def parse_grid(text: str, path: Path | str = "<grid>") -> Grid:
    """Parse and validate a grid's TOML text; every run's settings are checked here."""
    path = Path(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)}; a grid has {', '.join(TOP_LEVEL)}")
    missing = [k for k in AXES if k not in raw]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}; a grid needs {', '.join(AXES)}")
    finetune = raw.get("finetune", {})
    if not isinstance(finetune, dict):
        raise UserError(f"{path}: [finetune] must be a table of settings")
    bad = sorted(set(finetune) - set(SETTABLE))
    if bad:
        axis = [k for k in bad if k in PER_RUN]
        hint = f" ({', '.join(axis)} come from the grid's axes)" if axis else ""
        raise UserError(f"{path}: unknown [finetune] key(s) {', '.join(bad)}{hint}; allowed: {', '.join(SETTABLE)}")
    seeds = raw["seeds"]
    if not isinstance(seeds, dict) or not seeds:
        raise UserError(f'{path}: [seeds] must map subset sizes (or "all") to numbers of seeds, e.g. 100 = 20')
    for size, k in seeds.items():
        if not (size == "all" or size.isdigit()) or not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise UserError(f'{path}: [seeds] {size} = {k!r}: sizes are integers or "all", seed counts integers >= 1')
    grid = Grid(
        name=str(raw.get("name", path.stem)),
        sources=_list(raw, "sources", path),
        targets=_list(raw, "targets", path),
        blocks=_list(raw, "blocks", path, (int, str)),
        seeds={str(k): int(v) for k, v in seeds.items()},
        finetune=dict(finetune),
        text=text,
    )
    if grid.count > MAX_RUNS:
        raise UserError(
            f"{path}: the grid has {grid.count:,} runs, more than the {MAX_RUNS:,} a sweep takes (the paper's grid is "
            "12,576); check [seeds]"
        )
    for spec, _ in grid.combinations():
        try:
            spec.config()
        except UserError as exc:
            raise UserError(f"{path}: run {spec.key}: {exc}") from None
    return grid


def check_runnable(grid: Grid, path: Path | str = "<grid>") -> None:
    """What each run's ``finetune`` would refuse once it reads its source and data, checked for every
    run before a sweep starts: a missing or unreadable source, the same file listed twice, more
    blocks than a source has, a subset that cannot cover the classes or exceeds the target's data.

    Zoo sources are not downloaded here (their architecture gives their blocks); checkpoint paths
    and run directories are read.
    """
    blocks_of: dict[tuple, int] = {}
    available: dict[tuple, int | None] = {}
    files: dict[Path, str] = {}
    for spec, _ in grid.combinations():
        cfg = spec.config()
        where = (cfg.source, cfg.arch, cfg.cache_dir)
        try:
            if where not in blocks_of:
                blocks_of[where] = source_block_count(*where)
                if cfg.source not in source_names():
                    real = Path(cfg.source).resolve()
                    if files.setdefault(real, cfg.source) != cfg.source:
                        raise UserError(f"sources {files[real]!r} and {cfg.source!r} are the same file; list it once")
            data = (cfg.target, cfg.data_root)
            if data not in available:
                available[data] = training_split_size(*data)
            check_feasible(cfg, blocks_of[where], available[data])
        except UserError as exc:
            raise UserError(f"{path}: run {spec.key}: {exc}") from None


def read_grid(path: Path | str) -> Grid:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"grid file {path} not found") from None
    except IsADirectoryError:
        raise UserError(f"grid file {path} is a directory; give a TOML file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"grid file {path} is not UTF-8 text (byte {exc.start}); a grid is a TOML file") from None
    return parse_grid(text, path)
