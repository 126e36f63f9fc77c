import pytest

from tinyrm import RewardModel


@pytest.fixture
def rm(tiny_modernbert):
    return RewardModel.from_pretrained(tiny_modernbert, device="cpu")


def fp32(path) -> RewardModel:
    rm = RewardModel.from_pretrained(str(path), device="cpu")
    rm.engine.config.precision = "fp32"  # bf16 on a bf16-native CPU rounds these P to (or within 1e-7 of) 0.5
    return rm


def assert_spread(probs: list[float], tol: float) -> None:
    """Each P far from 0.5 and from each other (tiny_modernbert's sit within 1e-5 of 0.5): a reordered, re-initialised
    or constant answer cannot then match within ``tol``."""
    ordered = sorted([0.5, *probs])
    assert min(b - a for a, b in zip(ordered, ordered[1:])) > 10 * tol, probs


def test_both_orders_average_single_orders(rm):
    items = [("What is 2 + 2?", "4", "5"), ("Say hi", "hi", "bye there")]
    forward = rm.compare_batch(items, both_orders=False)
    swapped = rm.compare_batch([(p, b, a) for p, a, b in items], both_orders=False)
    both = rm.compare_batch(items)
    for f, s, m in zip(forward, swapped, both):
        assert m == pytest.approx((f + 1 - s) / 2, abs=1e-6)
    # averaging over both orders makes the judgement antisymmetric
    flipped = rm.compare_batch([(p, b, a) for p, a, b in items])
    for m, fl in zip(both, flipped):
        assert m + fl == pytest.approx(1.0, abs=1e-6)


def test_batching_does_not_change_scores_and_keeps_input_order(spread_bert):
    rm = fp32(spread_bert)
    items = [(f"prompt {i}", "short", "a much longer answer " * (i % 5 + 1)) for i in range(11)]
    one = [rm.compare(*item) for item in items]
    assert_spread(one, 1e-5)
    batched = rm.compare_batch(items, batch_size=4)
    assert batched == pytest.approx(one, abs=1e-5)


def test_save_and_load_round_trip(spread_bert, tmp_path):
    rm = fp32(spread_bert)
    items = [("q", "a", "b"), ("q2", "long answer", "x")]
    before = rm.compare_batch(items)
    assert_spread(before, 1e-6)
    rm.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "tinyrm.json").is_file()
    loaded = fp32(tmp_path / "saved")
    assert loaded.compare_batch(items) == pytest.approx(before, abs=1e-6)
    assert loaded.config.prefix == rm.config.prefix and loaded.config.answer_tokens == ["0", "1"]


def test_template_override_for_published_checkpoints(tiny_bert):
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu", template="tinyrm", prefix="Which response is safer?")
    ids = rm.encode("q", "a", "b").input_ids
    expected = rm.tokenizer("Which response is safer?Question: q Choice 0: a",
                            f" Choice 1: bAnswer: {rm.tokenizer.mask_token}")["input_ids"]
    assert ids == expected
    with pytest.raises(TypeError, match="unknown option"):
        RewardModel.from_pretrained(tiny_bert, device="cpu", not_an_option=1)


def test_scoring_options_of_the_wrong_kind_are_refused(rm, tiny_bert, tmp_path):
    """Each was read another way without a word: a str of domains as one domain per character, calibrated="no" as
    True, a baseline's batch_size=0 as 32."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tinyrm import load

    items = [("q", "a", "b"), ("q", "b", "a")]
    with pytest.raises(TypeError, match="domains must be a list"):
        rm.compare_batch(items, domains="cd")
    with pytest.raises(TypeError, match=r"domains\[1\] must be a str or None, got int"):
        rm.compare_batch(items, domains=["code", 3])
    with pytest.raises(TypeError, match="calibrated must be True, False or None"):
        rm.compare("q", "a", "b", calibrated="no")
    assert len(rm.compare_batch(items, domains=["code", None], calibrated=False)) == 2
    folder = tmp_path / "classifier"
    AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(folder)
    baseline = load(str(folder))
    for option in ({"batch_size": 0}, {"max_batch_tokens": 0}):
        with pytest.raises(ValueError, match=f"{next(iter(option))} must be >= 1, got 0"):
            baseline.compare_batch(items, **option)
