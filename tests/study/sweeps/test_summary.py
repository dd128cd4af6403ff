import math

import pytest
from scipy import stats

from study.sweeps.summary import (
    Interval,
    accuracies,
    compare_with_paper,
    paired_differences,
    table5,
    verdict,
    write_summary,
)


def _row(source, seed, acc, target="cifar10", n=100, blocks="3", best=None):
    return {"settings": {"source": source, "target": target, "blocks": blocks, "seed": seed, "subset": str(n)},
            "n_train": n, "final_acc": acc, "best_acc": best if best is not None else acc, "state": "done"}  # fmt: skip


ROWS = [
    _row("resnet50-natural", 20_000_000, 0.40),
    _row("resnet50-natural", 20_100_000, 0.50),
    _row("resnet50-natural", 20_200_000, 0.45),
    _row("resnet50-l2-3", 20_000_000, 0.52),
    _row("resnet50-l2-3", 20_100_000, 0.56),
    _row("resnet50-l2-3", 20_200_000, 0.51, best=0.60),
]


def test_means_and_student_t_intervals_by_hand():
    table = table5(accuracies(ROWS))
    nat = table[("cifar10", 100, "3", "resnet50-natural")]
    # mean 45, sample sd 5, t_{0.975, 2} = 4.302652729911275
    assert nat.n == 3 and math.isclose(nat.mean, 45.0)
    half = 4.302652729911275 * 5.0 / math.sqrt(3)
    assert math.isclose(nat.low, 45 - half) and math.isclose(nat.high, 45 + half)
    assert math.isclose(stats.t.ppf(0.975, 2), 4.302652729911275)


def test_paired_differences_use_the_same_seeds():
    paired = paired_differences(accuracies(ROWS), "resnet50-natural")
    iv = paired[("cifar10", 100, "3", "resnet50-l2-3")]
    diffs = [12.0, 6.0, 6.0]  # 52-40, 56-50, 51-45
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert iv.n == 3 and math.isclose(iv.mean, 8.0)
    assert math.isclose(iv.high - iv.mean, stats.t.ppf(0.975, 2) * sd / math.sqrt(3))
    unpaired = paired_differences(accuracies(ROWS[:2] + ROWS[3:4]), "resnet50-natural")
    assert unpaired[("cifar10", 100, "3", "resnet50-l2-3")].n == 1  # only seed 20000000 is in both


def test_best_epoch_accuracy_is_a_choice():
    best = table5(accuracies(ROWS, "best"))[("cifar10", 100, "3", "resnet50-l2-3")]
    assert math.isclose(best.mean, (52 + 56 + 60) / 3)


def test_one_seed_has_no_interval():
    iv = Interval.of([71.0])
    assert iv.n == 1 and math.isnan(iv.low) and iv.text() == "71.00 (one seed: no interval)"


def test_the_verdict_reads_the_interval_and_flags_a_zero_width_one():
    # seen in a quick demo: both seeds gave +12.2 points (44 more of 360 test images right), so the
    # t interval was [+12.2, +12.2]; that is not an interval excluding zero
    same = Interval.of([100 * 44 / 360, 100 * 44 / 360])
    assert same.low == pytest.approx(same.high)
    assert verdict(same.low, same.high).startswith("every seed gave the same difference")
    assert verdict(1.0, 3.0) == "robust higher, the interval excludes zero"
    assert verdict(-3.0, -1.0) == "natural higher, the interval excludes zero"
    assert verdict(-1.0, 3.0) == "the seeds cannot tell them apart"
    one = Interval.of([5.0])
    assert verdict(one.low, one.high) == verdict(None, None) == "one seed only, no interval"


def test_comparison_with_the_papers_table_5():
    rows = compare_with_paper(table5(accuracies(ROWS)))
    by_source = {r["source"]: r for r in rows}
    assert by_source["resnet50-natural"]["paper"] == 48.49 and by_source["resnet50-l2-3"]["paper"] == 51.89
    assert math.isclose(by_source["resnet50-l2-3"]["difference"], 53.0 - 51.89)
    # Salman et al.'s model is compared, marked as not the paper's file; the natural source is the paper's own
    assert by_source["resnet50-l2-3"]["papers_source"].startswith("no: Salman")
    assert by_source["resnet50-natural"]["papers_source"] == "yes"
    engstrom = [{**r, "settings": {**r["settings"], "source": "resnet50-l2-3-engstrom"}} for r in ROWS
                if r["settings"]["source"] == "resnet50-l2-3"]  # fmt: skip
    (same,) = compare_with_paper(table5(accuracies(engstrom)))
    assert same["paper"] == 51.89 and same["papers_source"] == "yes"
    svhn = compare_with_paper(table5(accuracies([_row("resnet50-natural", 20_000_000, 0.9, target="svhn", n=73257)])))
    assert svhn[0]["paper"] == 95.33  # the row the paper labels "MNIST"


