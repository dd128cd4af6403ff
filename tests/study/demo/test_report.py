"""The demo report's plain-language readings."""

from study.demo.report import transfer_readings


def _row(pairs, mean, low, high):
    return {"target": "digits", "n_train": 100, "blocks": 1, "source": "mnist5k-l2", "minus": "mnist5k-natural",
            "mean_diff": mean, "ci_low": low, "ci_high": high, "pairs": pairs}  # fmt: skip


def test_a_transfer_reading_says_once_why_no_interval_is_shown_and_gives_the_interval_and_verdict_otherwise():
    two, one, five = transfer_readings([_row(2, "9.71", "-80.2", "99.6"), _row(1, "3.0", "nan", "nan"),
                                        _row(5, "4.25", "1.5", "7.0")])  # fmt: skip
    assert two.endswith("= +9.7 accuracy points over 2 seeds (2 seeds: too few for an interval).")
    assert two.count("interval") == 1 and "[" not in two
    assert one.endswith("= +3.0 accuracy points over 1 seed (one seed only, no interval).")
    assert five.endswith("= +4.2 [+1.5, +7.0] accuracy points over 5 seeds (robust higher, the interval excludes zero).")
