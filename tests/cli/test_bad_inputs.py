"""A hostile user's invocations: each ends with a non-zero exit, one line on stderr and no traceback.

Where a command would write, nothing is left behind (no run directory, no influence directory).
"""

import shutil

import pytest
import torch

from cli.main import main
from tests.conftest import make_sweep

RUN = ["finetune", "--source", "mnist5k-l2", "--target", "digits", "--out", "{tmp}/new"]
PRE = ["pretrain", "--dataset", "digits", "--epochs", "1", "--out", "{tmp}/new"]
EVAL = ["evaluate", "--model", "mnist5k-l2", "--dataset", "digits"]
INF = ["influence", "--run", "{run}", "--out", "{tmp}/new"]
VIZ = ["featviz", "--model", "mnist5k-l2", "--features", "4", "--out", "{tmp}/new"]
SAL = ["saliency", "--model", "mnist5k-l2", "--dataset", "digits", "--out", "{tmp}/new"]

CASES = [
    # finetune: settings refused before anything is written
    (RUN + ["--blocks", "7"], "--blocks 7 exceeds the 6 residual blocks"),
    (RUN + ["--blocks", "-1"], "--blocks must be >= 0"),
    (RUN + ["--blocks", "two"], "--blocks must be a number or 'all'"),
    (RUN + ["--augment", "heavy"], "--augment must be one of paper, none"),
    (RUN + ["--head-init", "zeros"], "--head-init must be one of paper, default"),
    (RUN + ["--resolution", "0"], "--resolution must be an integer in [8, 2048], got 0"),
    (RUN + ["--resolution", "-1"], "--resolution must be an integer in [8, 2048], got -1"),
    (RUN + ["--momentum", "1.5"], "--momentum must be a finite number in [0, 1)"),
    (RUN + ["--momentum", "nan"], "--momentum must be a finite number in [0, 1), got nan"),
    (RUN + ["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    (RUN + ["--workers", "-1"], "--workers must be an integer >= 0, got -1"),
    (RUN + ["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (RUN + ["--lr", "-1"], "--lr must be a finite number > 0, got -1"),
    (RUN + ["--lr", "0"], "--lr must be a finite number > 0"),
    (RUN + ["--seed", "-1"], "--seed must be an integer in [0, "),
    (RUN + ["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (RUN + ["--epochs", "0"], "--epochs must be auto or an integer >= 1, got 0"),
    (RUN + ["--epochs", "many"], "--epochs must be auto or an integer >= 1, got 'many'"),
    (RUN + ["--subset", "0"], "--subset must be all or an integer >= 1"),
    (RUN + ["--eval-every", "0"], "--eval-every must be auto, last or an integer >= 1"),
    (RUN + ["--frozen-bn", "off"], "--frozen-bn must be one of train, eval"),
    (RUN + ["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N; got 'gpu'"),
    (RUN + ["--device", "cuda:x"], "--device must be auto, cpu, cuda or cuda:N"),
    (RUN + ["--save-every", "nan"], "--save-every must be a finite number >= 0"),
    (RUN + ["--arch", "resnet99"], "unknown architecture 'resnet99'"),
    (["finetune", "--source", "mnist5k-l2", "--target", "cifar11", "--out", "{tmp}/new"], "unknown dataset 'cifar11'"),
    # finetune: sources and output directories
    (["finetune", "--source", "{nan_ckpt}", "--target", "digits", "--out", "{tmp}/new"], "holds non-finite weights (NaN or Inf in"),
    (["finetune", "--source", "{empty_file}", "--target", "digits", "--out", "{tmp}/new"], "is not a readable torch checkpoint"),
    (["finetune", "--source", "{unfinished}", "--target", "digits", "--out", "{tmp}/new"], "is a run that has not finished (no model.pt yet)"),
    (["finetune", "--source", "{tmp}", "--target", "digits", "--out", "{tmp}/new"], "is a directory without model.pt, not a run directory"),
    (["finetune", "--source", "mnist5k-l2", "--target", "digits", "--out", "{a_file}"], "is a file, not a directory"),
    (["finetune", "--source", "mnist5k-l2", "--target", "digits", "--out", "{a_file}/sub"], "a part of the path is a file"),
    (["finetune", "--source", "mnist5k-l2", "--target", "digits", "--out", "{user_dir}"], "holds files that are not a robust-transfer run (notes.txt)"),
    (["finetune", "--source", "mnist5k-l2", "--target", "digits", "--out", "{run}"], "already holds a run"),
    (["finetune", "--source", "mnist5k-l2", "--target", "digits", "--out", "{run}", "--resume"], "settings differ"),
    # pretrain
    (PRE[:-4] + ["--epochs", "0", "--out", "{tmp}/new"], "--epochs must be an integer >= 1, got 0"),
    (PRE + ["--lr", "-1"], "--lr must be a finite number > 0, got -1"),
    (PRE + ["--constraint", "l2", "--eps", "nan"], "--eps must be a finite number > 0, got nan"),
    (PRE + ["--constraint", "l2", "--eps", "0"], "--eps must be a finite number > 0, got 0"),
    (PRE + ["--constraint", "l3"], "--constraint must be one of none, l2, linf"),
    (PRE + ["--attack-steps", "0"], "--attack-steps must be an integer >= 1"),
    (PRE + ["--step-scale", "0"], "--step-scale must be a finite number > 0"),
    (PRE + ["--arch", "resnet99"], "unknown architecture 'resnet99'"),
    # evaluate
    (EVAL + ["--attack", "l2", "--eps", "nan"], "--eps must be a finite number >= 0, got nan"),
    (EVAL + ["--attack", "l2"], "--attack needs --eps"),
    (EVAL + ["--attack", "l1", "--eps", "1"], "--attack must be one of none, l2, linf"),
    (EVAL + ["--limit", "0"], "--limit must be an integer >= 1"),
    (EVAL + ["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (EVAL + ["--split", "val"], "--split must be one of test, train"),
    (["evaluate", "--model", "{unfinished}", "--dataset", "digits"], "has not finished"),
    (["evaluate", "--model", "nonesuch", "--dataset", "digits"], "neither a source name"),
    # influence: settings, then the run it reads, then the directory it writes
    (INF + ["--damping", "nan"], "--damping must be a finite number >= 0, got nan"),
    (INF + ["--damping", "inf"], "--damping must be a finite number >= 0, got inf"),
    (INF + ["--damping", "-1"], "--damping must be a finite number >= 0, got -1"),
    (INF + ["--rcond", "nan"], "--rcond must be a finite number in [0, 1), got nan"),
    (INF + ["--rcond", "-1"], "--rcond must be a finite number in [0, 1), got -1"),
    (INF + ["--method", "magic"], "--method must be one of auto, cholesky, eigh, svd, cg"),
    (INF + ["--rcond", "papre"], "--rcond must be paper, exact or a number, got 'papre'"),
    (INF + ["--rcond", "paper,,exact"], "--rcond must be a value or a comma-separated list"),
    (INF + ["--damping", "0,-1"], "--damping must be a finite number >= 0, got -1"),
    (INF + ["--normalize", "l2"], "--normalize must be one of none, relatif, cosine"),
    (INF + ["--method", "cg", "--rcond", "1e-3"], "--rcond does not apply to --method cg"),
    (INF + ["--method", "ekfac", "--damping", "1e-3", "--rcond", "paper"], "--rcond does not apply to --method ekfac"),
    (INF + ["--method", "kfac", "--damping", "1e-3", "--rcond", "exact"], "--rcond does not apply to --method kfac"),
    (INF + ["--method", "ekfac", "--damping", "1e-3", "--arnoldi-rank", "50"],
     "--arnoldi-rank applies to --method arnoldi, not ekfac"),
    (INF + ["--method", "ggn", "--fisher", "mc"], "--fisher applies to --method kfac and ekfac, not ggn"),
    (INF + ["--cg-max-iter", "10"], "--cg-max-iter applies to --method cg, not auto"),
    (["influence-study", "{tmp}", "--size", "100", "--method", "ekfac", "--damping", "1e-3", "--rcond", "paper"],
     "--rcond does not apply to --method ekfac"),
    (["validate-influence", "--run", "{run}", "--out", "{tmp}/v", "--lds", "100000000"],
     "--lds must be an integer in [5, 10000]"),
    (INF + ["--damping", "weightdecay"], "--damping must be wd, source or a number, got 'weightdecay'"),
    (INF + ["--refit-head", "--params", "layer4.1,fc"], "--refit-head applies to the head alone"),
    (["influence-study", "{tmp}", "--size", "100"], "is not a sweep directory"),
    (["influence-study", "{tmp}", "--size", "0"], "--size must be all or an integer >= 1"),
    (["influence-study", "{tmp}", "--size", "100", "--k", "0"], "--k must be an integer >= 1"),
    (["validate-influence", "--run", "{run}", "--out", "{tmp}/v", "--tests", "0"], "--tests 0 skips the leave-one-out check"),
    (["validate-influence", "--run", "{run}", "--out", "{tmp}/v", "--tests", "-1"], "--tests must be an integer >= 0"),
    (INF + ["--test", "0"], "--test must be all or an integer >= 1"),
    (INF + ["--test", "5"], "--test 5: a subset of 5 images cannot cover 10 classes"),
    (INF + ["--test", "99999"], "--test 99999 is larger than the split it is drawn from (360 images)"),
    (INF + ["--method", "cg", "--cg-tol", "0"], "--cg-tol must be a finite number in (0, 1)"),
    (INF + ["--method", "cg", "--cg-max-iter", "0"], "--cg-max-iter must be an integer >= 1"),
    (INF + ["--cg-tol", "0"], "--cg-tol applies to --method cg, not auto"),
    (INF + ["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (INF + ["--params", "nope"], "--params: no parameters match 'nope'"),
    (INF + ["--params", ","], "--params must name at least one module"),
    (INF + ["--device", "cuda:7"], "cuda"),
    (["influence", "--run", "{pretrain_run}", "--out", "{tmp}/new"], "is not a fine-tuning run"),
    (["influence", "--run", "{unfinished}", "--out", "{tmp}/new"], "has not finished (no summary.json)"),
    (["influence", "--run", "{bad_json_run}", "--out", "{tmp}/new"], "config.json is not valid JSON"),
    (["influence", "--run", "{tmp}/missing", "--out", "{tmp}/new"], "is not a directory"),
    (["influence", "--run", "{run}", "--out", "{user_dir}"], "holds files that are not an influence directory's (notes.txt)"),
    (["influence", "--run", "{run}", "--out", "{a_file}"], "is a file, not a directory"),
    # class-match and plot-influence read only complete influence directories
    (["class-match", "{incomplete}"], "is not a complete influence directory (no meta.json"),
    (["class-match", "{run}"], "is not a complete influence directory"),
    (["class-match", "{tmp}/missing"], "is not a directory"),
    (["class-match", "{influence}", "--k", "0"], "--k must be an integer >= 1, got 0"),
    (["class-match", "{influence}", "--csv", "{a_file}/x.csv"], "a_file: it exists already and is in the way"),
    (["plot-influence", "{influence}", "--top", "0"], "--top must be an integer >= 1, got 0"),
    (["plot-influence", "{incomplete}"], "is not a complete influence directory"),
    # featviz and saliency
    (VIZ + ["--iterations", "-5"], "iterations must be an integer >= 1, got -5"),
    (VIZ[:-4] + ["--features", "-1", "--out", "{tmp}/new"], "--features must be comma-separated integers >= 0, got '-1'"),
    (VIZ[:-4] + ["--features", "999", "--out", "{tmp}/new"], "feature 999 out of range"),
    (VIZ + ["--seeds", "noise:0"], "--seeds noise:N needs an integer N >= 1, got 'noise:0'"),
    (VIZ + ["--seeds", "noise:x"], "--seeds noise:N needs an integer N >= 1"),
    (VIZ + ["--seeds", "plasma"], "--seeds must be noise:N, grey or image:PATH"),
    (VIZ + ["--step-size", "nan"], "step_size must be a finite number > 0"),
    (VIZ + ["--eps", "-1"], "eps must be a finite number > 0"),
    (VIZ + ["--layer", "model.nope"], "no layer named 'model.nope'"),
    (SAL + ["--images", "100000"], "--images 100000: the digits test split has 360 images; use 1 to 360"),
    (SAL + ["--images", "0"], "--images 0: the digits test split has 360 images"),
    (SAL + ["--images", "-1"], "--images must be comma-separated integers >= 0, got '-1'"),
    (SAL + ["--images", "3,400"], "--images must select images 0..359"),
    (["saliency", "--model", "mnist5k-l2", "--dataset", "cifar11", "--out", "{tmp}/new"], "unknown dataset 'cifar11'"),
    (["saliency", "--model", "mnist5k-l2", "--dataset", "digits", "--out", "{a_file}"], "in the way"),
    # sweeps, summaries, studies and the demo (issue 18)
    (["sweep", "{grid_bytes}", "--out", "{tmp}/new"], "is not UTF-8 text"),
    (["sweep", "{grid_dict}", "--out", "{tmp}/new"], "'sources' must list strings; got {'a': 1}"),
    (["sweep", "{grid_huge}", "--out", "{tmp}/new", "--dry-run"], "the grid has 100,000,000 runs, more than the 200,000"),
    (["sweep", "{grid_blocks7}", "--out", "{tmp}/new"], "--blocks 7 exceeds the 6 residual blocks"),
    (["sweep", "{grid_missing}", "--out", "{tmp}/new"], "is neither a source name"),
    (["sweep", "{grid_subset}", "--out", "{tmp}/new"], "larger than the split it is drawn from (1437 images)"),
    (["sweep", "{grid_ok}", "--out", "{tmp}/new", "--executor", "ray", "--address", "127.0.0.1:1"], "no Ray cluster answers at 127.0.0.1:1"),
    (["sweep", "{grid_ok}", "--out", "{user_dir}"], "holds files that are not robust-transfer's sweep (notes.txt)"),
    (["sweep", "status", "{foreign_sqlite}"], "is not a robust-transfer sweep ledger"),
    (["summarize", "{partial_sweep}", "--out", "{tmp}/new"], "is incomplete: 3 of 4 runs done (1 pending)"),
    (["plot", "{partial_sweep}", "--figure", "accuracy", "--out", "{tmp}/new"], "is incomplete: 3 of 4 runs done"),
    (["summarize", "{complete_sweep}", "--out", "{user_dir}"], "holds files that are not robust-transfer's summary (notes.txt)"),
    (["summarize", "{complete_sweep}", "--out", "{user_table5}"], "has no .robust-transfer marker"),
    (["plot", "{complete_sweep}", "--figure", "accuracy", "--out", "{user_dir}"], "not robust-transfer's figures"),
    (["influence-study", "{complete_sweep}", "--size", "100", "--blocks", "0", "--out", "{user_dir}"], "not robust-transfer's influence-study"),
    (["validate-influence", "--run", "{run}", "--out", "{tmp}/new", "--tests", "1", "--removals", "1", "--random", "0"], "a correlation needs at least 3"),
    (["validate-influence", "--run", "{run}", "--out", "{user_dir}"], "not robust-transfer's validate-influence"),
    (INF + ["--rcond", "paper,paper"], "--rcond lists paper more than once"),
    (INF + ["--damping", "wd,wd"], "--damping lists wd more than once"),
    (["class-match", "{influence}", "--k", "100000"], "--k 100000 is more than"),
    (["demo", "--quick", "--out", "{user_dir}"], "holds files that are not robust-transfer's demo (notes.txt)"),
    (VIZ[:-1] + ["{user_dir}"], "not robust-transfer's featviz"),
    # usage
    ([], "the following arguments are required: command"),
    (["finetune", "--target", "digits"], "required: --source"),
    (["influence", "--run", "{run}"], "required: --out"),
    (["finetune", "--source", "mnist5k-l2", "--target", "digits", "--out", "{tmp}/x", "--batch-size", "many"], "invalid int value"),
]  # fmt: skip


@pytest.fixture(scope="module")
def places(tmp_path_factory, finished_run, influence_out):
    root = tmp_path_factory.mktemp("hostile")
    (root / "a_file").write_text("not a directory")
    (root / "empty.pt").write_bytes(b"")
    user = root / "user_dir"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    unfinished = root / "unfinished"
    unfinished.mkdir()
    shutil.copy(finished_run / "config.json", unfinished / "config.json")
    bad = root / "bad_json_run"
    shutil.copytree(finished_run, bad)
    (bad / "config.json").write_text('{"settings": {"lr": NaN,')
    incomplete = root / "incomplete"
    shutil.copytree(influence_out, incomplete)
    (incomplete / "meta.json").unlink()
    ckpt = torch.load(finished_run / "model.pt", weights_only=True)
    ckpt["state_dict"]["model.fc.weight"][0, 0] = float("nan")
    torch.save(ckpt, root / "nan.pt")
    grids = {
        "grid_bytes": b"\xff\xfe",
        "grid_dict": 'sources = [{a = 1}]\ntargets = ["digits"]\nblocks = [0]\n[seeds]\n100 = 1\n',
        "grid_huge": 'sources = ["mnist5k-l2"]\ntargets = ["digits"]\nblocks = [0]\n[seeds]\n50 = 100000000\n',
        "grid_blocks7": 'sources = ["mnist5k-l2"]\ntargets = ["digits"]\nblocks = [7]\n[seeds]\n100 = 1\n',
        "grid_missing": 'sources = ["/no/such/model.pt"]\ntargets = ["digits"]\nblocks = [0]\n[seeds]\n100 = 1\n',
        "grid_subset": 'sources = ["mnist5k-l2"]\ntargets = ["digits"]\nblocks = [0]\n[seeds]\n5000 = 1\n',
        "grid_ok": 'sources = ["mnist5k-l2"]\ntargets = ["digits"]\nblocks = [0]\n[seeds]\n100 = 1\n',
    }
    for name, text in grids.items():
        (root / f"{name}.toml").write_bytes(text if isinstance(text, bytes) else text.encode())
    foreign = root / "foreign_sqlite"
    foreign.mkdir()
    import sqlite3

    with sqlite3.connect(foreign / "ledger.sqlite") as db:
        db.execute("CREATE TABLE notes (x)")
    user_table5 = root / "user_table5"
    user_table5.mkdir()
    (user_table5 / "table5.csv").write_text("the user's own table")
    pretrain_run = root / "pretrain_run"
    pretrain_run.mkdir()
    (pretrain_run / "config.json").write_text('{"settings": {"dataset": "digits", "arch": "small_resnet"}}')
    (pretrain_run / "summary.json").write_text("{}")
    return {
        "run": finished_run,
        "influence": influence_out,
        "a_file": root / "a_file",
        "empty_file": root / "empty.pt",
        "user_dir": user,
        "unfinished": unfinished,
        "bad_json_run": bad,
        "incomplete": incomplete,
        "nan_ckpt": root / "nan.pt",
        "pretrain_run": pretrain_run,
        **{name: root / f"{name}.toml" for name in grids},
        "foreign_sqlite": foreign,
        "user_table5": user_table5,
        "partial_sweep": make_sweep(root / "partial_sweep", done=3),
        "complete_sweep": make_sweep(root / "complete_sweep", done=4),
    }


def test_there_are_many_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("argv,match", CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_bad_invocation_is_one_line(argv, match, places, tmp_path, capsys):
    subs = {"tmp": tmp_path, **places}
    argv = [a.format(**subs) for a in argv]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert match in err, err
    assert not (tmp_path / "new").exists()  # refused before anything was written
    # the user's own files are never touched, nor do they get company
    assert sorted(p.name for p in places["user_dir"].iterdir()) == ["notes.txt"]
    assert (places["user_dir"] / "notes.txt").read_text() == "precious"
    assert (places["user_table5"] / "table5.csv").read_text() == "the user's own table"


def test_a_closed_pipe_ends_quietly_without_traceback():
    """``robust-transfer datasets | head``: the reader goes away, the command exits like one killed by SIGPIPE."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "datasets"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # before the command has written anything
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == b""


@pytest.mark.parametrize(
    "argv,resumable",
    [
        (["finetune", "--source", "s", "--target", "digits", "--out", "o"], True),
        (["pretrain", "--out", "o"], True),
        (["influence", "--run", "r", "--out", "o"], False),
        (["featviz", "--model", "m", "--features", "1", "--out", "o"], False),
        (["saliency", "--model", "m", "--dataset", "digits", "--out", "o"], False),
    ],
)
def test_ctrl_c_suggests_resume_only_where_a_command_takes_it(argv, resumable, monkeypatch, capsys):
    import cli.main as cli_main

    args = cli_main.build_parser().parse_args(argv)

    def interrupted(_):
        raise KeyboardInterrupt

    args.func = interrupted
    monkeypatch.setattr(cli_main.argparse.ArgumentParser, "parse_args", lambda self, argv=None: args)
    assert cli_main.main(argv) == 130
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and ("--resume" in err) == resumable
