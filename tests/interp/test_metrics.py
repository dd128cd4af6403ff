import numpy as np
import pytest

from interp.errors import InterpError
from interp.metrics import class_match, most_helpful, ranking_agreement


def test_most_helpful_is_most_negative_first():
    inf = np.array([[0.5, -3.0, -1.0, 2.0], [-0.1, 0.2, -0.3, -5.0]])
    assert most_helpful(inf, 3).tolist() == [[1, 2, 0], [3, 2, 0]]


def test_class_match_on_a_hand_made_matrix():
    y_train = np.array([0, 1, 0, 1, 0])
    y_test = np.array([0, 1])
    inf = np.array(
        [
            [-5.0, -4.0, -3.0, 1.0, -2.0],  # ranks: 0(y0) 1(y1) 2(y0) 4(y0) 3(y1) -> match 1,0,1,1,0
            [-1.0, -9.0, 0.0, -8.0, 3.0],  # ranks: 1(y1) 3(y1) 0(y0) 2(y0) 4(y0) -> match 1,1,0,0,0
        ]
    )
    cm = class_match(inf, y_test, y_train, k=5)
    assert cm.per_rank.tolist() == [1.0, 0.5, 0.5, 0.5, 0.0]
    assert cm.cumulative[0] == 1.0 and cm.cumulative[1] == pytest.approx((0.5 + 1.0) / 2)
    assert cm.cumulative[4] == pytest.approx((3 / 5 + 2 / 5) / 2)
    assert cm.at_least_3_of_5 == 0.5


def test_exclude_self_drops_the_diagonal():
    y = np.array([0, 0, 1])
    inf = np.array([[-9.0, -3.0, -1.0], [-3.0, -9.0, -1.0], [-2.0, -1.0, -9.0]])
    with_self = class_match(inf, y, y, k=1)
    without = class_match(inf, y, y, k=1, exclude_self=True)
    assert with_self.per_rank.tolist() == [1.0]
    assert without.per_rank[0] == pytest.approx(2 / 3)  # rows 0, 1 match each other; row 2 finds a 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(InterpError):
        class_match(np.zeros((2, 3)), np.zeros(2), np.zeros(4))


def test_exact_ties_are_broken_by_index_whatever_the_order_of_the_data():
    rng = np.random.default_rng(0)
    row = rng.normal(size=200)
    row[[150, 3, 77, 120]] = -10.0  # four duplicates of one training image, all most helpful
    row[[10, 190]] = -5.0
    inf = np.stack([row, row[::-1].copy()])
    top = most_helpful(inf, 6)
    assert top[0].tolist() == [3, 77, 120, 150, 10, 190]
    assert top[1].tolist() == [49, 79, 122, 196, 9, 189]
    # the same answer at every k: the k-th place among ties is not picked arbitrarily
    for k in (1, 2, 3, 5):
        assert most_helpful(inf, k).tolist() == top[:, :k].tolist()


def test_bootstrap_intervals_cover_the_rate_and_the_paired_difference_is_paired():
    from interp.metrics import bootstrap_interval, paired_difference

    rng = np.random.default_rng(1)
    values = (rng.random(400) < 0.3).astype(float)
    lo, hi = bootstrap_interval(values, n_boot=4000)
    se = values.std() / np.sqrt(len(values))
    assert lo < values.mean() < hi and abs((hi - lo) - 2 * 1.96 * se) < 0.2 * (hi - lo)  # the normal-theory width
    y_train = np.repeat(np.arange(4), 10)
    y_test = rng.integers(0, 4, 200)
    inf_a = rng.normal(size=(200, 40))
    inf_b = inf_a.copy()
    inf_b[:50] = rng.normal(size=(50, 40))  # b differs from a on a quarter of the rows only
    a, b = class_match(inf_a, y_test, y_train, k=5), class_match(inf_b, y_test, y_train, k=5)
    diff, low, high = paired_difference(a, b)["top1"]
    assert diff == pytest.approx(a.per_rank[0] - b.per_rank[0])
    assert low <= diff <= high
    # pairing: identical rows contribute zero variance, so the paired interval is narrower than the unpaired one
    unpaired = np.sqrt(a.rows["top1"].var() / 200 + b.rows["top1"].var() / 200) * 2 * 1.96
    assert high - low < unpaired


def test_ranking_agreement_refuses_k_past_the_row_and_skips_constant_rows_without_warning():
    import warnings

    a = np.array([[0.0, -1.0, 2.0], [1.0, 1.0, 1.0]])
    e = np.array([[0.0, -2.0, 1.0], [0.0, 1.0, 2.0]])
    with pytest.raises(InterpError, match="between 1 and 3"):
        ranking_agreement(a, e, k=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ranking_agreement(a, e, k=2)
    assert out["constant_rows"] == 1 and out["spearman"] == pytest.approx(1.0) and out["k"] == 2
