"""Cloze training examples: each preference pair encoded in both orders, and their batches.

The examples are rows of a memory-mapped Arrow table (``tinyrm.arrow``): tokenised once by
``Dataset.map`` and cached on disk, read by index while training.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch.utils.data import Dataset

from ..arrow import (
    PairTable,
    TemporaryCacheDir,
    has_token_types,
    load_pair_table,
    resolve_cache_dir,
    tokenizer_signature,
)
from ..data import PreferencePair
from ..inference.batches import collate
from ..inference.varlen import pack
from ..prompt import ClozeEncoder, Encoded, prefix_for_domain
from ..training.config import TrainConfig


def load_training_pairs(config: TrainConfig) -> PairTable:
    """``config.data`` as a cached pairs table, cut to ``config.max_pairs`` by a domain-stratified
    seeded sample when set (the same pairs as ``stratified_sample``). ``config.length_balance``:
    the chosen response is the longer one in exactly half of each domain's pairs, and the rows come
    in couples (one of each direction) that :func:`pair_group_size` keeps in one micro-batch."""
    folder = None if config.data_cache else TemporaryCacheDir()  # --no-cache: one run's own folder
    cache = resolve_cache_dir(config.cache_dir) if folder is None else folder.path
    table = load_pair_table(config.data, skip_bad_rows=config.skip_bad_rows, cache_dir=cache)
    table = replace(table, keepalive=folder)
    if config.length_balance:
        return table.length_balanced(config.max_pairs, config.seed)
    return table.sample(config.max_pairs, config.seed)


def pair_group_size(examples_per_pair: int, config: TrainConfig) -> int:
    """Consecutive examples the sampler keeps in one micro-batch: a pair's examples (both orders),
    and with ``--length-balance`` a couple of pairs, one whose chosen response is the longer and one
    whose is the shorter, so every micro-batch holds the balance, not only the epoch."""
    return examples_per_pair * (2 if config.length_balance else 1)


def column_sum(rows, name: str) -> int:
    """The sum of an Arrow column (0 for an empty table), read without decoding rows."""
    import pyarrow.compute as pc

    total = pc.sum(rows.data.column(name)).as_py()
    return int(total or 0)


class EncodedRows(Dataset):
    """A torch ``Dataset`` over the rows of an encoded Arrow table, with the facts the trainer reads:
    ``group_size`` (consecutive rows kept in one micro-batch), ``lengths`` and ``truncated``."""

    group_size = 1

    def __init__(self, rows, keepalive=None) -> None:
        self.rows = rows  # a datasets.Dataset (memory-mapped unless built in memory)
        self.keepalive = keepalive  # the temporary folder of the rows' file, if any (PairTable.keepalive)
        self.truncated = column_sum(rows, "truncated")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> list[int]:
        """Each example's length in tokens (for length-grouped sampling)."""
        return self.rows.data.column("length").to_pylist()


