"""Tokenisation for scoring: :class:`CachingClozeEncoder`, the engine's ``ClozeEncoder``.

Each distinct text is tokenised once (prompts repeat across pairs, and both orders reuse every text), and
``prefetch`` tokenises a chunk ahead in batched tokenizer calls: the texts, then the whole-pair encodings of
every pair that fits ``max_length`` (only where ``tinyrm.piecewise`` cannot prove that its pieces laid end to
end are those ids; that call was two thirds of the tokenizer's work), from which it builds those pairs'
finished ``Encoded`` rows (what ``encode`` would return; ``encode`` then only looks them up). The batched
calls go straight to the Rust tokenizer (:func:`batch_ids`) where that is exactly what transformers' call
would do: it releases the GIL and spreads a batch over its own threads, and skipping transformers' per-row
conversion (offsets, attention masks, a dict per row) was 13% of the host's time at 512 tokens. Thread-safe
for the host pipeline's workers (``inference.pipeline``): the caches are plain dicts (single operations under
the GIL), and a miss only means encoding that pair again, with the same ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..prompt import ClozeEncoder, Encoded, check_texts

PairInput = tuple[str, str, str]
TextOrPair = str | tuple[str, str]


def rust_tokenizer(tokenizer):
    """The ``tokenizers.Tokenizer`` behind ``tokenizer`` when calling it directly gives exactly the ids of
    ``tokenizer(inputs)`` with no truncation or padding: a fast tokenizer whose backend has neither set (a
    transformers call with ``truncation=True`` leaves it set until the next call) and splits special tokens as
    transformers would. None otherwise (a slow tokenizer, an older ``tokenizers``): use the transformers call."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None
    split = bool(getattr(tokenizer, "split_special_tokens", False))
    if bool(getattr(backend, "encode_special_tokens", False)) != split:
        return None
    return backend


def check_pairs(items: Sequence[object], fields: Sequence[str] = ("prompt", "a", "b")) -> None:
    """``TypeError`` naming the item and field that is not text, before any work (the encoder's own error
    would be a bare ``can only concatenate str``). ``fields``: what each item holds."""
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != len(fields):
            raise TypeError(f"item {i}: expected ({', '.join(fields)}), got {item!r:.60}")
        for name, text in zip(fields, item):
            if not isinstance(text, str):
                raise TypeError(f"item {i}: {name} is {type(text).__name__}, not str")


def batch_ids(tokenizer, inputs: Sequence[TextOrPair], add_special_tokens: bool,
              types: bool) -> tuple[list[list[int]], list[list[int]] | None]:
    """(input ids, token type ids or None) of each text or text pair in one batched call: the Rust tokenizer's
    ``encode_batch_fast`` (no offsets) where :func:`rust_tokenizer` allows, else ``tokenizer(...)``.
    ``types``: also return token type ids (a tokenizer whose model reads them)."""
    backend = rust_tokenizer(tokenizer)
    if backend is not None:
        try:
            rows = backend.encode_batch_fast(list(inputs), add_special_tokens=add_special_tokens)
        except TypeError:
            check_texts(inputs)
            raise
        return [row.ids for row in rows], [row.type_ids for row in rows] if types else None
    pairs = bool(inputs) and isinstance(inputs[0], tuple)
    first = [x[0] for x in inputs] if pairs else list(inputs)
    second = [x[1] for x in inputs] if pairs else None
    # verbose=False: over-long pieces are cut by the encoder, not passed on (no length warning).
    try:
        encoded = tokenizer(first, second, add_special_tokens=add_special_tokens, verbose=False)
    except (TypeError, ValueError):
        check_texts(inputs)
        raise
    found = encoded.get("token_type_ids") if types else None
    return [list(ids) for ids in encoded["input_ids"]], None if found is None else [list(t) for t in found]


class CachingClozeEncoder(ClozeEncoder):
    """``ClozeEncoder`` that tokenises each distinct text once and can batch-tokenise ahead."""

    def __init__(self, *args, cache_size: int = 50_000, **kwargs) -> None:
        self._cache: dict[str, list[int]] = {}
        # Finished encodings built by prefetch, keyed by (instruction, prompt, a, b), each taken (popped) by the
        # encode that asks for it.
        self._ready: dict[tuple[str, str, str, str], Encoded] = {}
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

    def encode(self, prompt: str, a: str, b: str, prefix: str | None = None) -> Encoded:
        ready = self._ready.pop((self.prefix if prefix is None else prefix, prompt, a, b), None)
        return ready if ready is not None else super().encode(prompt, a, b, prefix)

    def clear_cache(self) -> None:
        """Forget every tokenised text (training calls it after each batch it encodes)."""
        self._cache.clear()
        self._ready.clear()

    def _store(self, text: str, ids: list[int]) -> None:
        if len(self._cache) >= self.cache_size:
            self._cache.clear()  # cheap bound; a rolling window is not worth the bookkeeping
        self._cache[text] = ids

    def prefetch(self, items: Iterable[PairInput], prefixes: Sequence[str | None] | None = None,
                 both: bool = False) -> None:
        """Tokenise ahead in at most two batched tokenizer calls: the uncached texts of ``items``, then the
        whole pairs of the rows that fit ``max_length`` (in the given order and, with ``both``, the swapped one)
        and are not proven equal to their pieces (``tinyrm.piecewise``: those are laid out from the pieces);
        each such row's ``Encoded`` is built here, exactly what ``encode`` returns for it (the same ids as
        tokenising one at a time).

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
        segments = [[self._pieces(parts, values) for parts in (self.template.first, self.template.second)]
                    for values in orders]
        # This chunk's ids by text, kept here: the shared cache may be cleared while it fills.
        known = {text: self._cache.get(text) for segs in segments for seg in segs for kind, text in seg
                 if kind != "mask"}
        todo = [text for text, ids in known.items() if ids is None]
        if todo:  # literals too: they vary with carried spaces
            for text, ids in zip(todo, batch_ids(self.tokenizer, todo, False, False)[0]):
                known[text] = ids
                self._store(text, ids)
        if len(self._ready) + len(orders) > self.cache_size:
            self._ready.clear()
        # A row whose pieces fit takes encode's whole-pair branch (the pieces' ids, the user text's mask tokens
        # not yet removed, are at least as long as what encode counts), so its Encoded can be built here: from
        # the pieces where tinyrm.piecewise proves them equal to the whole pair, else from the whole pair.
        fixed = sum(len(x) for x in self._layout)  # the special tokens around the segments
        rule, mask, masked = self._piecewise, self.mask_id, self.mask_piece
        joint = {}
        for values, segs in zip(orders, segments):
            parts = [[masked if kind == "mask" else known[text] for kind, text in seg] for seg in segs]
            if fixed + sum(map(len, parts[0])) + sum(map(len, parts[1])) > self.max_length:
                continue  # cut to fit: encode builds it from the pieces
            key = (values["instruction"], values["prompt"], values["a"], values["b"])
            if rule is not None and rule.clean(values):
                self._ready[key] = Encoded(*self._laid_out(*parts), False)
            else:
                joint[key] = self._joint_texts(values)
        if not joint:
            return
        keys = list(joint)
        ids, types = batch_ids(self.tokenizer, list(joint.values()), True, self._types is not None)
        for i, key in enumerate(keys):
            row = ids[i]
            # encode's own test of the whole pair (prompt.ClozeEncoder._encode_joint); a row failing it is left
            # to encode, which cuts it from the pieces.
            if len(row) <= self.max_length and row.count(mask) == 1:
                self._ready[key] = Encoded(row, None if types is None else types[i], row.index(mask), False)
