"""Cloze training examples: each preference pair encoded in both orders, and their batches."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ..data import LoadReport, PreferencePair, load_pairs, stratified_sample
from ..prompt import ClozeEncoder, Encoded, prefix_for_domain
from ..training.config import TrainConfig


def load_training_pairs(config: TrainConfig) -> LoadReport:
    """``config.data``, cut to ``config.max_pairs`` by a domain-stratified seeded sample when set."""
    report = load_pairs(config.data, skip_bad_rows=config.skip_bad_rows)
    if config.max_pairs and config.max_pairs < len(report.pairs):
        report.pairs = stratified_sample(report.pairs, config.max_pairs, config.seed)
    return report


class ClozeDataset(Dataset):
    """Pre-encoded training examples; each pair in both orders (or one seeded random order).

    ``domain_prefixes``: a pair whose ``domain`` is a key is encoded with that instruction; pairs
    without a domain, or of an unmapped one, with the encoder's own prefix.
    """

    def __init__(self, pairs: Sequence[PreferencePair], encoder: ClozeEncoder, order: str, seed: int,
                 domain_prefixes: dict[str, str] | None = None):
        if order not in ("both", "random"):
            raise ValueError(f"order must be 'both' or 'random', got {order!r}")
        rng = random.Random(seed)
        self.examples: list[tuple[Encoded, int]] = []
        self.truncated = 0
        for pair in pairs:
            prefix = prefix_for_domain(pair.domain, domain_prefixes, encoder.prefix)
            flips = (False, True) if order == "both" else (rng.random() < 0.5,)
            for flipped in flips:
                a, b = (pair.rejected, pair.chosen) if flipped else (pair.chosen, pair.rejected)
                enc = encoder.encode(pair.prompt, a, b, prefix=prefix)
                self.truncated += enc.truncated
                self.examples.append((enc, int(flipped)))  # label = index of the chosen response

        # Both orders of a pair are consecutive examples; GroupedSampler keeps them in one batch.
        self.group_size = 2 if order == "both" else 1

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        enc, label = self.examples[index]
        return {"input_ids": enc.input_ids, "encoding": enc, "labels": label}


def pad_sequences(encodings: Sequence, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` (and ``token_type_ids`` if present) of any encodings into tensors."""
    width = max(len(e.input_ids) for e in encodings)
    input_ids = torch.full((len(encodings), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encodings), width), dtype=torch.long)
    has_types = encodings[0].token_type_ids is not None
    types = torch.zeros((len(encodings), width), dtype=torch.long) if has_types else None
    for row, enc in enumerate(encodings):
        n = len(enc.input_ids)
        input_ids[row, :n] = torch.tensor(enc.input_ids)
        attention[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(enc.token_type_ids)
    batch = {"input_ids": input_ids, "attention_mask": attention}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def pad_batch(encodings: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors plus each row's mask position."""
    batch = pad_sequences(encodings, pad_id)
    batch["mask_positions"] = torch.tensor([e.mask_position for e in encodings], dtype=torch.long)
    return batch


@dataclass
class ClozeCollator:
    pad_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = pad_batch([f["encoding"] for f in features], self.pad_id)
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch
