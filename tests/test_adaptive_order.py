"""Adaptive order (tinyrm.inference.adaptive): which pairs get a second pass; speed: benchmarks/adaptive_order.py."""

from __future__ import annotations

import pytest
import torch

from tinyrm.backbone import encoder_of
from tinyrm.inference.adaptive import OrderStats
from tinyrm.pairwise.model import RewardModel

from .speed_helpers import opinionated_bert, varied_items


def _fp32(path: str) -> RewardModel:
    rm = RewardModel.from_pretrained(path, device="cpu")
    rm.engine.config.precision = "fp32"
    return rm


def test_auto_margin_half_is_both_orders(tiny_model: str) -> None:
    rm = _fp32(tiny_model)
    items = varied_items(14)
    assert rm.compare_batch(items, both_orders="auto", order_margin=0.5) == rm.compare_batch(items, both_orders=True)
    assert rm.engine.order_stats == OrderStats(pairs=14, second_passes=14)


def test_auto_margin_zero_is_one_order(tiny_model: str) -> None:
    rm = _fp32(tiny_model)
    items = varied_items(14)
    assert rm.compare_batch(items, both_orders="auto", order_margin=0.0) == rm.compare_batch(items, both_orders=False)
    assert rm.engine.order_stats == OrderStats(pairs=14, second_passes=0)
    assert rm.engine.order_stats.second_pass_fraction == 0.0


def test_auto_scores_exactly_the_undecided_pairs_twice(tiny_bert: str) -> None:
    items = varied_items(20)
    rm = opinionated_bert(tiny_bert, items)
    rm.engine.config.attention = "padded"  # the hook below reads the rows of the padded forward's batches
    one = rm.compare_batch(items, both_orders=False)
    both = rm.compare_batch(items, both_orders=True)
    margin = sorted(abs(p - 0.5) for p in one)[len(one) // 2]  # about half the pairs are "undecided"
    expected = {i for i, p in enumerate(one) if abs(p - 0.5) < margin}
    assert 0 < len(expected) < len(items)
    seen: list[torch.Tensor] = []
    hook = encoder_of(rm.engine.prepared().model).register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True)
    try:
        auto = rm.compare_batch(items, both_orders="auto", order_margin=margin, batch_size=8)
    finally:
        hook.remove()
    rows = [tuple(r[r != rm.tokenizer.pad_token_id].tolist()) for ids in seen for r in ids]
    given = [tuple(rm.encode(*it).input_ids) for it in items]
    swapped = [tuple(rm.encode(p, b, a).input_ids) for p, a, b in items]
    # Each given order once, and the swapped order of exactly the undecided pairs.
    assert sorted(rows) == sorted(given + [swapped[i] for i in expected])
    for i, (a, o, b) in enumerate(zip(auto, one, both)):
        if i in expected:
            assert a == pytest.approx(b, abs=1e-6)  # the both-orders average
        else:
            assert a == o  # the one-order P, untouched
    assert rm.engine.order_stats == OrderStats(pairs=20, second_passes=len(expected))
    single = rm.compare_batch(items[:1], both_orders="auto")[0]
    assert rm.compare(*items[0], both_orders="auto") == pytest.approx(single)


def test_auto_arguments_are_checked(tiny_bert: str) -> None:
    rm = _fp32(tiny_bert)
    items = varied_items(2)
    with pytest.raises(ValueError, match="both_orders"):
        rm.compare_batch(items, both_orders="sometimes")
    with pytest.raises(ValueError, match="order_margin"):
        rm.compare_batch(items, both_orders="auto", order_margin=0.7)
    with pytest.raises(ValueError, match="order_margin"):
        rm.compare_batch(items, both_orders=True, order_margin=0.1)
    assert rm.compare_batch(items, both_orders=None) == rm.compare_batch(items, both_orders=True)
