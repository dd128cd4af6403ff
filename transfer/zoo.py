"""The named source models, and the one entry point that turns a name or path into a model.

Two families of robust ImageNet ResNet-50s exist, and they are different models:

* ``engstrom2019``: the robustness library's ResNet-50s (Engstrom et al. 2019; L2 eps 3, Linf 4/255 and
  8/255, linked from that library's README on Dropbox). **The paper's sources**: Utrera et al.'s code
  loads ``imagenet_l2_3_0.pt``, ``imagenet_linf_4.pt`` and ``imagenet_linf_8.pt``. Named
  ``resnet50-l2-3-engstrom``, ``resnet50-linf-4-engstrom``, ``resnet50-linf-8-engstrom``.
* ``salman2020``: Salman et al.'s later models (``madrylab/robust-imagenet-models`` on the Hugging Face
  hub, downloaded with ``huggingface_hub``: its cache, resume and offline mode), named
  ``resnet50-l2-3``, ``resnet50-linf-4``, ... and the other architectures of that hub.

The natural ResNet-50 of both is torchvision's V1 weights (``resnet50-natural``). Every downloadable
file is checked by SHA-256: against its full published hash where one is known, else against the hash
recorded at its first download (``hashes.json`` in the cache; trust on first use), after the published
prefix where there is one; a file that does not match is refused with both hashes. The hash of the file
a run used is recorded in its ``config.json`` (:attr:`LoadedSource.sha256`). The embedded sources
``mnist5k-natural`` and ``mnist5k-l2`` ship inside the package (regenerate them with the commands in the
README).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from transfer.checkpoints import checkpoint_arch, load_checkpoint, model_from_checkpoint
from transfer.errors import UserError
from transfer.files import atomic_write_json, read_json
from transfer.models import NormalizedModel, native_size

DEFAULT_CACHE = Path.home() / ".cache" / "robust-transfer" / "models"
_MADRY_HUB = "madrylab/robust-imagenet-models"
_MADRY = f"https://huggingface.co/{_MADRY_HUB}/resolve/main/"
HASHES_FILE = "hashes.json"  # in the cache: the SHA-256 of each unpinned file at its first download
FAMILIES = {
    "torchvision": "torchvision's ResNet-50 V1 weights: the natural source of the paper and of both robust families",
    "engstrom2019": "robustness library (Engstrom et al. 2019), Dropbox: the paper's robust sources",
    "salman2020": "Salman et al. 2020, madrylab/robust-imagenet-models (Hugging Face hub): not the paper's files",
    "embedded": "shipped inside this package (small ResNets on 5,000 MNIST digits)",
}


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
    sha256: str | None = None  # the full published SHA-256, where one is known
    hub: str | None = None  # a Hugging Face hub repository holding ``filename`` (downloaded with huggingface_hub)
    family: str = "embedded"  # a key of FAMILIES

    @property
    def embedded(self) -> bool:
        return self.url is None


def _madry(constraint: str, eps: float, eps_label: str, accuracy: float, file_eps: str, arch: str = "resnet50",
           file_arch: str | None = None, sha256_prefix: str | None = None, sha256: str | None = None) -> Source:  # fmt: skip
    """A Salman et al. (2020) ImageNet model from ``madrylab/robust-imagenet-models`` (``file_arch``: the hub's
    name of the architecture, e.g. ``mobilenet``); ``eps = 0`` is their naturally trained counterpart."""
    filename = f"{file_arch or arch}_{constraint}_eps{file_eps}.ckpt"
    name = f"{arch}-natural" if eps == 0 else f"{arch}-{constraint}-{eps_label.split('/')[0]}"
    return Source(name, arch, "none" if eps == 0 else constraint, eps, eps_label, accuracy, "imagenet", filename,
                  _MADRY + filename, sha256_prefix, sha256, _MADRY_HUB, "salman2020")  # fmt: skip


def _engstrom(constraint: str, eps: float, eps_label: str, accuracy: float, filename: str, dropbox: str) -> Source:
    """A robustness-library ResNet-50 (Engstrom et al. 2019), the file the paper's code loads; accuracies are the
    clean ImageNet top-1 of that library's README."""
    name = f"resnet50-{constraint}-{eps_label.split('/')[0]}-engstrom"
    return Source(name, "resnet50", constraint, eps, eps_label, accuracy, "imagenet", filename,
                  f"https://www.dropbox.com/s/{dropbox}/{filename}?dl=1", family="engstrom2019")  # fmt: skip