class ClozeDataset(EncodedRows):
    """Training examples; each pair in both orders (or one seeded random order), as Arrow rows.

    ``pairs``: a :class:`PairTable` (cached: encoded once per table and settings, then reused) or
    Python pairs (encoded in memory). ``domain_prefixes``: a pair whose ``domain`` is a key is
    encoded with that instruction; pairs without a domain, or of an unmapped one, with the
    encoder's own prefix. Rows ``2i`` and ``2i + 1`` are the two orders of pair ``i``.
    """

    def __init__(self, pairs: PairTable | Sequence[PreferencePair], encoder: ClozeEncoder, order: str, seed: int,
                 domain_prefixes: dict[str, str] | None = None):
        import datasets

        if order not in ("both", "random"):
            raise ValueError(f"order must be 'both' or 'random', got {order!r}")
        table = pairs if isinstance(pairs, PairTable) else PairTable.from_pairs(pairs)
        flips = None
        if order == "random":
            rng = random.Random(seed)
            flips = [rng.random() < 0.5 for _ in range(len(table))]
        with_types = has_token_types(encoder.tokenizer)
        columns = {"input_ids": datasets.List(datasets.Value("int32")), "mask_position": datasets.Value("int32"),
                   "labels": datasets.Value("int8"), "truncated": datasets.Value("bool"),
                   "diff_kept": datasets.Value("bool"),
                   "length": datasets.Value("int32"), "pair": datasets.Value("int32")}
        if with_types:
            columns["token_type_ids"] = datasets.List(datasets.Value("int8"))

        def encode(batch: dict, indices: list[int]) -> dict:
            out: dict[str, list] = {name: [] for name in columns}
            for j, index in enumerate(indices):
                prompt, chosen, rejected = batch["prompt"][j], batch["chosen"][j], batch["rejected"][j]
                prefix = prefix_for_domain(batch["domain"][j], domain_prefixes, encoder.prefix)
                for flipped in (False, True) if flips is None else (flips[index],):
                    a, b = (rejected, chosen) if flipped else (chosen, rejected)
                    enc = encoder.encode(prompt, a, b, prefix=prefix)
                    out["input_ids"].append(enc.input_ids)
                    out["mask_position"].append(enc.mask_position)
                    out["labels"].append(int(flipped))  # label = index of the chosen response
                    out["truncated"].append(bool(enc.truncated))
                    out["diff_kept"].append(bool(enc.diff_kept))
                    out["length"].append(len(enc.input_ids))
                    out["pair"].append(index)
                    if with_types:
                        out["token_type_ids"].append(enc.token_type_ids)
            # The scoring encoder's token cache pays off within a pair (both orders), not across a
            # training set: kept, it held every text's ids as Python lists (~190 MiB on the shared data).
            clear = getattr(encoder, "clear_cache", None)
            if clear is not None:
                clear()
            return out

        settings = {"tokenizer": tokenizer_signature(encoder.tokenizer), "template": encoder.template.to_dict(),
                    "prefix": encoder.prefix, "domain_prefixes": domain_prefixes or None,
                    "max_length": encoder.max_length, "elision_marker": encoder.elision_marker,
                    "truncation": encoder.truncation, "diff_context": encoder.diff_context,
                    "order": order, "seed": seed if order == "random" else None}
        super().__init__(table.encode("cloze", encode, datasets.Features(columns), settings,
                                      desc="tokenising (cloze)"), table.keepalive)
        self.with_types = with_types
        # Examples whose differing content survived truncation (all of them when nothing was cut).
        self.diff_kept = column_sum(self.rows, "diff_kept")
        # Both orders of a pair are consecutive examples; GroupedSampler keeps them in one batch.
        self.group_size = 2 if order == "both" else 1

    def example(self, index: int) -> tuple[Encoded, int]:
        """Example ``index`` as the encoder returned it, and its label."""
        enc, label, _ = self._decode(self.rows[index])
        return enc, label

    def _decode(self, row: dict) -> tuple[Encoded, int, int]:
        types = row["token_type_ids"] if self.with_types else None
        enc = Encoded(row["input_ids"], types, row["mask_position"], row["truncated"], row["diff_kept"])
        return enc, row["labels"], row["pair"]

    def __getitem__(self, index: int) -> dict:
        enc, label, pair = self._decode(self.rows[index])
        # "pair": the row of the pairs table (the collator drops it; tests read which pairs a batch holds).
        return {"input_ids": enc.input_ids, "encoding": enc, "labels": label, "pair": pair}


@dataclass
class ClozeCollator:
    """Right-padded rows, or with ``packed`` one packed batch (``Packed.inputs``: the flat token stream,
    ``cu_seqlens``, positions restarting per sequence, each mask's position in the flat stream); and labels."""

    pad_id: int
    packed: bool = False

    def __call__(self, features: list[dict]) -> dict:
        encodings = [f["encoding"] for f in features]
        batch = pack(encodings).inputs() if self.packed else collate(encodings, self.pad_id)
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch
