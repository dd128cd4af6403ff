"""Influence averaged over an ensemble of independently fine-tuned models (``influence --ensemble K``).

The run's fine-tune is repeated ``K - 1`` more times on the same training images with training seeds
``run seed + 1, ..., K - 1`` (:func:`study.attribution.retraining.retrain`: resumable run directories on any
executor); every model's influence is computed with the same method and settings (an ordinary influence
directory each), and the result is their mean, entry by entry::

    I_ensemble[i, j] = 1/K sum_k I_k[i, j]

the estimator TRAK and SOURCE average over models (TRAK: LDS 0.10 -> 0.37 from 1 to 50 models on CIFAR-2): the
seed's share of a single model's attribution averages out, the training images' share does not. The directory
layout (:mod:`study.attribution.store`)::

    OUT/                       the averaged matrices, meta.json (meta["ensemble"]: models, seeds, runs, members)
    OUT/ensemble/runs/kNN      the fine-tunes k = 1 .. K-1 (k = 0 is the run itself)
    OUT/ensemble/influence/kNN every model's influence directory

A killed or repeated command keeps the finished fine-tunes and every member directory computed with the same
settings from the same model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from study.attribution.inputs import load_run, output_bytes, up_to_date
from study.attribution.retraining import Retraining, repeat_seed, retraining_jobs, run_seed
from study.attribution.settings import InfluenceConfig
from study.attribution.store import ENSEMBLE_DIR, InfluenceDir
from study.sweeps.jobs import run_jobs
from transfer.errors import UserError

SAME = ("idx_train", "idx_test", "y_train", "y_test")  # what every member must share for its matrices to be averaged


def member_name(k: int) -> str:
    return f"k{k:02d}"


def ensemble_seeds(seed: int, models: int) -> list[int]:
    """The training seeds of an ensemble of ``models`` around a run trained with ``seed``: the run's own first."""
    return [repeat_seed(seed, k) for k in range(models)]


def member_jobs(cfg: InfluenceConfig) -> list:
    """The fine-tunes of the ensemble's models k = 1 .. K-1 as jobs of :func:`study.sweeps.jobs.run_jobs`, keyed by
    their directories (``OUT/ensemble/runs/kNN``)."""
    run = Path(cfg.run)
    seeds = ensemble_seeds(run_seed(run), cfg.ensemble)
    others = [Retraining(member_name(k), seed=seeds[k]) for k in range(1, cfg.ensemble)]
    jobs = retraining_jobs(run, Path(cfg.out) / ENSEMBLE_DIR / "runs", others, cfg.device)
    return [(dataclasses.replace(spec, key=str(path)), path) for spec, path in jobs]


def fine_tune_members(cfgs: list[InfluenceConfig], progress: bool = True) -> None:
    """The fine-tunes of several runs' ensembles on one executor (``cfgs[0]``'s), so that its workers start once for
    all of them (``influence-study --ensemble K``: every run of the cell); each run's :func:`run_ensemble` then finds
    its models trained."""
    jobs = [job for cfg in cfgs for job in member_jobs(cfg)]
    if jobs:
        run_jobs(jobs, cfgs[0].retrain_executor(), progress=progress, desc="ensemble fine-tunes")


def run_ensemble(
    cfg: InfluenceConfig, one_model: Callable[[InfluenceConfig, bool], dict], progress: bool = True
) -> dict:
    """Fine-tune the ensemble's other models, compute each model's influence with ``one_model`` (the pipeline's
    :func:`~study.attribution.pipeline.run_influence`), write their mean to ``cfg.out``; return ``meta``."""
    if cfg.ensemble < 2:
        raise UserError("an ensemble needs --ensemble 2 or more (1 is the run alone: influence without --ensemble)")
    t0 = time.perf_counter()
    run = Path(cfg.run)
    _, _, train, test, _, _ = load_run(cfg)  # the run checked (finished, a fine-tune) before anything starts
    seeds = ensemble_seeds(run_seed(run), cfg.ensemble)
    jobs = member_jobs(cfg)
    out = InfluenceDir(cfg.out)
    base = out.root / ENSEMBLE_DIR
    n_settings = len(cfg.settings())
    with out.writing(n_settings * output_bytes(len(train), len(test)) * (cfg.ensemble + 1)):
        run_jobs(jobs, cfg.retrain_executor(), progress=progress, desc="ensemble fine-tunes")
        runs = [run, *(path for _, path in jobs)]
        members = []
        for k, model_run in enumerate(tqdm(runs, desc="influence per model", disable=not progress)):
            path = base / "influence" / member_name(k)
            member = dataclasses.replace(cfg, run=str(model_run), out=str(path), ensemble=1)
            if not up_to_date(path, member):
                one_model(member, False)
            members.append(path)
        meta = _average(out, [InfluenceDir(p).read() for p in members])
        meta["ensemble"] = {
            "models": cfg.ensemble,
            "seeds": seeds,
            "runs": [str(r) for r in runs],
            "members": [str(p) for p in members],
            "estimator": "the mean of the models' influence matrices, entry by entry, per setting",
        }
        meta["config"] = dataclasses.asdict(cfg)
        meta["timings"] = {"total_s": time.perf_counter() - t0}
        out.complete(meta)
    return meta


def _average(out: InfluenceDir, results: list) -> dict:
    """Write the members' mean matrices (every setting) and shared labels; return the first member's meta with
    each setting's per-model ranks kept."""
    first = results[0]
    for res in results[1:]:
        for name in SAME:
            if not np.array_equal(np.asarray(res[name]), np.asarray(first[name])):
                raise UserError(f"{res.root} has other {name} than {first.root}: its model was trained or evaluated on "
                                "other images; remove it and run again")  # fmt: skip
        if len(res.settings) != len(first.settings):
            raise UserError(f"{res.root} has {len(res.settings)} settings, {first.root} {len(first.settings)}")
    for i in range(len(first.settings)):
        for which, kind in enumerate(("influence_test", "influence_train")):
            total = np.zeros(first.setting(i)[which].shape, dtype=np.float64)
            for res in results:  # one member's matrix in memory at a time
                total += np.asarray(res.setting(i)[which], dtype=np.float64)
            out.save(kind if i == 0 else f"{kind}.s{i}", total / len(results))
    for name in SAME:
        out.save(name, np.asarray(first[name]))
    meta = {k: v for k, v in first.meta.items() if k not in ("format", "config", "timings")}
    settings = [dict(st) for st in first.settings] if first.meta.get("settings") else None
    if settings:
        for i, st in enumerate(settings):
            st["rank_kept_per_model"] = [res.settings[i].get("rank_kept") for res in results]
        meta["settings"] = settings
    return meta