def test_written_tables_say_which_accuracy_and_interval(tmp_path):
    texts = write_summary(ROWS, tmp_path, "final", compare=True)
    assert "after the last epoch (the paper's choice)" in texts["table5"] and "Student t" in texts["table5"]
    assert "resnet50-l2-3 - resnet50-natural | 3 | 8.00 [" in texts["paired"]
    assert (tmp_path / "table5.csv").read_text().startswith("target,n_train,blocks,source,seeds,mean,ci_low,ci_high")
    assert "51.89" in texts["compare"]
    with pytest.raises(ValueError, match="--natural"):
        write_summary([_row("a.pt", 1, 0.5), _row("b.pt", 1, 0.6)], tmp_path)


def test_a_partial_sweep_is_refused_unless_asked_for_and_then_marked(sweep_factory, tmp_path):
    from study.sweeps.summary import read_sweep_rows, summarize_sweep
    from transfer.errors import UserError

    sweep = sweep_factory("s", done=3)
    with pytest.raises(UserError, match=r"is incomplete: 3 of 4 runs done \(1 pending\).*--allow-partial"):
        summarize_sweep(sweep)
    assert not (sweep / "summary").exists()
    texts = summarize_sweep(sweep, allow_partial=True)
    assert "Partial sweep: 3 of 4 runs done; 1 cell(s) have fewer runs than planned" in texts["table5"]
    assert "| 1/2 * |" in texts["table5"] and "| 2/2 |" in texts["table5"]
    rows, progress = read_sweep_rows(sweep, allow_partial=True)
    assert len(rows) == 3 and (progress.done, progress.planned) == (3, 4)
    assert progress.incomplete() == {("digits", 100, "0", "mnist5k-l2"): (1, 2)} and not progress.complete
    csv_rows = (sweep / "summary" / "table5.csv").read_text().splitlines()
    assert csv_rows[0].endswith("planned,complete") and sum(r.endswith(",2,False") for r in csv_rows) == 1


def test_a_cell_with_no_finished_run_is_listed_not_dropped(sweep_factory):
    from study.sweeps.summary import summarize_sweep

    texts = summarize_sweep(sweep_factory("s", done=2), allow_partial=True)  # the first seed of both sources
    assert "no run done" not in texts["table5"]  # each cell has a seed done
    texts = summarize_sweep(sweep_factory("t", done=1), allow_partial=True)  # mnist5k-l2 never finished
    assert "| digits | 100 | 0 | mnist5k-l2 | 0/2 * | no run done |" in texts["table5"]


def test_summarize_never_overwrites_a_users_file(sweep_factory, tmp_path, capsys):
    from cli.main import main

    sweep = sweep_factory("s", done=4)
    user = tmp_path / "u"
    user.mkdir()
    (user / "table5.csv").write_text("x")  # one of summarize's own names, but the user's file
    assert main(["summarize", str(sweep), "--out", str(user)]) == 2
    assert "has no .robust-transfer marker" in capsys.readouterr().err
    assert (user / "table5.csv").read_text() == "x" and sorted(p.name for p in user.iterdir()) == ["table5.csv"]
    assert main(["summarize", str(sweep)]) == 0 and main(["summarize", str(sweep)]) == 0  # its own: rewritten


def test_shown_intervals_are_clipped_and_the_csv_keeps_the_raw_ones(tmp_path):
    rows = [_row("resnet50-natural", 20_000_000 + 100_000 * i, a) for i, a in enumerate((0.99, 0.80, 0.97))]
    texts = write_summary(rows, tmp_path)
    iv = Interval.of([99.0, 80.0, 97.0])
    assert iv.high > 100 and f"[{max(0, iv.low):.2f}, 100.00]" in texts["table5"]
    assert f"{round(iv.high, 4)}" in (tmp_path / "table5.csv").read_text()
    two = write_summary(rows[:2], tmp_path / "two")  # two seeds: no interval shown, the CSV keeps the bounds
    assert "89.50 (2 seeds: too few for an interval)" in two["table5"]
    assert f"{round(Interval.of([99.0, 80.0]).high, 4)}" in (tmp_path / "two" / "table5.csv").read_text()


def test_a_summary_an_earlier_version_wrote_inside_the_sweep_is_rewritten(sweep_factory):
    from study.sweeps.summary import summarize_sweep

    sweep = sweep_factory("s", done=4)
    (sweep / "summary").mkdir()
    (sweep / "summary" / "table5.csv").write_text("old, unmarked")  # written before markers existed
    summarize_sweep(sweep)
    assert (sweep / "summary" / "table5.csv").read_text().startswith("target,n_train")


def test_an_interval_over_too_few_seeds_is_said_not_printed():
    from study.sweeps.summary import Interval, interval_text, verdict

    two = Interval.of([0.1, -0.2])
    assert two.text(digits=3) == "-0.050 (2 seeds: too few for an interval)"
    assert verdict(two.low, two.high, two.n) == "2 seeds: too few for an interval"
    assert Interval.of([0.5]).text() == "0.50 (one seed: no interval)"
    three = Interval.of([0.9, 0.95, 0.99])
    assert three.high > 1 and three.text(digits=3, clip=(-1, 1)).endswith(", 1.000]")  # clipped to what it can be
    assert interval_text(0.25, 0.1, 0.4, None, 2, signed=True) == "+0.25 [+0.10, +0.40]"  # a bootstrap: shown as is