SOURCES: tuple[Source, ...] = (
    Source("resnet50-natural", "resnet50", "none", 0.0, "0", 76.13, "imagenet", "resnet50-0676ba61.pth",
           "https://download.pytorch.org/models/resnet50-0676ba61.pth", sha256_prefix="0676ba61", family="torchvision"),
    # the paper's robust sources (its code's tools/constants.py): the robustness library's README table
    _engstrom("l2", 3.0, "3", 57.90, "imagenet_l2_3_0.pt", "knf4uimlqsi1yz8"),
    _engstrom("linf", 4 / 255, "4/255", 62.42, "imagenet_linf_4.pt", "axfuary2w1cnyrg"),
    _engstrom("linf", 8 / 255, "8/255", 47.91, "imagenet_linf_8.pt", "yxn15a9zklz3s8q"),
    # Salman et al.'s (2020): other files, other accuracies
    _madry("l2", 0.05, "0.05", 75.59, "0.05"),
    _madry("l2", 0.25, "0.25", 74.14, "0.25"),
    _madry("l2", 1.0, "1", 70.43, "1"),
    _madry("l2", 3.0, "3", 62.83, "3", sha256="380b14e6f9750bffa1447cf7017f65da4dc5ce71a3dd112f107515dcf7b14d9d"),
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


def file_sha256(path: Path | str) -> str:
    """The SHA-256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_SHA256 = re.compile(r"[0-9a-f]{64}")
TOFU_WARNING = ("records made on first use (hashes.json in the cache) are only as trustworthy as the cache: anyone who "
                "can edit it can edit them")


def recorded_hashes(cache_dir: Path | str | None = None) -> dict[str, str]:
    """The hashes recorded at first download (file name -> SHA-256) in the cache's ``hashes.json``.

    A damaged record (not a JSON object, an entry without a 64-digit hex ``sha256``, a null or empty one) is
    refused, never read as "nothing recorded": that would let a tampered cached file be trusted anew and the record
    be overwritten with its hash. The message says how to repair it.
    """
    path = Path(cache_dir or DEFAULT_CACHE) / HASHES_FILE
    if not path.is_file():
        return {}
    data = read_json(path, "hash record")
    repair = (f"the hash record {path} is damaged ({{}}); it is what later downloads are checked against, so it is not "
              f"repaired here: delete that entry (or the whole file) together with the cached file it names under "
              f"{path.parent}, then download the file again to record its hash anew")  # fmt: skip
    if not isinstance(data, dict):
        raise UserError(repair.format("not a JSON object of file name -> record"))
    out = {}
    for name, entry in data.items():
        digest = entry.get("sha256") if isinstance(entry, dict) else entry
        if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise UserError(repair.format(f"the entry of {name!r} has no 64-digit hex sha256: {entry!r}"))
        out[name] = digest
    return out


def expected_sha256(source: Source, cache_dir: Path | str | None = None) -> tuple[str | None, str]:
    """``(hash, how it is known)``: the published full hash, else the one recorded at first download, else None."""
    if source.sha256:
        return source.sha256, "published"
    recorded = recorded_hashes(cache_dir).get(source.filename)
    return (recorded, "recorded at its first download") if recorded else (None, "")


def hash_status(source: Source, cache_dir: Path | str | None = None) -> str:
    """How ``source``'s file is checked, in words: its published hash, the one recorded at first download, or
    what will happen at the first download."""
    if source.embedded:
        return "shipped in the package"
    expected, how = expected_sha256(source, cache_dir)
    if expected:
        return f"{how}: {expected}"
    prefix = f"published prefix {source.sha256_prefix}; " if source.sha256_prefix else ""
    return f"{prefix}no full hash published: recorded at the first download, later copies checked against it"


def verify_source_file(source: Source, path: Path, cache_dir: Path | str | None = None,
                       arch: str | None = None) -> LoadedSource:  # fmt: skip
    """Check the file's SHA-256 (published, else recorded at first download, after the published prefix), build
    the network from it (``arch``, default the source's: raises if the weights do not fit), and record the hash
    when nothing was known; return the loaded model with its hash."""
    digest = file_sha256(path)
    if source.sha256_prefix and not digest.startswith(source.sha256_prefix):
        raise UserError(f"{path} does not match the published SHA-256 prefix {source.sha256_prefix} of {source.name} "
                        f"(its SHA-256 is {digest}); delete it and retry")  # fmt: skip
    expected, how = expected_sha256(source, cache_dir)
    if expected is not None and digest != expected:
        raise UserError(f"{path} is not the file of {source.name}: its SHA-256 is {digest}, but {expected} was {how}; "
                        "delete it and download it again")  # fmt: skip
    parsed = load_checkpoint(path)
    arch = checkpoint_arch(parsed, arch or source.arch)
    model = model_from_checkpoint(parsed, arch)
    if expected is None and not source.embedded:
        _record_hash(source, digest, cache_dir)
    return LoadedSource(model, arch, parsed.input_size or native_size(arch), source.name, parsed.meta, digest)


def _record_hash(source: Source, digest: str, cache_dir: Path | str | None) -> None:
    """Trust on first use: later copies of ``source``'s file are checked against ``digest``."""
    path = Path(cache_dir or DEFAULT_CACHE) / HASHES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = read_json(path, "hash record") if path.is_file() else {}
    data[source.filename] = {"sha256": digest, "source": source.name, "url": source.url,
                             "recorded": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    atomic_write_json(path, data)


def _fetch(source: Source, dest: Path) -> Path:
    """Download ``source``'s file to ``dest``'s directory: from its hub repository with huggingface_hub (its
    resume and offline mode), else from its URL into ``dest.part``; return where the file now is."""
    if source.hub:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=source.hub, filename=source.filename, local_dir=str(dest.parent)))
    import torch.hub

    tmp = dest.with_name(dest.name + ".part")
    torch.hub.download_url_to_file(source.url, str(tmp), progress=True)
    return tmp


def download_source(source: Source, cache_dir: Path | str | None = None) -> Path:
    """Download ``source`` into the cache, verify it, and move it into place atomically."""
    return _download_verified(source, cache_dir)[0]


def _download_verified(source: Source, cache_dir: Path | str | None, arch: str | None = None) -> tuple[Path, LoadedSource]:
    """:func:`download_source`, returning also the network its verification built (so it is not built again)."""
    dest = source_path(source, cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        got = _fetch(source, dest)
    except Exception as exc:  # URLError, HTTPError, socket errors, huggingface_hub's offline and HTTP errors...
        dest.with_name(dest.name + ".part").unlink(missing_ok=True)
        raise UserError(
            f"could not download source {source.name!r} from {source.url} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Without a network, fetch that file elsewhere and place "
            f"it at {dest}"
        ) from None
    try:
        loaded = verify_source_file(source, got, cache_dir, arch)
    except UserError:
        got.unlink(missing_ok=True)
        raise
    if got != dest:
        got.replace(dest)
    return dest, loaded


@dataclass
class LoadedSource:
    """A source model and the facts needed to use it."""

    model: NormalizedModel
    arch: str
    input_size: int
    name: str
    meta: dict
    sha256: str = ""  # of the file the model was read from


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
            return _download_verified(source, cache_dir, arch)[1]
        return verify_source_file(source, path, cache_dir, arch)
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
    return LoadedSource(model_from_checkpoint(parsed, arch), arch, parsed.input_size or native_size(arch), spec_str,
                        parsed.meta, file_sha256(path))  # fmt: skip
