"""The demo's stages: the time-left clock and the heartbeat of a long command."""

import io
import time

import pytest

from study.demo.stages import Clock, Heartbeat


def test_a_long_command_shows_it_is_alive_on_a_stream_that_is_no_terminal():
    stream = io.StringIO()
    with Heartbeat("influence: validate-influence", Clock(), stream, every=0.05):
        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3 and all("validate-influence still running" in ln and "left in the demo" in ln
                                   for ln in lines)  # fmt: skip


def test_the_time_left_grows_when_a_stage_runs_over_its_estimate():
    clock = Clock()
    clock.start(stage_expected=10, rest_expected=20)
    assert clock.left() == pytest.approx(30, abs=0.5)
    clock.stage_started -= 15  # 15 s into a stage expected to take 10: this machine is 1.5x slower
    assert clock.left() == pytest.approx(30, abs=0.5)  # nothing left of the stage's estimate, the rest scaled
    clock.stage_started -= 15
    assert clock.left() == pytest.approx(60, abs=0.5)
