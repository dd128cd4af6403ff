import dataclasses

import pytest
import torch

from transfer.errors import UserError
from transfer.models import build_model
from transfer.zoo import (
    FAMILIES,
    SOURCES,
    Source,
    download_source,
    file_sha256,
    get_source,
    load_source,
    recorded_hashes,
    source_path,
)


def test_zoo_holds_the_papers_imagenet_sources_with_published_accuracies():
    names = {s.name for s in SOURCES}
    assert {"resnet50-natural", "resnet50-l2-3", "resnet50-linf-4", "resnet50-linf-8"} <= names
    assert get_source("resnet50-natural").accuracy == pytest.approx(76.13)
    assert get_source("resnet50-l2-3").url.endswith(
        "madrylab/robust-imagenet-models/resolve/main/resnet50_l2_eps3.ckpt"
    )


@pytest.mark.parametrize("name", ["mnist5k-natural", "mnist5k-l2"])
def test_embedded_sources_ship_in_the_package_and_are_small(name):
    path = source_path(get_source(name))
    assert path.is_file() and path.stat().st_size < 3_000_000
    loaded = load_source(name)
    assert loaded.arch == "small_resnet" and loaded.input_size == 28


def test_unknown_source_lists_valid_names():
    with pytest.raises(UserError, match="resnet50-l2-3"):
        get_source("resnet51")


def test_missing_source_without_download_names_the_local_path(tmp_path):
    with pytest.raises(UserError) as err:
        load_source("resnet50-l2-3", cache_dir=tmp_path, download=False)
    assert str(tmp_path / "resnet50_l2_eps3.ckpt") in str(err.value)


def test_download_verifies_and_places_the_file_and_failure_names_the_path(tmp_path):
    # a file:// URL exercises the real download path without a network
    remote = tmp_path / "remote" / "w.pth"
    remote.parent.mkdir()
    torch.save(build_model("resnet18", 1000).model.state_dict(), remote)
    src = Source("test-r18", "resnet18", "none", 0.0, "0", 0.0, "imagenet", "w.pth", remote.as_uri())
    dest = download_source(src, tmp_path / "cache")
    assert dest == tmp_path / "cache" / "w.pth" and dest.is_file()
    bad_hash = dataclasses.replace(src, filename="w2.pth", sha256_prefix="00000000")
    with pytest.raises(UserError, match="SHA-256"):
        download_source(bad_hash, tmp_path / "cache")
    assert not (tmp_path / "cache" / "w2.pth").exists()
    gone = dataclasses.replace(src, filename="w3.pth", url=(tmp_path / "nowhere.pth").as_uri())
    with pytest.raises(UserError, match=str(tmp_path / "cache" / "w3.pth")):
        download_source(gone, tmp_path / "cache")


@pytest.mark.parametrize("name,arch,blocks", [("resnet18-l2-3", "resnet18", 8), ("mobilenet_v2-l2-3", "mobilenet_v2", 18)])
def test_hub_sources_of_other_architectures_load_from_their_robustness_files(name, arch, blocks, tmp_path):
    from transfer.freezing import residual_blocks

    source = get_source(name)
    assert source.arch == arch and source.url.startswith("https://huggingface.co/madrylab/robust-imagenet-models/")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = build_model(arch, 1000).model
    sd = {f"module.model.{k}": v for k, v in net.state_dict().items()}
    sd |= {f"module.attacker.model.{k}": v for k, v in net.state_dict().items()}
    sd |= {"module.normalizer.new_mean": torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
           "module.normalizer.new_std": torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)}  # fmt: skip
    torch.save({"model": sd, "epoch": 90}, tmp_path / source.filename)
    loaded = load_source(name, cache_dir=tmp_path, download=False)
    assert loaded.arch == arch and len(residual_blocks(loaded.model)) == blocks
    assert torch.equal(next(iter(loaded.model.model.state_dict().values())), next(iter(net.state_dict().values())))


def test_the_zoo_lists_a_natural_and_a_robust_source_per_hub_architecture():
    for arch, natural, robust in (("resnet18", 69.79, 53.12), ("wide_resnet50_2", 76.97, 66.90),
                                  ("mobilenet_v2", 65.26, 50.40)):  # fmt: skip
        assert get_source(f"{arch}-natural").constraint == "none" and get_source(f"{arch}-natural").accuracy == natural
        assert get_source(f"{arch}-l2-3").eps == 3.0 and get_source(f"{arch}-l2-3").accuracy == robust


def test_the_papers_robust_sources_are_the_robustness_librarys_beside_salmans():
    for name, file, acc in (("resnet50-l2-3-engstrom", "imagenet_l2_3_0.pt", 57.90),
                            ("resnet50-linf-4-engstrom", "imagenet_linf_4.pt", 62.42),
                            ("resnet50-linf-8-engstrom", "imagenet_linf_8.pt", 47.91)):  # fmt: skip
        s = get_source(name)
        assert s.family == "engstrom2019" and s.filename == file and s.accuracy == acc and s.arch == "resnet50"
        assert s.url.startswith("https://www.dropbox.com/s/") and s.url.endswith(f"/{file}?dl=1") and s.hub is None
    assert get_source("resnet50-linf-4-engstrom").eps == pytest.approx(4 / 255)
    salman = get_source("resnet50-l2-3")
    assert salman.family == "salman2020" and salman.hub == "madrylab/robust-imagenet-models" and salman.accuracy == 62.83
    assert salman.sha256 == "380b14e6f9750bffa1447cf7017f65da4dc5ce71a3dd112f107515dcf7b14d9d"
    assert {s.family for s in SOURCES} == set(FAMILIES)


