"""Helpers shared by the int8 and adaptive-order tests."""

from __future__ import annotations

import torch

from tinyrm.pairwise.model import RewardModel
from tinyrm.tools.synthetic import generate


def varied_items(n: int, seed: int = 7) -> list[tuple[str, str, str]]:
    out = []
    for k, pair in enumerate(generate(n, seed=seed)):
        pad = " with some more words" * (k % 5) * 3
        out.append((pair.prompt + pad, pair.chosen, pair.rejected))
    return out


def opinionated_bert(path: str, items) -> RewardModel:
    """The tiny random BERT with a trained model's spread of P: the head's output scaled so the
    one-order logit gap (choice 0 - choice 1) has std ~2 around 0, i.e. P from ~0.05 to ~0.95 with
    some pairs near 0.5, where a quantisation error would flip decisions."""
    rm = RewardModel.from_pretrained(path, device="cpu")
    rm.engine.config.precision = "fp32"
    p = torch.tensor(rm.compare_batch(items, both_orders=False), dtype=torch.float64)
    gap = torch.log(p) - torch.log1p(-p)
    predictions = rm.model.cls.predictions
    scale = 2.0 / float(gap.std())
    with torch.no_grad():
        predictions.transform.LayerNorm.weight *= scale
        predictions.transform.LayerNorm.bias *= scale
        predictions.bias.mul_(scale)
        p = torch.tensor(rm.compare_batch(items, both_orders=False), dtype=torch.float64)
        predictions.bias[rm.answer_ids[0]] -= float((torch.log(p) - torch.log1p(-p)).mean())
    return rm
