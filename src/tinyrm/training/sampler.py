"""``GroupedSampler``: both orders of a pair in the same micro-batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Sampler


class GroupedSampler(Sampler[int]):
    """Seeded shuffle of groups of ``group_size`` consecutive examples, each group kept together.

    With a pair's two orders in the same micro-batch, the labels of every batch are balanced and the
    part of the gradient that only moves the answer bias ("0" vs "1") cancels within the step; what
    is left is the content of the responses. Shuffled singly, each batch's label mix is random and
    that bias swings from step to step, which drowns the content signal of a freshly initialised head
    (measured in docs/training.md). ``group_by_length`` sorts groups by length within megabatches of
    ``megabatch`` groups, like transformers' LengthGroupedSampler.
    """

    def __init__(self, n_examples: int, group_size: int, seed: int, lengths: Sequence[int] | None = None,
                 megabatch: int = 0) -> None:
        if n_examples % group_size:
            raise ValueError(f"{n_examples} examples do not split into groups of {group_size}")
        self.n_groups, self.group_size, self.seed = n_examples // group_size, group_size, seed
        self.lengths, self.megabatch, self.epoch = lengths, megabatch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_groups * self.group_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        groups = torch.randperm(self.n_groups, generator=generator).tolist()
        if self.lengths is not None and self.megabatch > 1:
            size = self.megabatch
            groups = [g for start in range(0, len(groups), size)
                      for g in sorted(groups[start:start + size], key=lambda g: -self.lengths[g * self.group_size])]
        for group in groups:
            yield from range(group * self.group_size, (group + 1) * self.group_size)
