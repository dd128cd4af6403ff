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
is read, and an unknown key anywhere is a one-line error naming the allowed ones.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from transfer.errors import UserError
from transfer.finetune import FinetuneConfig
from transfer.subsets import paper_seeds

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

AXES = ("sources", "targets", "blocks", "seeds")
TOP_LEVEL = (*AXES, "name", "finetune")
PER_RUN = ("source", "target", "blocks", "subset", "seed")  # set by the axes, not by [finetune]
SETTABLE = tuple(f.name for f in fields(FinetuneConfig) if f.name not in PER_RUN)
_TEXT_FIELDS = {f.name for f in fields(FinetuneConfig) if f.type in ("str", "str | None")}


def _as_declared(settings: dict) -> dict:
    """TOML's ``epochs = 20`` as the ``"20"`` the CLI would record, so a run's settings do not depend on where they came from."""
    return {k: str(v) if k in _TEXT_FIELDS and v is not None else v for k, v in settings.items()}


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its settings and the key that names it in the ledger and on disk."""

    key: str
    settings: dict

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

    def runs(self) -> list[RunSpec]:
        """Every run, ordered target, size, blocks, seed, source (so a partial sweep covers whole comparisons)."""
        specs = []
        for target in self.targets:
            for size, k in self.seeds.items():
                for blocks in self.blocks:
                    for seed in paper_seeds(k):
                        for source in self.sources:
                            settings = {**self.finetune, "source": source, "target": target, "blocks": blocks,
                                        "subset": size, "seed": seed}  # fmt: skip
                            key = f"{target}/{_slug(source)}/b{blocks}/n{size}/s{seed}"
                            specs.append(RunSpec(key, _as_declared(settings)))
        return specs


def _slug(source: str) -> str:
    """A source name, or a path's last part, safe as a directory name."""
    name = Path(source).name if ("/" in source or "\\" in source) else source
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "source"


def _list(raw: dict, key: str, path: Path) -> tuple[str, ...]:
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise UserError(f"{path}: '{key}' must be a non-empty list")
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
        blocks=_list(raw, "blocks", path),
        seeds={str(k): int(v) for k, v in seeds.items()},
        finetune=dict(finetune),
        text=text,
    )
    for spec in _one_per_combination(grid):
        try:
            spec.config()
        except UserError as exc:
            raise UserError(f"{path}: run {spec.key}: {exc}") from None
    return grid


def _one_per_combination(grid: Grid) -> list[RunSpec]:
    """One run per (source, target, blocks, size): seeds do not change what is validated."""
    return [r for r in grid.runs() if r.settings["seed"] == paper_seeds(1)[0]]


def read_grid(path: Path | str) -> Grid:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"grid file {path} not found") from None
    return parse_grid(text, path)
