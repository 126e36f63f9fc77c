"""When a pair's pieces, tokenised apart, give exactly the ids of the whole pair: :func:`piecewise_rule`.

``ClozeEncoder`` tokenises the slots (instruction, prompt, a, b) and the template's literals once each, and
assembles cut pairs from those pieces. A pair that fits is tokenised again as a whole, in both orders, because
pieces tokenised apart can differ from the whole where the template glues text to a slot (the published
TinyRM format writes ``b + "Answer: "``), and checkpoints were trained on the whole. That second call was two
thirds of the host's tokenizer work. This module proves, from the tokenizer's own definition and the
template, when the assembled pieces are the whole pair's ids for every text, so that call can be skipped.

The argument: a fast tokenizer normalises per character, splits the normalised text into pre-tokens, and
encodes each pre-token on its own. If every point where two pieces meet is a pre-token boundary in the whole
text, and normalisation does not cross it, the whole text's tokens are the pieces' tokens laid end to end.
``_pieces`` moves whitespace onto the following piece, so a junction is a boundary when the right-hand piece
starts with whitespace, which holds for every text when the literal on the right starts with whitespace or
the literal on the left ends with it (the carried whitespace). Pre-tokenizers for which a leading space
starts a new pre-token: the whitespace splitters (BERT's, ``Whitespace``, ``WhitespaceSplit``, which also
drop whitespace) and GPT-2's byte-level regex (``ByteLevel``, ``use_regex`` on, no prefix space), where
whitespace does become tokens, so three more things must hold there: text before the mask (its whitespace
is dropped by ``_pieces``) needs a mask that strips whitespace on its left (ModernBERT's does), nothing
after the mask may have its whitespace stripped by the mask, and a slot ending a segment must not end in
whitespace (trailing whitespace becomes tokens in the whole): that, and user text spelling the mask token
(removed from the whole text, from the ids of a piece), are checked per pair (:meth:`PiecewiseRule.clean`).
Anything else (other normalisers or pre-tokenizers, a slow tokenizer, added tokens that strip whitespace,
match single words or contain whitespace, BPE dropout) keeps the whole-pair call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

# Normalisers that map each character on its own (BertNormalizer's CJK padding and control-character
# removal included); NFC/NFKC compose only a base character with the marks after it, and a junction is
# whitespace on the right.
LOCAL_NORMALIZERS = frozenset({"BertNormalizer", "Lowercase", "NFD", "NFKD", "NFC", "NFKC", "StripAccents"})
WHITESPACE_SPLITTERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})
LOCAL_SPLITTERS = frozenset({"Punctuation", "Digits"})  # only beside a whitespace splitter
MODELS = frozenset({"WordPiece", "WordLevel", "BPE"})


# Whitespace to str.isspace() / str.rstrip() (which split the pieces) but not to the tokenizers' pre-tokenizers,
# which keep them glued to the word before: a text holding one is tokenised whole.
SEPARATOR_CONTROLS = frozenset("\x1c\x1d\x1e\x1f")


@dataclass(frozen=True)
class PiecewiseRule:
    """Pieces give the whole pair for this tokenizer and template; :meth:`clean` says it per pair."""

    mask_token: str
    end_slots: tuple[str, ...]  # slots ending a segment whose trailing whitespace would be tokens (byte level)

    def clean(self, values: dict[str, str]) -> bool:
        """Whether this pair's pieces give its whole-pair ids (``values``: the template's slot values)."""
        mask = self.mask_token
        if any(text and mask in text for text in values.values()):
            return False  # removed from the whole text, from a piece's ids: they differ
        if any(text and not SEPARATOR_CONTROLS.isdisjoint(text) for text in values.values()):
            return False
        for slot in self.end_slots:
            text = values.get(slot, "")
            if not text or text[-1].isspace():
                return False
        return True


def piecewise_rule(tokenizer, first: Sequence[str], second: Sequence[str]) -> PiecewiseRule | None:
    """The rule for ``tokenizer`` and a template's two segments of parts (literals and ``{slot}`` names), or
    None where pieces may differ from the whole pair (then the whole pair is tokenised, as before)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    mask = getattr(tokenizer, "mask_token", None)
    if backend is None or mask is None:
        return None
    try:  # the components' own definitions (not backend.to_str(), which serialises the whole vocabulary)
        normalizer, pre_tokenizer = (_definition(part) for part in (backend.normalizer, backend.pre_tokenizer))
        model = backend.model
        added_tokens = list(backend.get_added_tokens_decoder().values())
    except (AttributeError, TypeError, ValueError):
        return None
    kind = _pre_tokenizer_kind(pre_tokenizer)
    if (kind is None or not _local_normalizer(normalizer) or type(model).__name__ not in MODELS
            or getattr(model, "dropout", None)):
        return None
    mask_spec = None
    for added in added_tokens:
        if added.single_word or any(c.isspace() for c in added.content):
            return None  # matched by word, or across a junction's whitespace: only in the whole text
        if added.content == mask:
            mask_spec = added
        elif kind == "byte_level" and (added.lstrip or added.rstrip):
            return None  # in user text it would take whitespace that the pieces keep
    if mask_spec is None:
        return None
    end_slots = []
    for parts in (first, second):
        for left, right in zip(parts, parts[1:]):
            if "{mask}" in (left, right):
                continue
            if not (_literal(right) and right[:1].isspace()) and not (_literal(left) and left[-1:].isspace()):
                return None  # glued: the whole text may merge across it
        if kind != "byte_level" or not parts:
            continue
        if "{mask}" in parts:
            at = parts.index("{mask}")
            before = parts[at - 1] if at else None
            glued = before is not None and _literal(before) and not before[-1:].isspace()
            if before is not None and not glued and not mask_spec.lstrip:
                return None  # whitespace before the mask: tokens in the whole, dropped by _pieces
            if at + 1 < len(parts) and mask_spec.rstrip:
                return None  # the mask would take the whitespace the next piece keeps
            if at == len(parts) - 1:
                continue
        last = parts[-1]
        if _literal(last):
            if last[-1:].isspace():
                return None  # trailing whitespace: tokens in the whole, dropped by _pieces
        else:
            end_slots.append(last[1:-1])
    return PiecewiseRule(mask, tuple(end_slots))


def _definition(component) -> dict | None:
    """A tokenizer component's definition (its tokenizer.json entry), or None where it has none."""
    return None if component is None else json.loads(component.__getstate__())


def _literal(part: str) -> bool:
    return not (part.startswith("{") and part.endswith("}"))


def _local_normalizer(spec: dict | None) -> bool:
    if spec is None:
        return True
    if spec.get("type") == "Sequence":
        return all(_local_normalizer(item) for item in spec.get("normalizers") or [])
    return spec.get("type") in LOCAL_NORMALIZERS


def _pre_tokenizer_kind(spec: dict | None) -> str | None:
    """``whitespace`` (whitespace splits and is dropped), ``byte_level`` (GPT-2's regex, whitespace kept as
    tokens) or None (unknown: no proof)."""
    if spec is None:
        return None
    kind = spec.get("type")
    if kind in WHITESPACE_SPLITTERS:
        return "whitespace"
    if kind == "ByteLevel":
        return "byte_level" if spec.get("use_regex", True) and not spec.get("add_prefix_space") else None
    if kind == "Sequence":
        items = spec.get("pretokenizers") or []
        kinds = [item.get("type") for item in items]
        if kinds and any(k in WHITESPACE_SPLITTERS for k in kinds) and all(
                k in WHITESPACE_SPLITTERS or k in LOCAL_SPLITTERS for k in kinds):
            return "whitespace"
    return None
