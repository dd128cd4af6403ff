import json
import subprocess
import sys

import pytest
import torch

from transfer.errors import UserError
from transfer.finetune import FinetuneConfig, finetune
from transfer.pretrain import PretrainConfig, pretrain
from transfer.runs import RunDir


def _cfg(**kw):
    base = dict(source="mnist5k-l2", target="digits", blocks="0", subset="40", epochs="1", augment="none", device="cpu")
    return FinetuneConfig(**(base | kw))


def test_a_fresh_run_refuses_a_foreign_state(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    torch.save({"epoch": 3}, out / "state.pt")  # another run's training state
    with pytest.raises(UserError, match=r"already holds a run \(state.pt\)"):
        finetune(_cfg(), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "state.pt"]


def test_resume_without_config_refuses_a_foreign_state(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    torch.save({"epoch": 3}, out / "state.pt")
    with pytest.raises(UserError, match="no config.json"):
        finetune(_cfg(), out, resume=True, progress=False)


@pytest.mark.parametrize("resume", [False, True])
def test_a_directory_of_user_files_is_never_written(tmp_path, resume):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.pt").write_bytes(b"the user's own model")
    (out / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match=r"not a robust-transfer run \(notes.txt\)"):
        finetune(_cfg(), out, resume=resume, progress=False)
    assert (out / "model.pt").read_bytes() == b"the user's own model"
    assert not (out / "config.json").exists()


def test_resume_of_a_finished_run_compares_settings_first(tmp_path):
    out = tmp_path / "r"
    summary = finetune(_cfg(), out, progress=False)
    assert finetune(_cfg(), out, resume=True, progress=False) == summary
    assert finetune(_cfg(device="auto", workers=0), out, resume=True, progress=False) == summary  # where, not what
    with pytest.raises(UserError, match="settings differ .*seed: recorded 20000000, asked 1"):
        finetune(_cfg(seed=1), out, resume=True, progress=False)


def test_stale_temporaries_are_cleaned_when_a_run_resumes(tmp_path):
    out = tmp_path / "r"
    finetune(_cfg(), out, progress=False)
    (out / ".state.pt.0badc0de.tmp").write_bytes(b"x" * 100)
    finetune(_cfg(), out, resume=True, progress=False)
    assert not list(out.glob(".*.tmp"))


def test_a_damaged_state_is_one_clear_error(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        finetune(_cfg(epochs="3"), out, progress=False, on_epoch_end=lambda e: (_ for _ in ()).throw(KeyboardInterrupt))
    state = RunDir(out).state
    assert state.exists()
    state.write_bytes(state.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.raises(UserError, match="state.pt is damaged .*delete it to restart"):
        finetune(_cfg(epochs="3"), out, resume=True, progress=False)


def test_pretrain_follows_the_same_rules(tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    (out / "data.csv").write_text("1,2")
    with pytest.raises(UserError, match="not a robust-transfer run"):
        pretrain(PretrainConfig(dataset="digits", epochs=1, device="cpu"), out, progress=False)


def test_two_processes_on_one_out_never_mix(tmp_path):
    """Started together with different learning rates: one run wins, the other is refused, the files agree."""
    out = tmp_path / "race"
    common = ["finetune", "--source", "mnist5k-l2", "--target", "digits", "--blocks", "1", "--subset", "300",
              "--epochs", "4", "--device", "cpu", "--no-progress", "--out", str(out)]  # fmt: skip
    procs = {
        lr: subprocess.Popen(
            [sys.executable, "-m", "cli.main", *common, "--lr", lr],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for lr in ("0.1", "0.05")
    }
    results = {lr: (p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for lr, p in procs.items()}
    winners = [lr for lr, (rc, _, _) in results.items() if rc == 0]
    assert len(winners) == 1, results
    (loser,) = set(results) - set(winners)
    rc, _, err = results[loser]
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "being written by another robust-transfer process" in err or "already holds a run" in err
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["lr"] == float(winners[0])
    assert json.loads(results[winners[0]][1]) == json.loads((out / "summary.json").read_text())


def test_a_run_records_its_source_files_hash_and_refuses_to_resume_from_another(tmp_path):
    from transfer.zoo import file_sha256, get_source, source_path

    out = tmp_path / "r"
    summary = finetune(_cfg(), out, progress=False)
    digest = file_sha256(source_path(get_source("mnist5k-l2")))
    assert json.loads((out / "config.json").read_text())["source_sha256"] == digest == summary["source_sha256"]
    config = json.loads((out / "config.json").read_text())
    config["source_sha256"] = "0" * 64  # as if the run had started from another file under the same name
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=f"started from a source file of SHA-256 {'0' * 64}.*now a file of SHA-256 {digest}"):
        finetune(_cfg(), out, resume=True, progress=False)