def _robustness_file(path, arch="resnet18", seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_model(arch, 1000).model
    sd = {f"module.model.{k}": v for k, v in net.state_dict().items()}
    sd |= {"module.normalizer.new_mean": torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1),
           "module.normalizer.new_std": torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)}  # fmt: skip
    torch.save({"model": sd, "epoch": 90}, path)
    return path


def test_files_are_checked_against_the_published_hash_or_the_first_downloads(tmp_path):
    # a published full hash: another file under that name is refused, both hashes named
    pinned = dataclasses.replace(get_source("resnet18-l2-3"), name="r18-pinned", filename="p.ckpt", sha256="ab" * 32)
    (tmp_path / "cache").mkdir()
    _robustness_file(tmp_path / "cache" / "p.ckpt")
    digest = file_sha256(tmp_path / "cache" / "p.ckpt")
    with pytest.raises(UserError, match=f"its SHA-256 is {digest}, but {'ab' * 32} was published"):
        load_source_of(pinned, tmp_path / "cache")
    # no published hash: the first use records it, a later different file is refused
    remote = _robustness_file(tmp_path / "remote.ckpt")
    src = Source("r18-tofu", "resnet18", "l2", 3.0, "3", 0.0, "imagenet", "t.ckpt", remote.as_uri(), family="salman2020")
    dest = download_source(src, tmp_path / "cache")
    assert recorded_hashes(tmp_path / "cache") == {"t.ckpt": file_sha256(remote)}
    assert load_source_of(src, tmp_path / "cache").sha256 == file_sha256(remote)
    _robustness_file(dest, seed=1)  # the cached copy replaced by another network's weights
    with pytest.raises(UserError, match=f"but {file_sha256(remote)} was recorded at its first download"):
        load_source_of(src, tmp_path / "cache")
    dest.unlink()
    _robustness_file(remote, seed=1)  # the server now serves another file: refused, nothing left in place
    with pytest.raises(UserError, match="recorded at its first download"):
        download_source(src, tmp_path / "cache")
    assert not dest.exists()


def load_source_of(source, cache):
    """load_source of a Source that is not in the zoo's table (the tests' own)."""
    import transfer.zoo as zoo

    old = zoo.SOURCES
    zoo.SOURCES = (*old, source)
    try:
        return load_source(source.name, cache_dir=cache)
    finally:
        zoo.SOURCES = old


def test_hub_files_come_through_huggingface_hub_and_offline_names_the_path(tmp_path, monkeypatch):
    import shutil

    import huggingface_hub

    remote = _robustness_file(tmp_path / "hub-copy.ckpt")
    calls = []

    def fake_download(repo_id, filename, local_dir):
        calls.append((repo_id, filename))
        shutil.copy(remote, f"{local_dir}/{filename}")
        return f"{local_dir}/{filename}"

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    src = dataclasses.replace(get_source("resnet18-l2-3"), name="r18-hub")
    assert download_source(src, tmp_path / "cache") == tmp_path / "cache" / src.filename
    assert calls == [("madrylab/robust-imagenet-models", "resnet18_l2_eps3.ckpt")]

    def offline(repo_id, filename, local_dir):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(UserError, match=f"place it at {tmp_path / 'c2' / src.filename}"):
        download_source(src, tmp_path / "c2")


@pytest.mark.parametrize("entry", [{"source": "r18-tofu"}, {"sha256": None}, {"sha256": ""}, None, "", "abc",
                                   {"sha256": "AB" * 32}])  # fmt: skip
def test_a_damaged_trust_record_is_refused_not_healed(tmp_path, entry):
    import json

    from cli.main import main

    remote = _robustness_file(tmp_path / "remote.ckpt")
    src = Source("r18-tofu", "resnet18", "l2", 3.0, "3", 0.0, "imagenet", "t.ckpt", remote.as_uri(), family="salman2020")
    cache = tmp_path / "cache"
    dest = download_source(src, cache)
    _robustness_file(dest, seed=1)  # the cached copy tampered with ...
    record = cache / "hashes.json"
    record.write_text(json.dumps({"t.ckpt": entry}))  # ... and its record damaged
    before = record.read_text()
    with pytest.raises(UserError, match=r"hashes.json is damaged .* delete that entry"):
        load_source_of(src, cache)
    assert record.read_text() == before  # not overwritten with the tampered file's hash
    with pytest.raises(UserError, match="damaged"):
        recorded_hashes(cache)
    assert main(["sources", "--cache-dir", str(cache)]) == 2  # one line, no traceback


def test_sources_says_what_trust_on_first_use_is_worth(capsys):
    from cli.main import main

    assert main(["sources"]) == 0
    assert "anyone who can edit it can edit them" in capsys.readouterr().out


@pytest.mark.parametrize("missing", ["state_dict", "mean", "arch"])
def test_a_checkpoint_that_declares_our_format_but_lacks_a_part_is_refused(tmp_path, missing):
    from transfer.checkpoints import FORMAT, load_checkpoint

    net = build_model("small_resnet", 10)
    ckpt = {"format": FORMAT, "arch": "small_resnet", "num_classes": 10, "mean": [0.5], "std": [0.5],
            "input_size": 28, "state_dict": net.state_dict(), "meta": {}}  # fmt: skip
    del ckpt[missing]
    torch.save(ckpt, tmp_path / "c.pt")
    with pytest.raises(UserError, match=f"lacks {missing}"):
        load_checkpoint(tmp_path / "c.pt")
