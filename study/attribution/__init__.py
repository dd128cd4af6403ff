"""Influence over fine-tuned runs: the per-run pipeline, its directories, the study over seeds,
class-match, leave-one-out and the demo's report. Python::

    from study.attribution import InfluenceConfig, run_influence
    meta = run_influence(InfluenceConfig(run="runs/rob", out="influence/rob"))
"""

from study.attribution.inputs import load_run, output_bytes, run_weight_decay
from study.attribution.pipeline import run_influence
from study.attribution.settings import SIGN_CONVENTION, InfluenceConfig

__all__ = ["SIGN_CONVENTION", "InfluenceConfig", "load_run", "output_bytes", "run_influence", "run_weight_decay"]
