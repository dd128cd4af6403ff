"""The named source models, and the one entry point that turns a name or path into a model.

The paper's ImageNet ResNet-50 sources (torchvision's natural V1 weights and the Madry lab's
L2 / Linf adversarially trained ones, now on the Hugging Face hub as
``madrylab/robust-imagenet-models``) download into the cache when the network allows. The
embedded sources ``mnist5k-natural`` and ``mnist5k-l2`` ship inside the package (regenerate them
with the commands in the README).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from transfer.checkpoints import ParsedCheckpoint, checkpoint_arch, load_checkpoint, model_from_checkpoint
from transfer.errors import UserError
from transfer.models import NormalizedModel, native_size

DEFAULT_CACHE = Path.home() / ".cache" / "robust-transfer" / "models"
_MADRY = "https://huggingface.co/madrylab/robust-imagenet-models/resolve/main/"


@dataclass(frozen=True)
class Source:
    """A named source model and what is published about it."""

    name: str
    arch: str
    constraint: str  # "none", "l2" or "linf"
    eps: float  # in [0, 1] pixel units (Linf 4/255 is 0.0157)
    eps_label: str
    accuracy: float  # published top-1 on the source task, in percent
    source_task: str
    filename: str
    url: str | None  # None: shipped inside the package
    sha256_prefix: str | None = None  # torchvision publishes the first 8 hex digits in the file name

    @property
    def embedded(self) -> bool:
        return self.url is None


def _madry(constraint: str, eps: float, eps_label: str, accuracy: float, file_eps: str, arch: str = "resnet50",
           file_arch: str | None = None, sha256_prefix: str | None = None) -> Source:  # fmt: skip
    """A Salman et al. (2020) ImageNet model from ``madrylab/robust-imagenet-models`` (``file_arch``: the hub's
    name of the architecture, e.g. ``mobilenet``); ``eps = 0`` is their naturally trained counterpart."""
    filename = f"{file_arch or arch}_{constraint}_eps{file_eps}.ckpt"
    name = f"{arch}-natural" if eps == 0 else f"{arch}-{constraint}-{eps_label.split('/')[0]}"
    return Source(name, arch, "none" if eps == 0 else constraint, eps, eps_label, accuracy, "imagenet", filename,
                  _MADRY + filename, sha256_prefix)  # fmt: skip


SOURCES: tuple[Source, ...] = (
    Source("resnet50-natural", "resnet50", "none", 0.0, "0", 76.13, "imagenet", "resnet50-0676ba61.pth",
           "https://download.pytorch.org/models/resnet50-0676ba61.pth", sha256_prefix="0676ba61"),
    _madry("l2", 0.05, "0.05", 75.59, "0.05"),
    _madry("l2", 0.25, "0.25", 74.14, "0.25"),
    _madry("l2", 1.0, "1", 70.43, "1"),
    _madry("l2", 3.0, "3", 62.83, "3"),
    _madry("linf", 4 / 255, "4/255", 63.86, "4.0"),
    _madry("linf", 8 / 255, "8/255", 54.53, "8.0"),
    # other architectures from the same hub (its README's accuracy tables): natural (eps 0) and L2 eps 3
    _madry("l2", 0.0, "0", 69.79, "0", arch="resnet18"),
    _madry("l2", 3.0, "3", 53.12, "3", arch="resnet18"),
    _madry("l2", 0.0, "0", 76.97, "0", arch="wide_resnet50_2"),
    _madry("l2", 3.0, "3", 66.90, "3", arch="wide_resnet50_2"),
    _madry("l2", 0.0, "0", 65.26, "0", arch="mobilenet_v2", file_arch="mobilenet", sha256_prefix="c0bee2ca"),
    _madry("l2", 3.0, "3", 50.40, "3", arch="mobilenet_v2", file_arch="mobilenet"),
    Source("mnist5k-natural", "small_resnet", "none", 0.0, "0", float("nan"), "mnist5k", "mnist5k-natural.pt", None),
    Source("mnist5k-l2", "small_resnet", "l2", 1.0, "1", float("nan"), "mnist5k", "mnist5k-l2.pt", None),
)  # fmt: skip


def source_names() -> list[str]:
    return [s.name for s in SOURCES]


def get_source(name: str) -> Source:
    for s in SOURCES:
        if s.name == name:
            return s
    raise UserError(f"unknown source {name!r}; choose one of: {', '.join(source_names())}, or give a checkpoint path")


def source_path(source: Source, cache_dir: Path | str | None = None) -> Path:
    """Where the file of ``source`` lives (inside the package, or in the cache)."""
    if source.embedded:
        return Path(str(resources.files("transfer") / "weights" / source.filename))
    return Path(cache_dir or DEFAULT_CACHE) / source.filename


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_source_file(source: Source, path: Path) -> ParsedCheckpoint:
    """Check the published hash prefix (when there is one) and that the file is the right network."""
    if source.sha256_prefix and not _sha256(path).startswith(source.sha256_prefix):
        raise UserError(
            f"{path} does not match the published SHA-256 prefix {source.sha256_prefix}; delete it and retry"
        )
    parsed = load_checkpoint(path)
    model_from_checkpoint(parsed, source.arch)  # raises if the weights do not fit the architecture
    return parsed


def download_source(source: Source, cache_dir: Path | str | None = None) -> Path:
    """Download ``source`` into the cache, verify it, and move it into place atomically."""
    import torch.hub

    dest = source_path(source, cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        torch.hub.download_url_to_file(source.url, str(tmp), progress=True)
    except Exception as exc:  # URLError, HTTPError, socket errors...
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"could not download source {source.name!r} from {source.url} ({type(exc).__name__}: {exc}). "
            f"Without a network, fetch that file elsewhere and place it at {dest}"
        ) from None
    try:
        verify_source_file(source, tmp)
    except UserError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return dest


@dataclass
class LoadedSource:
    """A source model and the facts needed to use it."""

    model: NormalizedModel
    arch: str
    input_size: int
    name: str
    meta: dict


def load_source(
    spec: str | Path,
    arch: str | None = None,
    cache_dir: Path | str | None = None,
    download: bool = True,
) -> LoadedSource:
    """The one loader: a zoo name, a run directory (its ``model.pt``), or a checkpoint path.

    Zoo names missing from the cache are downloaded when ``download`` is true; the error without
    a network names the local path to put the file at.
    """
    spec_str = str(spec)
    if spec_str in source_names():
        source = get_source(spec_str)
        path = source_path(source, cache_dir)
        if not path.is_file():
            if source.embedded:
                raise UserError(
                    f"embedded source {source.name!r} is missing from the package ({path}); reinstall robust-transfer"
                )
            if not download:
                raise UserError(f"source {source.name!r} is not in the cache; download {source.url} to {path}")
            path = download_source(source, cache_dir)
        arch = arch or source.arch
    else:
        path = Path(spec_str)
        if path.is_dir():
            if not (path / "model.pt").is_file() and (path / "config.json").exists():
                raise UserError(f"{path} is a run that has not finished (no model.pt yet); continue it with --resume")
            if not (path / "model.pt").is_file():
                raise UserError(
                    f"{path} is a directory without model.pt, not a run directory; "
                    "give a finished run directory, a checkpoint file or a source name"
                )
            path = path / "model.pt"
        if not path.exists():
            raise UserError(
                f"{spec_str!r} is neither a source name ({', '.join(source_names())}) nor an existing file or run directory"
            )
    parsed = load_checkpoint(path)
    arch = checkpoint_arch(parsed, arch)
    return LoadedSource(
        model_from_checkpoint(parsed, arch), arch, parsed.input_size or native_size(arch), spec_str, parsed.meta
    )
