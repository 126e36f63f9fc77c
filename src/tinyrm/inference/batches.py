"""Batch planning and collation for the scoring engine (``inference.engine``): the host's share of a pass.

``plan_batches`` groups units (one encoding, or both orders of a pair) under a token budget: padded
tokens (rows x longest row) for the padded forward, real tokens (``tokens``) for the packed one
(``inference.packed``), where a batch costs what its sequences hold. ``host_batches`` plans and builds
each batch's CPU tensors (padded rows, or a packed stream), pinned where they go to a GPU; the engine
runs them (``InferenceEngine.run_batches``), the host pipeline builds them ahead (``inference.pipeline``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..prompt import Encoded
from .varlen import Packed, pack


def plan_batches(
    widths: Sequence[int], rows_per_unit: Sequence[int] | int = 1,
    max_batch_tokens: int | None = None, max_rows: int | None = None, tokens: Sequence[int] | None = None,
) -> list[list[int]]:
    """Group units (a single encoding, or both orders of a pair) into batches.

    Units are sorted longest first (the biggest batch runs first, so memory errors show at once);
    a batch grows while ``rows x longest width <= max_batch_tokens`` (with ``tokens``, each unit's real
    token count: while their sum ``<= max_batch_tokens``) and ``rows <= max_rows``.
    A unit that alone exceeds a limit still gets a batch of its own.
    """
    n = len(widths)
    rows = [rows_per_unit] * n if isinstance(rows_per_unit, int) else list(rows_per_unit)
    order = sorted(range(n), key=lambda i: (-widths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    current_rows = current_width = current_tokens = 0
    for i in order:
        new_rows = current_rows + rows[i]
        width = max(current_width, widths[i])
        new_tokens = current_tokens + (0 if tokens is None else tokens[i])
        cost = new_rows * width if tokens is None else new_tokens
        too_many = max_rows is not None and new_rows > max_rows
        too_big = max_batch_tokens is not None and cost > max_batch_tokens
        if current and (too_many or too_big):
            batches.append(current)
            current, new_rows, width = [], rows[i], widths[i]
            new_tokens = 0 if tokens is None else tokens[i]
        current.append(i)
        current_rows, current_width, current_tokens = new_rows, width, new_tokens
    if current:
        batches.append(current)
    return batches


def pair_units(n: int, both) -> list[list[int]]:
    """The units of ``n`` pairs: both orders of pair i (encodings i and n + i) share a batch, or one order."""
    return [[i, n + i] for i in range(n)] if both else [[i] for i in range(n)]


def pair_scores(probs: Sequence[float], n: int, both) -> list[float]:
    """P(a better) of ``n`` pairs from P(choice 0) of their encodings laid out as :func:`pair_units` has them:
    with ``both``, the mean of the given order and 1 - the swapped one (where choice 0 is b)."""
    return [(probs[i] + 1.0 - probs[n + i]) / 2.0 for i in range(n)] if both else list(probs)


def pad_rows(encodings: Sequence, pad_id: int, fields: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Right-pad to the batch's longest row: ``input_ids`` (``pad_id``), ``attention_mask``, ``token_type_ids``
    where the encodings have them and each of ``fields`` (0-filled). Each field is filled into one preallocated
    array: building nested Python lists and converting them cost the host ~4x more per token."""
    lengths = np.fromiter((len(e.input_ids) for e in encodings), dtype=np.int64, count=len(encodings))
    width = int(lengths.max())

    def rows(name: str, fill: int) -> torch.Tensor:
        out = np.full((len(encodings), width), fill, dtype=np.int64)
        for i, e in enumerate(encodings):
            out[i, : lengths[i]] = getattr(e, name)
        return torch.from_numpy(out)

    batch = {
        "input_ids": rows("input_ids", pad_id),
        "attention_mask": torch.from_numpy((np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)),
    }
    if encodings[0].token_type_ids is not None:
        batch["token_type_ids"] = rows("token_type_ids", 0)
    for name in fields:
        batch[name] = rows(name, 0)
    return batch


def collate(encodings: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """``pad_rows`` and each row's read position. Encodings with several read masks (``mask_positions`` lists:
    process verdicts) give them flattened, with ``mask_rows`` (``backbone.mask_logits``)."""
    batch = pad_rows(encodings, pad_id)
    if getattr(encodings[0], "mask_positions", None) is not None:  # several read masks per row (process verdicts)
        batch["mask_rows"] = torch.tensor([i for i, e in enumerate(encodings) for _ in e.mask_positions],
                                          dtype=torch.long)
        batch["mask_positions"] = torch.tensor([m for e in encodings for m in e.mask_positions], dtype=torch.long)
    else:
        batch["mask_positions"] = torch.tensor([e.mask_position for e in encodings], dtype=torch.long)
    return batch


@dataclass
class HostBatch:
    """One forward pass built on the host: its rows (indices into the encodings) and their tensors, a packed
    stream or padded rows (CPU; page-locked when built for a CUDA device). ``padding``: some padded row is
    shorter than the batch (known here, so the device is never asked)."""

    rows: list[int]
    packed: Packed | None = None
    padded: dict[str, torch.Tensor] | None = None
    padding: bool = False


def host_batches(encodings: Sequence[Encoded], units: Sequence[Sequence[int]], pad_id: int, packed: bool,
                 max_rows: int | None, budget: int | None, pin: bool = False,
                 by_tokens: bool | None = None) -> Iterator[HostBatch]:
    """The batches of ``units`` (``plan_batches``: by real tokens when ``by_tokens``, default ``packed``,
    else rows x width), each collated (``pack`` or ``collate``) as it is asked for; ``pin``: in page-locked
    memory, for non-blocking copies to a GPU. The encodings of a unit always share a batch."""
    widths = [max(len(encodings[j].input_ids) for j in unit) for unit in units]
    # A packed pass through varlen_attn costs its real tokens; a padded one, and a packed one whose attention
    # takes the SDPA route (a block padded to the longest row), rows x its longest row.
    by_tokens = packed if by_tokens is None else by_tokens and packed
    tokens = [sum(len(encodings[j].input_ids) for j in unit) for unit in units] if by_tokens else None
    for batch_units in plan_batches(widths, [len(u) for u in units], budget, max_rows, tokens):
        rows = [j for u in batch_units for j in units[u]]
        chosen = [encodings[j] for j in rows]
        if packed:
            stream = pack(chosen)
            yield HostBatch(rows, packed=stream.pin_memory() if pin else stream)
        else:
            tensors = collate(chosen, pad_id)
            padding = len({len(e.input_ids) for e in chosen}) > 1
            yield HostBatch(rows, padded={k: v.pin_memory() for k, v in tensors.items()} if pin else tensors,
                            padding=padding)
