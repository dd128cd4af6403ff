"""--precision, --channels-last and --augment-on: what auto resolves to, scoped flags, and runs that record them."""

import json

import pytest
import torch

from tests.conftest import Killed, kill_after
from transfer.datasets import stored_channels
from transfer.errors import UserError
from transfer.finetune import FinetuneConfig, finetune, prepare_run
from transfer.precision import (
    keep_recorded_speed,
    resolve_augment_on,
    resolve_channels_last,
    resolve_precision,
    tf32_allowed,
)
from transfer.runs import RunDir

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_is_tf32_on_cuda_fp32_on_cpus_channels_last_on_both_and_batched_augmentation_for_small_images():
    """Small: up to 224 x 224 values per image on a CPU (grey up to 224 px, colour up to 129 px)."""
    assert resolve_precision("auto", CUDA) == "tf32" and resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("tf32", CPU) == "fp32"  # a CPU has no TF32
    assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp32", CUDA) == "fp32"
    assert resolve_channels_last("auto", CUDA) and resolve_channels_last("auto", CPU)  # measured faster on both
    assert resolve_channels_last("on", CPU) and not resolve_channels_last("off", CUDA)
    assert resolve_augment_on("auto", CUDA) == "device" and resolve_augment_on("auto", CPU) == "loader"
    assert resolve_augment_on("auto", CPU, 28) == "device" and resolve_augment_on("auto", CPU, 224) == "loader"
    # batched kornia works on the stored channels, the loader on three: by values per image, as measured
    assert resolve_augment_on("auto", CPU, 224, channels=1) == "device"
    assert resolve_augment_on("auto", CPU, 288, channels=1) == "loader"
    assert resolve_augment_on("auto", CPU, 129, channels=3) == "device"
    assert resolve_augment_on("auto", CPU, 160, channels=3) == "loader"
    assert resolve_augment_on("loader", CPU, 28) == "loader" and resolve_augment_on("device", CPU, 224) == "device"
    with pytest.raises(UserError, match="--precision must be one of auto, fp32, tf32, bf16; got 'fp16'"):
        FinetuneConfig(source="mnist5k-l2", target="digits", precision="fp16")
    with pytest.raises(UserError, match="--augment-on must be one of"):
        FinetuneConfig(source="mnist5k-l2", target="digits", augment_on="gpu")


def test_tf32_flags_hold_for_the_block_and_are_restored():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with tf32_allowed(True):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    with tf32_allowed(False):
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def _cfg(**kw):
    base = dict(source="mnist5k-l2", target="digits", blocks="1", subset="100", epochs="2", eval_every="1",
                device="cpu")  # fmt: skip
    return FinetuneConfig(**(base | kw))


def test_bf16_channels_last_and_batched_augmentation_train_on_a_cpu_and_are_recorded(tmp_path):
    summary = finetune(_cfg(precision="bf16", channels_last="on", augment_on="device"), tmp_path / "r", progress=False)
    assert (summary["precision"], summary["channels_last"], summary["augment_on"]) == ("bf16", True, "device")
    settings = json.loads((tmp_path / "r" / "config.json").read_text())["settings"]
    assert (settings["precision"], settings["channels_last"], settings["augment_on"]) == ("bf16", "on", "device")
    assert 0.1 < summary["final_test_acc"] <= 1.0  # it learned (chance is 0.1)
    with pytest.raises(UserError, match="settings differ.*precision"):
        finetune(_cfg(precision="fp32", channels_last="on", augment_on="device"), tmp_path / "r", resume=True,
                 progress=False)  # fmt: skip
    auto = finetune(_cfg(), tmp_path / "a", progress=False)  # 28 px on a CPU: batched augmentation, NHWC
    assert (auto["precision"], auto["channels_last"], auto["augment_on"]) == ("fp32", True, "device")


def test_a_run_resolves_auto_augmentation_by_the_channels_its_target_stores():
    """digits are stored grey: at 224 px auto batches them on a CPU (one channel), at 288 it takes the loader."""
    assert prepare_run(_cfg(resolution=224)).augment_on == "device"
    assert prepare_run(_cfg(resolution=288)).augment_on == "loader"


