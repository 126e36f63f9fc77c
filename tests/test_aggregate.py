import math

import pytest

from tinyrm.process.aggregate import METHODS, aggregate, rank_key

SCORES = [0.9, 0.6, 0.3, 0.8]


@pytest.mark.parametrize(("method", "expected"), [
    ("min", 0.3),
    ("product", 0.9 * 0.6 * 0.3 * 0.8),
    ("mean", (0.9 + 0.6 + 0.3 + 0.8) / 4),
    ("last", 0.8),
    ("geometric_mean", (0.9 * 0.6 * 0.3 * 0.8) ** 0.25),
    ("first_error", 2.0),
])
def test_hand_example(method, expected):
    assert aggregate(SCORES, method) == pytest.approx(expected)


def test_first_error_threshold_and_no_error():
    assert aggregate(SCORES, "first_error", threshold=0.65) == 1.0
    assert aggregate(SCORES, "first_error", threshold=0.2) == 4.0  # no step flagged: len(scores)
    assert aggregate([0.1, 0.9], "first_error") == 0.0


@pytest.mark.parametrize("method", [m for m in METHODS if m != "first_error"])
def test_empty_and_one_step(method):
    assert aggregate([], method) == 1.0
    assert aggregate([0.42], method) == pytest.approx(0.42)


def test_first_error_empty_and_one_step():
    assert aggregate([], "first_error") == 0.0
    assert aggregate([0.2], "first_error") == 0.0
    assert aggregate([0.7], "first_error") == 1.0


def test_geometric_mean_has_no_length_penalty_but_product_does():
    short, long = [0.8] * 2, [0.8] * 20
    assert aggregate(long, "product") < aggregate(short, "product")
    assert aggregate(long, "geometric_mean") == pytest.approx(aggregate(short, "geometric_mean"))
    assert aggregate([0.5, 0.0], "geometric_mean") == 0.0
    assert math.isfinite(aggregate([1e-5] * 500, "geometric_mean"))


def test_rank_key_orders_products_that_underflow():
    weak, weaker = [0.01] * 170, [0.009] * 170  # both products are 0.0 in floating point
    assert aggregate(weak, "product") == aggregate(weaker, "product") == 0.0
    assert rank_key(weak, "product") > rank_key(weaker, "product") > rank_key([0.5, 0.0], "product") == -math.inf
    assert rank_key([0.3, 0.9], "min") == aggregate([0.3, 0.9], "min")
    assert rank_key([0.3, 0.9], "first_error", 0.5) == 0.0


def test_bad_input():
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate([0.5], "max")
    with pytest.raises(ValueError, match="probabilities"):
        aggregate([0.5, 1.5], "mean")
    with pytest.raises(ValueError, match="probabilities"):
        aggregate([float("nan")], "min")


@pytest.mark.parametrize("threshold", [float("nan"), 2, -0.1, float("inf"), "0.5", None, True])
def test_a_threshold_that_is_not_a_probability_is_refused(threshold):
    # NaN flagged no step (first_error = len(scores)) and 2 every step (0), without a word.
    with pytest.raises(ValueError, match=r"threshold must be a probability in \[0, 1\], got"):
        aggregate([0.9, 0.2], "first_error", threshold=threshold)
    with pytest.raises(ValueError, match="threshold"):
        rank_key([0.9, 0.2], "first_error", threshold)


def test_threshold_bounds_and_numpy_values_are_accepted():
    import numpy as np

    assert aggregate([0.9, 0.2], "first_error", threshold=0.0) == 2.0
    assert aggregate([0.9, 1.0], "first_error", threshold=1.0) == 0.0
    assert aggregate([0.9, 0.2], "first_error", threshold=np.float32(0.5)) == 1.0
