"""Leave-one-out by retraining the whole fine-tune (validate-influence --retrain)."""

import csv

import numpy as np
import pytest

from study.attribution.leave_one_out import ValidateConfig, validate_influence
from study.attribution.retrain_loo import choose_pairs
from study.attribution.retraining import logits_of, measured
from study.attribution.store import InfluenceDir
from transfer.errors import UserError
from transfer.runs import RunDir


def test_pairs_are_the_top_influences_of_the_highest_loss_tests_and_random_others():
    inf = np.array([[0.0, -5.0, 1.0, 0.5, 3.0], [2.0, 0.1, -0.2, 0.0, 0.3]])
    pairs = choose_pairs(inf, np.array([0.1, 0.9]), tests=1, removals=2, random=2, seed=0)
    assert pairs[:2] == [(1, 0, "top"), (1, 4, "top")]
    rand = [j for t, j, k in pairs if k == "random"]
    assert len(rand) == 2 and not {0, 4} & set(rand)


def test_validate_retrain_scores_influence_against_retrained_fine_tunes(finished_run, influence_out, tmp_path):
    with pytest.raises(UserError, match="--lds, --retrain or --pbrf"):
        ValidateConfig(run=str(finished_run), out=str(tmp_path / "x"), influence=str(influence_out))
    cfg = ValidateConfig(run=str(finished_run), out=str(tmp_path / "v"), tests=2, removals=3, random=2, retrain=True,
                         influence=str(influence_out), executor="inline")  # fmt: skip
    report = validate_influence(cfg, progress=False)
    (st,) = report["settings"]
    assert st["n_pairs"] == 10 and -1 <= st["pearson"] <= 1
    with open(tmp_path / "v" / "validate.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and {r["kind"] for r in rows} == {"top", "random"}
    runs = sorted((tmp_path / "v" / "loo" / "runs").iterdir())
    assert len(runs) == len({r["train_index"] for r in rows})
    # one pair by hand: the retrained run's loss on that test image minus the run's own
    res = InfluenceDir(influence_out).read()
    idx_test = np.asarray(res["idx_test"])
    row = rows[0]
    t = int(np.flatnonzero(idx_test == int(row["test_index"]))[0])
    idx_train = np.asarray(res["idx_train"])  # validate.csv holds dataset indices: back to positions in the run

    def position(r):
        return int(np.flatnonzero(idx_train == int(r["train_index"]))[0])

    removed = sorted({position(r) for r in rows})
    retrained = runs[removed.index(position(row))]
    target = RunDir(finished_run).recorded()["target"]
    base, again = measured(logits_of([finished_run, retrained], target, None, idx_test, "cpu"), res["y_test"], "loss")
    assert float(row["actual"]) == pytest.approx(again[t] - base[t], rel=1e-9, abs=1e-12)
    n = len(res["y_train"])
    assert float(row["predicted"]) == pytest.approx(-res["influence_test"][t, position(row)] / n)
    assert (tmp_path / "v" / "validate.png").exists()