def test_the_rule_reads_the_channels_from_the_stored_images_not_the_registration():
    """At 160 px grey images are augmented batched on a CPU and colour ones by the loader, whatever the dataset's
    registration declares."""
    from transfer.datasets import DATASETS, TensorImages, load_raw_splits, register_dataset

    def as_colour(root, download):
        return tuple(TensorImages(split.images.expand(-1, 3, -1, -1), split.targets)
                     for split in load_raw_splits("digits"))  # fmt: skip

    register_dataset("grey-declared-colour", lambda root, download: load_raw_splits("digits"), num_classes=10,
                     grayscale=False, native_size=8, embedded=True, description="a test's")  # fmt: skip
    register_dataset("colour-declared-grey", as_colour, num_classes=10, grayscale=True, native_size=8, embedded=True,
                     description="a test's")  # fmt: skip
    try:
        assert prepare_run(_cfg(target="grey-declared-colour", resolution=160)).augment_on == "device"
        assert prepare_run(_cfg(target="colour-declared-grey", resolution=160)).augment_on == "loader"
    finally:
        DATASETS.unregister("grey-declared-colour")
        DATASETS.unregister("colour-declared-grey")
    with pytest.raises(UserError, match="training split is empty"):
        stored_channels(TensorImages(torch.zeros(0, 1, 4, 4, dtype=torch.uint8), []))


def test_channels_last_is_the_same_training_in_another_memory_order(tmp_path):
    """What auto turns on for speed does not change what is trained: the same run, NCHW and NHWC, ends with the same
    weights to float32 round-off (no augmentation, so every random draw is the same)."""
    from transfer.zoo import load_source

    runs = {layout: finetune(_cfg(channels_last=layout, augment="none", epochs="3"), tmp_path / layout, progress=False)
            for layout in ("on", "off")}  # fmt: skip
    assert runs["on"]["channels_last"] and not runs["off"]["channels_last"]
    on, off = (dict(load_source(tmp_path / layout).model.named_parameters()) for layout in ("on", "off"))
    for name, p in on.items():  # 3 epochs of SGD at lr 0.1 amplify round-off: 1e-3 of the tensor's scale, at most
        assert float((p - off[name]).abs().max()) <= 1e-3 * float(off[name].abs().max()), name
    assert runs["on"]["final_test_acc"] == pytest.approx(runs["off"]["final_test_acc"], abs=1 / 360 + 1e-9)


def test_a_run_recorded_before_these_settings_existed_resumes(tmp_path):
    out = tmp_path / "old"
    finetune(_cfg(), out, progress=False)
    config = json.loads((out / "config.json").read_text())
    for key in ("precision", "channels_last", "augment_on"):
        del config["settings"][key]
    (out / "config.json").write_text(json.dumps(config))
    assert finetune(_cfg(), out, resume=True, progress=False)["epochs"] == 2


def test_a_resumed_run_keeps_the_speed_settings_it_started_with_but_tf32_where_there_is_none():
    now = {"precision": "fp32", "channels_last": True, "augment_on": "loader"}
    assert keep_recorded_speed(now, None, CPU) == (now, None)  # a run started before they were recorded
    assert keep_recorded_speed(now, dict(now), CPU) == (now, None)
    started = {"precision": "tf32", "channels_last": False, "augment_on": "device"}  # e.g. begun on a GPU
    kept, message = keep_recorded_speed(now, started, CPU)
    assert kept == {"precision": "fp32", "channels_last": False, "augment_on": "device"}  # a CPU has no TF32
    assert message == ("resuming with the speed settings the run started with: channels_last False (resolved now: "
                       "True), augment_on 'device' (resolved now: 'loader')")  # fmt: skip
    assert keep_recorded_speed(now, started, CUDA)[0]["precision"] == "tf32"
    with pytest.raises(UserError, match="recorded speed settings are not valid"):
        keep_recorded_speed(now, {"precision": "fp16", "channels_last": True, "augment_on": "loader"}, CPU)
    with pytest.raises(UserError, match="recorded speed settings are not valid"):
        keep_recorded_speed(now, {"precision": "fp32"}, CPU)


def test_a_run_killed_and_resumed_after_auto_changed_ends_as_if_never_killed(tmp_path, monkeypatch):
    """Batched augmentation draws other random numbers than the loader's, so a run that switched at its resume would
    train on other images than it began with: it keeps what ``auto`` resolved to at its start, and says so."""
    cfg = _cfg(epochs="3", augment="paper")
    full = finetune(cfg, tmp_path / "full", progress=False)
    with pytest.raises(Killed):
        finetune(cfg, tmp_path / "killed", progress=False, on_epoch_end=kill_after(2))
    assert RunDir(tmp_path / "killed").recorded_speed() == {"precision": "fp32", "channels_last": True,
                                                            "augment_on": "device"}  # fmt: skip
    monkeypatch.setattr("transfer.precision.BATCHED_VALUES", 0)  # auto's rule now takes the loader at 28 px
    assert prepare_run(cfg).augment_on == "loader"
    with pytest.warns(UserWarning, match="augment_on 'device' \\(resolved now: 'loader'\\)"):
        resumed = finetune(cfg, tmp_path / "killed", resume=True, progress=False)
    assert resumed["augment_on"] == "device" and resumed["final_test_acc"] == full["final_test_acc"]
    a, b = (torch.load(RunDir(tmp_path / d).model, weights_only=True)["state_dict"] for d in ("full", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
