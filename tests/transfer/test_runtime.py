"""The runtime settings: one dataclass, read where a command needs them, refused where it does not."""

import dataclasses

import pytest
import torch

from cli.main import build_parser
from study.attribution import InfluenceConfig
from study.attribution.leave_one_out import ValidateConfig
from study.attribution.over_seeds import InfluenceStudyConfig
from study.demo.stages import DemoConfig
from transfer.errors import UserError
from transfer.evaluation import EvaluateConfig
from transfer.finetune import FinetuneConfig
from transfer.pretrain import PretrainConfig
from transfer.runtime import RESUMABLE, RUNTIME_FIELDS, Runtime, torch_threads

CONFIGS = {
    "finetune": lambda **kw: FinetuneConfig(source="mnist5k-natural", target="digits", **kw),
    "pretrain": lambda **kw: PretrainConfig(**kw),
    "evaluate": lambda **kw: EvaluateConfig(model="mnist5k-natural", dataset="digits", **kw),
    "influence": lambda **kw: InfluenceConfig(run="r", out="o", **kw),
    "validate-influence": lambda **kw: ValidateConfig(run="r", out="o", **kw),
    "influence-study": lambda **kw: InfluenceStudyConfig(sweep="s", size="100", **kw),
    "demo": lambda **kw: DemoConfig(**kw),
}


def _flags(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {s for a in sub._actions for s in a.option_strings}


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_each_command_offers_exactly_the_runtime_settings_it_reads(command):
    cfg = CONFIGS[command]()
    assert isinstance(cfg, Runtime)
    flags = _flags(command)
    for name in RUNTIME_FIELDS:
        flag = "--" + name.replace("_", "-")
        assert (flag in flags) == (name in cfg.RUNTIME), (command, flag)
        if name not in cfg.RUNTIME:
            other = 3 if name != "device" else "cpu"
            with pytest.raises(UserError, match=flag):
                CONFIGS[command](**{name: other})


def test_data_root_reaches_every_command_that_reads_data():
    for command in ("finetune", "pretrain", "evaluate", "influence", "validate-influence", "influence-study"):
        assert "--data-root" in _flags(command), command
    study = CONFIGS["influence-study"](data_root="/data", threads=2)
    inner = study.influence_config("run", "out")
    assert (inner.data_root, inner.threads, inner.device) == ("/data", 2, "auto")
    validate = CONFIGS["validate-influence"](data_root="/data", threads=3)
    assert validate.influence_config().data_root == "/data" and validate.influence_config().threads == 3


@pytest.mark.parametrize(
    "name,value,match",
    [("device", "gpu", "--device"), ("workers", -1, "--workers"), ("threads", 0, "--threads"),
     ("save_every", -1.0, "--save-every")],  # fmt: skip
)
def test_runtime_values_are_checked_once_for_all(name, value, match):
    for command in ("finetune", "pretrain"):
        with pytest.raises(UserError, match=match):
            CONFIGS[command](**{name: value})


def test_recorded_settings_leave_out_the_resumable_and_the_unread():
    cfg = CONFIGS["finetune"](device="cpu", workers=2, threads=1, save_every=5.0, data_root="/d")
    rec = cfg.recorded()
    assert not set(RESUMABLE) & set(rec)
    assert rec["data_root"] == "/d" and rec["cache_dir"] is None and rec["source"] == "mnist5k-natural"
    pre = CONFIGS["pretrain"]().recorded()
    assert "cache_dir" not in pre and "data_root" in pre  # pretrain loads no source model
    # the record is what config.json held before the runtime dataclass existed: same keys
    assert set(rec) == {f.name for f in dataclasses.fields(FinetuneConfig)} - set(RESUMABLE)


def test_torch_threads_is_scoped():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_a_subclass_naming_an_unknown_runtime_setting_fails_loudly():
    @dataclasses.dataclass
    class Bad(Runtime):
        RUNTIME = ("device", "gpu_count")

    with pytest.raises(TypeError, match="gpu_count"):
        Bad()


def test_attack_settings_share_one_check():
    with pytest.raises(UserError, match="--attack-steps"):
        PretrainConfig(constraint="l2", attack_steps=0)
    with pytest.raises(UserError, match="--attack-steps"):
        EvaluateConfig(model="m", dataset="digits", attack_steps=0)
    with pytest.raises(UserError, match="--random-start-radius"):
        EvaluateConfig(model="m", dataset="digits", random_start_radius="shell")
    pgd = PretrainConfig(constraint="linf", eps=0.1, attack_steps=3, keep_best=True).attack()
    assert (pgd.constraint, pgd.eps, pgd.steps, pgd.random_start, pgd.keep_best) == ("linf", 0.1, 3, True, True)
