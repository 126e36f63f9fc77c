"""(prompt, response) inputs of the baselines: ``[CLS] prompt [SEP] response [SEP]``, scored one response at a time."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ...inference.batches import pad_rows
from ...prompt import allocate_budget, keep_end, keep_ends, text_ids


@dataclass
class ResponseEncoded:
    input_ids: list[int]
    token_type_ids: list[int] | None
    response_mask: list[int]  # 1 on the response's own tokens
    truncated: bool = False


class ResponseEncoder:
    """(prompt, response) -> ``[CLS] prompt [SEP] response [SEP]`` ids within ``max_length``.

    The prompt keeps its end (the latest turns), the response its head and tail (the final answer);
    the prompt keeps at least a quarter of the budget, as in the cloze encoder.
    """

    def __init__(self, tokenizer, max_length: int = 512, elision_marker: str = " ... ") -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.elision_marker = elision_marker
        sentinel = tokenizer.mask_token or tokenizer.unk_token
        sentinel_id = tokenizer.convert_tokens_to_ids(sentinel)
        # Learn the pair layout of this tokenizer's special tokens from a probe.
        probe = tokenizer(sentinel, sentinel)
        ids = list(probe["input_ids"])
        where = [i for i, t in enumerate(ids) if t == sentinel_id]
        if len(where) != 2:
            raise ValueError("could not infer the tokenizer's special-token layout")
        self.start, self.middle, self.end = ids[: where[0]], ids[where[0] + 1 : where[1]], ids[where[1] + 1 :]
        types = probe.get("token_type_ids")
        self.types = None if types is None else (list(types), where)
        self.marker = self._ids(elision_marker)
        fixed = len(self.start) + len(self.middle) + len(self.end)
        if max_length <= fixed + 1:
            raise ValueError(f"max_length={max_length} leaves no room for text ({fixed} special tokens)")
        self.avail = max_length - fixed

    def _ids(self, text: str) -> list[int]:
        return text_ids(self.tokenizer, text)

    def encode(self, prompt: str, response: str) -> ResponseEncoded:
        p_ids, r_ids = self._ids(prompt), self._ids(response)
        p_len, r_len, _ = allocate_budget(self.avail, len(p_ids), len(r_ids), 0)
        truncated = p_len < len(p_ids) or r_len < len(r_ids)
        p_ids, r_ids = keep_end(p_ids, p_len, self.marker), keep_ends(r_ids, r_len, self.marker)
        input_ids = self.start + p_ids + self.middle + r_ids + self.end
        first = len(self.start) + len(p_ids) + len(self.middle)
        response_mask = [0] * first + [1] * len(r_ids) + [0] * len(self.end)
        token_type_ids = None
        if self.types is not None:
            types, where = self.types
            token_type_ids = (types[: where[0]] + [types[where[0]]] * len(p_ids) + types[where[0] + 1 : where[1]]
                              + [types[where[1]]] * len(r_ids) + types[where[1] + 1 :])
        return ResponseEncoded(input_ids, token_type_ids, response_mask, truncated)


def pad_responses(encodings: Sequence[ResponseEncoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encodings into input_ids / attention_mask / response_mask (/ token_type_ids)."""
    return pad_rows(encodings, pad_id, ("response_mask",))


def length_batches(order: list[int], lengths: list[int], batch_size: int | None,
                   max_batch_tokens: int | None, packed: bool = False) -> Iterable[list[int]]:
    """Consecutive slices of ``order`` (ascending length) within the row and token caps: padded tokens
    (rows x longest), or with ``packed`` the real tokens of the batch."""
    for name, value in (("batch_size", batch_size), ("max_batch_tokens", max_batch_tokens)):
        if value is not None and value < 1:  # 0 read as "no cap" before, as the cloze engine refuses it
            raise ValueError(f"{name} must be >= 1, got {value}")
    rows = batch_size or (None if max_batch_tokens else 32)
    batch: list[int] = []
    real = 0
    for i in order:
        full = rows is not None and len(batch) >= rows
        cost = real + lengths[i] if packed else (len(batch) + 1) * lengths[i]
        over = max_batch_tokens is not None and batch and cost > max_batch_tokens
        if full or over:
            yield batch
            batch, real = [], 0
        batch.append(i)
        real += lengths[i]
    if batch:
        yield batch
