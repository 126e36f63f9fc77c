"""Tokenisation for scoring: :class:`CachingClozeEncoder`, the engine's ``ClozeEncoder``.

Each distinct text is tokenised once (prompts repeat across pairs, and both orders reuse every text), and
``prefetch`` tokenises a chunk ahead in two batched tokenizer calls: the texts, then the whole-pair encodings
that ``encode`` reads for every pair that fits ``max_length``. The Rust tokenizer releases the GIL and spreads
a batch over its own threads, so the host pipeline's workers (``inference.pipeline``) run it beside the
device. Thread-safe for the pipeline: the caches are plain dicts (single operations under the GIL), and a
miss only means tokenising that text again, with the same ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..prompt import ClozeEncoder

PairInput = tuple[str, str, str]


class CachingClozeEncoder(ClozeEncoder):
    """``ClozeEncoder`` that tokenises each distinct text once and can batch-tokenise ahead."""

    def __init__(self, *args, cache_size: int = 50_000, **kwargs) -> None:
        self._cache: dict[str, list[int]] = {}
        # Whole-pair encodings tokenised ahead by prefetch, each taken (popped) by the encode that needs it.
        self._joint: dict[tuple[str, str], tuple[list[int], list[int] | None]] = {}
        self.cache_size = cache_size
        self.hits = self.misses = 0
        super().__init__(*args, **kwargs)

    def _ids(self, text: str) -> list[int]:
        cached = self._cache.get(text)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        ids = super()._ids(text)
        self._store(text, ids)
        return ids

    def _tokenize_joint(self, first: str, second: str) -> tuple[list[int], list[int] | None]:
        ahead = self._joint.pop((first, second), None)
        return ahead if ahead is not None else super()._tokenize_joint(first, second)

    def clear_cache(self) -> None:
        """Forget every tokenised text (training calls it after each batch it encodes)."""
        self._cache.clear()
        self._joint.clear()

    def _store(self, text: str, ids: list[int]) -> None:
        if len(self._cache) >= self.cache_size:
            self._cache.clear()  # cheap bound; a rolling window is not worth the bookkeeping
        self._cache[text] = ids

    def prefetch(self, items: Iterable[PairInput], prefixes: Sequence[str | None] | None = None,
                 both: bool = False) -> None:
        """Tokenise ahead in two batched tokenizer calls (the Rust tokenizer releases the GIL and spreads a
        batch over its own threads): the uncached texts of ``items``, then the whole-pair encodings that
        ``encode`` reads for every pair that fits ``max_length`` (``_encode_joint``), in the given order and,
        with ``both``, the swapped one. Same ids as tokenising one at a time.

        ``prefixes``: each item's instruction (None: ``self.prefix``), as later given to ``encode``.
        """
        items = list(items)
        rows = prefixes if prefixes is not None else [None] * len(items)
        orders = []
        for (prompt, a, b), prefix in zip(items, rows):
            instruction = self.prefix if prefix is None else prefix
            orders.append({"instruction": instruction, "prompt": prompt, "a": a, "b": b})
            if both:
                orders.append({"instruction": instruction, "prompt": prompt, "a": b, "b": a})
        pieces = [[text for parts in (self.template.first, self.template.second)
                   for kind, text in self._pieces(parts, values) if kind != "mask"] for values in orders]
        todo = dict.fromkeys(text for row in pieces for text in row if text not in self._cache)
        if todo:  # literals too: they vary with carried spaces
            texts = list(todo)
            # verbose=False: pieces longer than the model are cut by the encoder, not passed on (no length warning).
            encoded = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
            for text, ids in zip(texts, encoded):
                self._store(text, list(ids))
        fixed = 1 + sum(len(x) for x in self._layout)  # the mask and the special tokens around the segments
        joint = dict.fromkeys(self._joint_texts(values) for values, row in zip(orders, pieces)
                              if fixed + sum(len(self._cache.get(text, ())) for text in row) <= self.max_length)
        if not joint:  # every pair is cut to fit: encode builds those from the pieces
            return
        keys = list(joint)
        encoded = self.tokenizer([k[0] for k in keys], [k[1] for k in keys], verbose=False)
        types = encoded.get("token_type_ids")
        if len(self._joint) + len(keys) > self.cache_size:
            self._joint.clear()
        for i, key in enumerate(keys):
            self._joint[key] = (list(encoded["input_ids"][i]), None if types is None else list(types[i]))
