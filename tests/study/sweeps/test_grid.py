from collections import Counter
from pathlib import Path

import pytest

from cli.main import main
from study.sweeps.grid import parse_grid, read_grid
from transfer.errors import UserError

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_the_paper_grid_expands_to_table_2():
    grid = read_grid(EXAMPLES / "paper_grid.toml")
    runs = grid.runs()
    assert len(runs) == 12_576 == 4 * 4 * 6 * 131
    per_size = Counter(r.settings["subset"] for r in runs)
    seeds_per_size = {size: n // (4 * 4 * 6) for size, n in per_size.items()}
    assert seeds_per_size == {"100": 20, "200": 20, "400": 20, "800": 20, "1600": 20, "3200": 10, "6400": 10,
                              "12800": 5, "25600": 5, "all": 1}  # fmt: skip
    seeds = sorted({r.settings["seed"] for r in runs if r.settings["subset"] == "100"})
    assert seeds == [20_000_000 + 100_000 * i for i in range(20)]
    assert len({r.key for r in runs}) == len(runs)
    assert {r.settings["source"] for r in runs} == {
        "resnet50-natural",
        "resnet50-l2-3-engstrom",
        "resnet50-linf-4-engstrom",
        "resnet50-linf-8-engstrom",
    }  # the paper's own robust sources (the robustness library's), not Salman et al.'s
    assert all(r.settings["epochs"] == "auto" and r.settings["lr"] == 0.1 for r in runs)


def test_dry_run_prints_the_plan(capsys):
    argv = ["sweep", str(EXAMPLES / "paper_grid.toml"), "--out", "unused", "--dry-run", "--images-per-second", "1000"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "12,576 runs" in out and "cifar10 " in out and "estimated compute" in out
    assert "5,590,216,800 training" in out  # sum over runs of n_train x epochs (100 or 150)


def test_the_cpu_grid_is_small_and_valid():
    grid = read_grid(EXAMPLES / "cpu_grid.toml")
    assert len(grid.runs()) == 24 and {r.settings["target"] for r in grid.runs()} == {"digits"}


BASE = 'sources = ["mnist5k-l2"]\ntargets = ["digits"]\nblocks = [0]\n[seeds]\n100 = 1\n'


@pytest.mark.parametrize(
    "text,match",
    [
        (
            BASE + "[finetune]\nlearning_rate = 0.1\n",
            "unknown [finetune] key(s) learning_rate; allowed: epochs, eval_every, arch",
        ),
        (BASE + "[finetune]\nseed = 3\n", "(seed come from the grid's axes)"),
        ("colour = 1\n" + BASE, "unknown key(s) colour"),
        (BASE.replace("blocks = [0]\n", ""), "missing blocks"),
        (BASE + "[finetune]\nlr = -1.0\n", "run digits/mnist5k-l2/b0/n100/s20000000: --lr must be a finite number > 0"),
        (BASE.replace("100 = 1", "100 = 0"), "[seeds] 100 = 0"),
        (BASE.replace("100 = 1", "few = 1"), "[seeds] few = 1"),
        (BASE.replace('["digits"]', '["cifar11"]'), "unknown dataset 'cifar11'"),
        (BASE.replace('["digits"]', '["digits", "digits"]'), "'targets' lists a value twice"),
        ("sources = [", "is not valid TOML"),
    ],
)
def test_bad_grids_are_one_clear_error(text, match):
    with pytest.raises(UserError, match=None) as info:
        parse_grid(text, "g.toml")
    assert match in str(info.value)


def test_settings_are_recorded_as_the_cli_would():
    grid = parse_grid(BASE + "[finetune]\nepochs = 20\n")
    (run,) = grid.runs()
    assert run.settings["epochs"] == "20" and run.settings["blocks"] == "0" and run.settings["subset"] == "100"
    assert run.config().epochs == "20"


def test_the_plan_counts_one_evaluation_for_eval_every_last(tmp_path):
    from study.sweeps.plan import plan_grid
    from transfer.datasets import load_raw_splits

    n_test = len(load_raw_splits("digits")[1])
    passes = {}
    for every in ("last", "5"):
        path = tmp_path / f"g{every}.toml"
        path.write_text(BASE + f'[finetune]\nepochs = "10"\neval_every = "{every}"\n')
        passes[every] = plan_grid(read_grid(path), images_per_second=1000.0, device="cpu").test_passes
    assert passes == {"last": n_test, "5": 3 * n_test}  # after epoch 10 alone; after 1, 6 and 10
