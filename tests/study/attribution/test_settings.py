"""Damping by a stated rule: wd (the run's weight decay) and source (1 / (lr x SGD steps)), resolved from the run."""

import pytest

from study.attribution import InfluenceConfig, run_influence
from study.attribution.inputs import run_dampings
from transfer.errors import UserError
from transfer.runs import RunDir


def test_rules_resolve_from_the_run_and_are_recorded(finished_run, tmp_path):
    settings = RunDir(finished_run).recorded()
    values = run_dampings(settings)
    steps = int(settings["resolved"]["epochs"]) * -(
        -int(settings["resolved"]["n_train"]) // int(settings["batch_size"])
    )
    assert values == {"wd": float(settings["weight_decay"]), "source": pytest.approx(1 / (settings["lr"] * steps))}
    cfg = InfluenceConfig(run=str(finished_run), out=str(tmp_path / "i"), damping="wd,source,0.1", test="20",
                          rcond="exact")  # fmt: skip
    assert cfg.damping_rules() == ["wd", "source", None]
    assert cfg.with_run_dampings(values).dampings() == [values["wd"], pytest.approx(values["source"]), 0.1]
    meta = run_influence(cfg, progress=False)
    assert [st["damping_rule"] for st in meta["settings"]] == ["wd", "source", None]
    assert [st["damping"] for st in meta["settings"]] == pytest.approx([values["wd"], values["source"], 0.1])


def test_unknown_rule_is_refused(finished_run, tmp_path):
    with pytest.raises(UserError, match="--damping must be wd, source or a number"):
        InfluenceConfig(run=str(finished_run), out=str(tmp_path / "i"), damping="lr")
