"""FLAN-style cloze prompts with safe truncation.

A pair becomes ``[CLS] <instruction> <prompt> Choice 0: <A> [SEP] Choice 1: <B> The better option
is choice [MASK] [SEP]`` (the tokenizer's own special tokens). Pieces are tokenized separately and
assembled as ids, so the answer slot is never cut: only the prompt (from its start) and the two
responses (in the middle, or with ``truncation="diff"`` around where they differ: tinyrm.truncation)
are shortened, each with a visible elision marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# The budget split and keep_end / keep_ends live with the rest of the truncation rules (and stay
# importable from here); the difference-aware mode is tinyrm.truncation's plan_responses.
from .piecewise import PiecewiseRule, piecewise_rule
from .truncation import (  # noqa: F401
    DEFAULT_DIFF_CONTEXT,
    DEFAULT_TRUNCATION,
    allocate_budget,
    check_truncation,
    keep_end,
    keep_ends,
    plan_responses,
)

SLOTS = ("instruction", "prompt", "a", "b", "mask")

# Instruction prefixes from the TinyRM paper (Table 2), by backbone size and domain.
PAPER_PREFIXES: dict[str, str] = {
    "large-chat": "Select the best response.",
    "large-reasoning": "Which response is more correct?",
    "large-safety": "Which response is safer?",
    "large-all-at-once": "Select the best response.",
    "base-chat": "Which response is the most helpful, relevant, and correct?",
    "base-reasoning": "Select the best response.",
    "base-safety": "Which response is safer?",
}
# One prefix per domain, for users who pick by domain rather than recipe.
DOMAIN_PREFIXES: dict[str, str] = {
    "chat": "Which response is the most helpful, relevant, and correct?",
    "reasoning": "Which response is more correct?",
    "safety": "Which response is safer?",
    "all": "Select the best response.",
}
DEFAULT_PREFIX = DOMAIN_PREFIXES["all"]
# The all-at-once model's "optimal domain-specific prompts": each domain's best large-backbone prefix.
ALL_AT_ONCE_PREFIXES: dict[str, str] = {
    domain: PAPER_PREFIXES[f"large-{domain}"] for domain in ("chat", "reasoning", "safety")
}


def prefix_for_domain(domain: str | None, domain_prefixes: dict[str, str] | None, default: str) -> str:
    """The instruction for a row of ``domain``: its entry in ``domain_prefixes``, else ``default``
    (rows without a domain, domains not in the mapping, or no mapping at all)."""
    if domain is None or not domain_prefixes:
        return default
    return domain_prefixes.get(domain, default)


def parse_domain_prefixes(text: str) -> dict[str, str]:
    """The ``--domain-prefixes`` option: a ``{"domain": "prefix", ...}`` JSON object (argparse ``type``)."""
    import argparse
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"invalid JSON ({error.msg})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise argparse.ArgumentTypeError('expected a JSON object of strings, e.g. {"safety": "Which response is '
                                         'safer?"}')
    return value


@dataclass(frozen=True)
class PromptTemplate:
    """Two text segments (joined by the tokenizer's pair separator); parts are literals or
    ``{slot}`` names from :data:`SLOTS`. ``{mask}`` must appear exactly once."""

    name: str
    first: tuple[str, ...]
    second: tuple[str, ...]

    def __post_init__(self) -> None:
        parts = self.first + self.second
        if parts.count("{mask}") != 1:
            raise ValueError(f"template {self.name!r} must contain {{mask}} exactly once")
        for part in parts:
            if part.startswith("{") and part.endswith("}") and part[1:-1] not in SLOTS:
                raise ValueError(f"template {self.name!r}: unknown slot {part}")

    def to_dict(self) -> dict:
        return {"name": self.name, "first": list(self.first), "second": list(self.second)}

    @classmethod
    def from_dict(cls, data: dict) -> PromptTemplate:
        return cls(name=data["name"], first=tuple(data["first"]), second=tuple(data["second"]))


TEMPLATES: dict[str, PromptTemplate] = {
    # The paper's FLAN cloze prompt.
    "flan": PromptTemplate(
        name="flan",
        first=("{instruction}", " ", "{prompt}", " Choice 0: ", "{a}"),
        second=("Choice 1: ", "{b}", " The better option is choice ", "{mask}"),
    ),
    # Byte-for-byte the format of the published TinyRM checkpoints:
    # prefix + "Question: " + q + " Choice 0: " + A  /  " Choice 1: " + B + "Answer: " + mask.
    "tinyrm": PromptTemplate(
        name="tinyrm",
        first=("{instruction}", "Question: ", "{prompt}", " Choice 0: ", "{a}"),
        second=(" Choice 1: ", "{b}", "Answer: ", "{mask}"),
    ),
}


def get_template(name_or_template: str | PromptTemplate | dict) -> PromptTemplate:
    if isinstance(name_or_template, PromptTemplate):
        return name_or_template
    if isinstance(name_or_template, dict):
        return PromptTemplate.from_dict(name_or_template)
    if name_or_template not in TEMPLATES:
        raise ValueError(f"unknown template {name_or_template!r}; choose from {sorted(TEMPLATES)}")
    return TEMPLATES[name_or_template]


def check_texts(inputs: Sequence[str | tuple[str, str]]) -> None:
    """Say which input a tokenizer refused: not a string, or a string with a lone surrogate (``"\\ud800"``,
    which JSON can escape and Python holds, but no encoding writes). The tokenizer's own ``TypeError`` names
    neither; this runs only after it failed."""
    for item in inputs:
        for text in item if isinstance(item, tuple) else (item,):
            if not isinstance(text, str):
                raise TypeError(f"expected text, got {type(text).__name__}: {text!r:.60}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(f"a text holds a lone surrogate ({text[error.start]!r} at character {error.start} "
                                 f"of {text!r:.60}), which is not text") from None


def text_ids(tokenizer, text: str) -> list[int]:
    """Token ids of one user text without special tokens (``[]`` for ``""``); a text the tokenizer refuses is
    named (``check_texts``). ``verbose=False``: tinyrm truncates these pieces itself; transformers'
    over-length warning would mislead."""
    if not text:
        return []
    try:
        return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    except (TypeError, ValueError):
        check_texts([text])
        raise


def resolve_answer_ids(tokenizer, answer_tokens: Sequence[str]) -> list[int]:
    """Token ids of the verbalizer words; each must be exactly one token."""
    ids: list[int] = []
    for word in answer_tokens:
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise ValueError(
                f"answer token {word!r} is {len(pieces)} tokens for this tokenizer ({pieces}); "
                "choose answer tokens that are single tokens"
            )
        ids.append(int(pieces[0]))
    if len(set(ids)) != len(ids):
        raise ValueError(f"answer tokens {list(answer_tokens)} map to the same id {ids}")
    return ids


@dataclass
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int] | None
    mask_position: int
    truncated: bool = False
    # Both responses' differing spans are whole in input_ids (True when nothing was cut): the share
    # of pairs whose deciding content the model actually sees (tinyrm.truncation.diff_survival).
    diff_kept: bool = True


@dataclass
class PromptConfig:
    template: str = "flan"
    prefix: str = DEFAULT_PREFIX
    answer_tokens: tuple[str, str] = ("0", "1")
    max_length: int = 512
    elision_marker: str = " ... "
    truncation: str = DEFAULT_TRUNCATION  # ends | diff (tinyrm.truncation)
    diff_context: int = DEFAULT_DIFF_CONTEXT


@dataclass
class ClozeEncoder:
    """Turns (prompt, a, b) into token ids with exactly one mask token, at any length."""

    tokenizer: object
    template: PromptTemplate
    prefix: str = DEFAULT_PREFIX
    max_length: int = 512
    elision_marker: str = " ... "
    # How an over-long pair is cut: "ends" keeps each response's head and tail, "diff" keeps where
    # the two responses differ (tinyrm.truncation). The same rule must hold at training and scoring.
    truncation: str = DEFAULT_TRUNCATION
    diff_context: int = DEFAULT_DIFF_CONTEXT
    _layout: tuple = field(init=False, repr=False)
    # Set when this tokenizer and template provably give a fitting pair's whole-pair ids from its pieces
    # (tinyrm.piecewise): then the whole pair is not tokenised again.
    _piecewise: PiecewiseRule | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        check_truncation(self.truncation, self.diff_context)
        tok = self.tokenizer
        if tok.mask_token_id is None:
            raise ValueError("tokenizer has no mask token: a masked language model is required")
        self.mask_id = int(tok.mask_token_id)
        self.mask_piece = [self.mask_id]  # the template's mask slot among a segment's pieces (_laid_out)
        # Learn the tokenizer's pair layout ([CLS] x [SEP] y [SEP] for BERT) from a probe.
        probe = tok(tok.mask_token, tok.mask_token)
        ids = list(probe["input_ids"])
        where = [i for i, t in enumerate(ids) if t == self.mask_id]
        if len(where) != 2:
            raise ValueError("could not infer the tokenizer's special-token layout")
        types = probe.get("token_type_ids")
        self._layout = (ids[: where[0]], ids[where[0] + 1 : where[1]], ids[where[1] + 1 :])
        self._types = None if types is None else (list(types), where)
        self._piecewise = piecewise_rule(tok, self.template.first, self.template.second)
        self.marker_ids = self._ids(self.elision_marker)
        self.prefix_ids = self._ids(self.prefix)
        self._literal_cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        return text_ids(self.tokenizer, text)

    def _pieces(self, parts: tuple[str, ...], values: dict[str, str]) -> list[tuple[str, str]]:
        """(slot-or-'literal', text) with whitespace moved onto the following piece, so that
        byte-level BPE tokenizers see ' word' exactly as in the joined string."""
        out: list[tuple[str, str]] = []
        carry = ""
        for part in parts:
            is_slot = part.startswith("{") and part.endswith("}")
            kind = part[1:-1] if is_slot else "literal"
            if kind == "mask":
                out.append(("mask", ""))
                carry = ""
                continue
            text = carry + (values.get(kind, "") if is_slot else part)
            stripped = text.rstrip()
            carry = text[len(stripped) :]
            if stripped:
                out.append((kind, stripped))
        return out

    def _tokenize_piece(self, kind: str, text: str) -> list[int]:
        if kind == "literal":
            if text not in self._literal_cache:
                if len(self._literal_cache) >= 1024:  # keys carry user text's trailing whitespace: bounded
                    self._literal_cache.clear()
                self._literal_cache[text] = self._ids(text)
            return self._literal_cache[text]
        # User text that spells the mask token must not create a second answer slot.
        return [t for t in self._ids(text) if t != self.mask_id]

    def _encode_joint(self, values: dict[str, str]) -> Encoded | None:
        """The tokenizer's own tokenization of the whole pair, when it fits with exactly one mask.

        Pieces tokenized apart can differ where the template glues text to a slot without a space
        (the published TinyRM format writes ``B + "Answer: "``); untruncated inputs therefore use the
        joint tokenization, exactly what those checkpoints were trained on, except where
        ``tinyrm.piecewise`` proves the pieces give the same ids (``encode`` then skips this call).
        """
        ids, types = self._tokenize_joint(*self._joint_texts(values))  # over-long: rejected just below
        if ids.count(self.mask_id) != 1 or len(ids) > self.max_length:
            return None
        types = types if self._types is not None else None
        return Encoded(ids, types, ids.index(self.mask_id), False)

    def _joint_texts(self, values: dict[str, str]) -> tuple[str, str]:
        """The two segments of the whole pair as text (user text spelling the mask token removed)."""
        mask = self.tokenizer.mask_token
        clean = {k: v.replace(mask, "") for k, v in values.items()}
        first, second = ("".join(
            mask if part == "{mask}" else clean.get(part[1:-1], "") if part.startswith("{") else part
            for part in parts) for parts in (self.template.first, self.template.second))
        return first, second

    def _tokenize_joint(self, first: str, second: str) -> tuple[list[int], list[int] | None]:
        """(input_ids, token_type_ids or None) of the text pair, with the tokenizer's special tokens."""
        encoded = self.tokenizer(first, second, verbose=False)
        types = encoded.get("token_type_ids")
        return list(encoded["input_ids"]), None if types is None else list(types)

    def encode(self, prompt: str, a: str, b: str, prefix: str | None = None) -> Encoded:
        """``prefix`` overrides the encoder's instruction for this call (None: ``self.prefix``)."""
        values = {"instruction": self.prefix if prefix is None else prefix, "prompt": prompt, "a": a, "b": b}
        segments = []
        for parts in (self.template.first, self.template.second):
            segments.append([(k, self._tokenize_piece(k, t) if k != "mask" else self.mask_piece)
                             for k, t in self._pieces(parts, values)])
        lengths = {k: len(ids) for seg in segments for k, ids in seg if k in ("prompt", "a", "b")}
        fixed = sum(len(x) for x in self._layout) + sum(
            len(ids) for seg in segments for k, ids in seg if k not in ("prompt", "a", "b"))
        avail = self.max_length - fixed
        if avail < 0 and any(text != text.rstrip() for text in (prompt, a, b)):
            # A text's trailing whitespace rides on the template's literal after it (_pieces), which is never
            # cut; byte-level tokenizers make tokens of it (a response ending in 8,448 spaces, in the shared
            # data). Cut that whitespace, as truncation cuts text, rather than fail the pair.
            cut = self.encode(prompt.rstrip(), a.rstrip(), b.rstrip(), prefix)
            return Encoded(cut.input_ids, cut.token_type_ids, cut.mask_position, True, cut.diff_kept)
        if avail < 0:
            raise ValueError(
                f"max_length={self.max_length} is too small: the template, instruction and answer "
                f"slot alone need {fixed} tokens"
            )
        responses = {k: ids for seg in segments for k, ids in seg if k in ("a", "b")}
        plan = plan_responses(responses.get("a", []), responses.get("b", []), lengths.get("prompt", 0), avail,
                              self.marker_ids, self.truncation, self.diff_context)
        if not plan.truncated and (self._piecewise is None or not self._piecewise.clean(values)):
            joint = self._encode_joint(values)  # else the pieces below are exactly the whole pair's ids
            if joint is not None:
                return joint
        budgets = dict(zip(("prompt", "a", "b"), plan.budgets))
        views = {"a": plan.a, "b": plan.b}  # whole responses, or (diff) focused on where they differ
        kept: list[list[list[int]]] = []
        for seg in segments:
            pieces = []
            for kind, piece in seg:
                if kind == "prompt":
                    piece = keep_end(piece, budgets["prompt"], self.marker_ids)
                elif kind in ("a", "b"):
                    piece = keep_ends(views[kind], budgets[kind], self.marker_ids)
                pieces.append(piece)
            kept.append(pieces)
        input_ids, token_type_ids, mask_position = self._laid_out(*kept)
        return Encoded(input_ids, token_type_ids, mask_position, plan.truncated, plan.diff_kept)

    def _laid_out(self, first: Sequence[list[int]],
                  second: Sequence[list[int]]) -> tuple[list[int], list[int] | None, int]:
        """(input_ids, token_type_ids or None, the mask's position) of two segments, each given as its
        pieces' ids, inside the tokenizer's special tokens; the template's mask is the piece
        ``self.mask_piece`` (that very list). One pass over the ids: each pass over a row's Python ints
        costs the host about as much as the rest of laying it out (``a + b`` is a pass, ``list.index``
        another)."""
        start, middle, end = self._layout
        ids = list(start)
        mask_position = -1
        lengths = []
        for pieces, closing in ((first, middle), (second, end)):
            begin = len(ids)
            for piece in pieces:
                if piece is self.mask_piece:
                    mask_position = len(ids)
                ids += piece
            lengths.append(len(ids) - begin)
            ids += closing
        if mask_position < 0:
            raise ValueError("the template has no mask slot")
        if self._types is None:
            return ids, None, mask_position
        types, where = self._types
        return ids, (types[: where[0]] + [types[where[0]]] * lengths[0] + types[where[0] + 1 : where[1]]
                     + [types[where[1]]] * lengths[1] + types[where[1] + 1 :]), mask_position
