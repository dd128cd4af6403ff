import dataclasses

import pytest
import torch

from transfer.errors import UserError
from transfer.models import build_model
from transfer.zoo import SOURCES, Source, download_source, get_source, load_source, source_path


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


@pytest.mark.parametrize("name,arch,blocks", [("resnet18-l2-3", "resnet18", 8), ("mobilenet_v2-natural", "mobilenet_v2", 18)])
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
