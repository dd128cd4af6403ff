"""The demo's methods stage: its record read back in the order it ran."""

import json

from study.demo.methods import studies_of
from transfer.files import atomic_write_json


def test_a_resumed_demo_lists_the_methods_in_the_order_the_stage_ran_them(tmp_path):
    """The stage record is JSON with sorted keys; the methods come back in the stage's order, not alphabetically."""
    stage = {"studies": {"ekfac": {"differences": []}, "arnoldi": {"differences": []}}, "order": ["ekfac", "arnoldi"]}
    atomic_write_json(tmp_path / "methods.json", stage)
    read = json.loads((tmp_path / "methods.json").read_text())
    assert list(read["studies"]) == ["arnoldi", "ekfac"]  # what the record holds
    assert list(studies_of(read)) == list(studies_of(stage)) == ["ekfac", "arnoldi"]
    # a record of an earlier version: no order (its own), or EK-FAC's study alone
    assert list(studies_of({"studies": read["studies"]})) == ["arnoldi", "ekfac"]
    assert list(studies_of({"study": {"differences": []}})) == ["ekfac"]
