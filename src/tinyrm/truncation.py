"""Token-level truncation of a cloze pair: the budget split, the two modes, and what survives.

``ends`` (the original rule): the prompt keeps its end, each response its head and tail, with an
elision marker between. ``diff`` (difference-aware): the two responses first lose the prefix and
suffix they share (computed on token ids), keeping ``context`` tokens of it on each side of the
span where they differ, so that a one-token difference deep inside two long responses survives;
only when the differing spans themselves do not fit does it fall back to ``ends`` on those views.

Everything here works on id lists; :class:`tinyrm.prompt.ClozeEncoder` tokenizes and assembles.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TRUNCATION_MODES = ("ends", "diff")
# The one switch for new models (TrainConfig, the CLI, RewardConfig, ClozeEncoder). "diff" measured
# better on every held-out figure at the CPU budget, 3 seeds (docs/training.md, "Length bias"); saved
# models without the field keep LEGACY_TRUNCATION (how they were trained).
DEFAULT_TRUNCATION = "diff"
LEGACY_TRUNCATION = "ends"
DEFAULT_DIFF_CONTEXT = 32  # shared tokens kept on each side of the differing span, at least


def check_truncation(mode: str, diff_context: int = DEFAULT_DIFF_CONTEXT) -> str:
    if mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {mode!r}")
    if diff_context < 0:
        raise ValueError(f"diff_context must be >= 0, got {diff_context}")
    return mode


def allocate_budget(avail: int, prompt_len: int, a_len: int, b_len: int) -> tuple[int, int, int]:
    """Split ``avail`` tokens between prompt and two responses.

    The prompt is shortened first, but keeps at least a quarter of the budget (or all of itself
    if shorter); the responses then share the rest equally, a short one giving its unused share
    to the other.
    """
    if prompt_len + a_len + b_len <= avail:
        return prompt_len, a_len, b_len
    prompt_floor = min(prompt_len, avail // 4)
    if a_len + b_len <= avail - prompt_floor:
        return avail - a_len - b_len, a_len, b_len
    responses = avail - prompt_floor
    half = responses // 2
    if a_len <= half:
        return prompt_floor, a_len, responses - a_len
    if b_len <= half:
        return prompt_floor, responses - b_len, b_len
    return prompt_floor, responses - half, half


def keep_end(ids: list[int], budget: int, marker: list[int]) -> list[int]:
    """Keep the last tokens (the latest turns of a dialogue), marker first."""
    if len(ids) <= budget:
        return ids
    if budget <= len(marker):
        return ids[len(ids) - budget :] if budget > 0 else []
    return marker + ids[len(ids) - (budget - len(marker)) :]


def ends_split(length: int, budget: int, marker_len: int) -> tuple[int, int]:
    """(head, tail): how many leading and trailing tokens :func:`keep_ends` keeps of ``length``."""
    if length <= budget:
        return length, 0
    if budget <= marker_len:
        return budget, 0
    room = budget - marker_len
    return (room + 1) // 2, room // 2


def keep_ends(ids: list[int], budget: int, marker: list[int]) -> list[int]:
    """Keep the head and the tail of a response (the final answer), marker in the middle."""
    if len(ids) <= budget:
        return ids
    head, tail = ends_split(len(ids), budget, len(marker))
    if budget <= len(marker):
        return ids[:head]
    return ids[:head] + marker + ids[len(ids) - tail :]


def span_kept(length: int, start: int, stop: int, budget: int, marker_len: int) -> bool:
    """Whether ``keep_ends`` at ``budget`` keeps ``ids[start:stop]`` whole (inside its head or its tail)."""
    if start >= stop or length <= budget:
        return True
    head, tail = ends_split(length, budget, marker_len)
    return stop <= head or start >= length - tail


def shared_affixes(a: Sequence[int], b: Sequence[int]) -> tuple[int, int]:
    """(p, s): the lengths of the common prefix and common suffix of ``a`` and ``b``, not overlapping
    (``p + s <= min(len(a), len(b))``), so ``a[p:len(a) - s]`` and ``b[p:len(b) - s]`` are where they differ."""
    shortest = min(len(a), len(b))
    p = 0
    while p < shortest and a[p] == b[p]:
        p += 1
    s = 0
    while s < shortest - p and a[len(a) - 1 - s] == b[len(b) - 1 - s]:
        s += 1
    return p, s


def focus(ids: list[int], prefix: int, suffix: int, context: int, marker: list[int]) -> tuple[list[int], int, int]:
    """``ids`` cut to ``context`` tokens of its shared prefix and suffix around its differing span,
    a marker where tokens were dropped; and that span's [start, stop) in the view."""
    keep_p, keep_s = min(prefix, context), min(suffix, context)
    head = (marker if prefix > keep_p else []) + ids[prefix - keep_p : prefix]
    stop = len(ids) - suffix
    tail = ids[stop : stop + keep_s] + (marker if suffix > keep_s else [])
    return head + ids[prefix:stop] + tail, len(head), len(head) + stop - prefix


def focused_views(a: list[int], b: list[int], context: int, marker: list[int]) -> tuple[list[int], list[int]]:
    """Both responses focused on where they differ, with ``context`` shared tokens on each side."""
    p, s = shared_affixes(a, b)
    return focus(a, p, s, context, marker)[0], focus(b, p, s, context, marker)[0]


def fit_context(prefix: int, suffix: int, a_span: int, b_span: int, marker_len: int, room: int) -> int | None:
    """The largest context width whose two focused views fit ``room`` tokens together; None when even
    the differing spans alone (with their markers) do not fit.

    A view's length is not monotone in the width (a marker vanishes once an affix is whole), so
    this solves each piece where it is linear instead of searching.
    """
    lo, hi = sorted((prefix, suffix))
    spans = a_span + b_span
    if spans + 2 * (prefix + suffix) <= room:
        return hi  # nothing needs eliding
    if hi > lo:  # the shorter affix whole, the longer one cut to c (lo <= c < hi) plus a marker
        c = (room - spans - 2 * lo) // 2 - marker_len
        if c >= lo:
            return min(c, hi - 1)
    if lo > 0:  # both affixes cut to c (c < lo), a marker each
        c = (room - spans) // 4 - marker_len
        if c >= 0:
            return min(c, lo - 1)
    return None


@dataclass(frozen=True)
class ResponsePlan:
    """What :func:`plan_responses` decided: the response ids to place (whole, or focused views), the
    budgets for ``keep_end`` (prompt) and ``keep_ends`` (responses), and what survives."""

    a: list[int]
    b: list[int]
    budgets: tuple[int, int, int]  # prompt, a, b
    truncated: bool
    diff_kept: bool  # both differing spans are whole in the output (True when nothing is cut)


def plan_responses(a: list[int], b: list[int], prompt_len: int, avail: int, marker: list[int],
                   mode: str = DEFAULT_TRUNCATION, diff_context: int = DEFAULT_DIFF_CONTEXT) -> ResponsePlan:
    """How to fit a prompt of ``prompt_len`` tokens and responses ``a``, ``b`` into ``avail`` tokens."""
    check_truncation(mode, diff_context)
    if prompt_len + len(a) + len(b) <= avail:
        return ResponsePlan(a, b, (prompt_len, len(a), len(b)), False, True)
    p, s = shared_affixes(a, b)
    a_span, b_span = (p, len(a) - s), (p, len(b) - s)
    if mode == "diff" and (p or s):  # sharing nothing: the views are the responses, as with "ends"
        m = len(marker)
        room = avail - min(prompt_len, avail // 4)  # what allocate_budget leaves the responses
        context = fit_context(p, s, len(a) - p - s, len(b) - p - s, m, room)
        if context is not None:
            view_a, view_b = focus(a, p, s, context, marker)[0], focus(b, p, s, context, marker)[0]
            budgets = allocate_budget(avail, prompt_len, len(view_a), len(view_b))
            return ResponsePlan(view_a, view_b, budgets, True, True)
        # The differing spans alone are too long: keep_ends on views with the minimum context.
        a, start_a, stop_a = focus(a, p, s, diff_context, marker)
        b, start_b, stop_b = focus(b, p, s, diff_context, marker)
        a_span, b_span = (start_a, stop_a), (start_b, stop_b)
    budgets = allocate_budget(avail, prompt_len, len(a), len(b))
    kept = (span_kept(len(a), *a_span, budgets[1], len(marker))
            and span_kept(len(b), *b_span, budgets[2], len(marker)))
    return ResponsePlan(a, b, budgets, True, kept)


def diff_survival(encoder, pairs: Iterable) -> dict[str, float | int]:
    """How often the differing content of ``pairs`` survives ``encoder`` (a ``ClozeEncoder``).

    ``pairs``: ``PreferencePair`` rows or ``(prompt, chosen, rejected)`` tuples, encoded in the order
    chosen-first only. Returns counts and shares: ``truncated`` (something cut), ``diff_kept`` (both
    differing spans whole, untruncated pairs included) and ``diff_kept_when_truncated``.
    """
    n = truncated = kept = kept_truncated = 0
    for pair in pairs:
        prompt, a, b = (pair.prompt, pair.chosen, pair.rejected) if hasattr(pair, "chosen") else pair
        enc = encoder.encode(prompt, a, b)
        n += 1
        truncated += bool(enc.truncated)
        kept += bool(enc.diff_kept)
        kept_truncated += bool(enc.truncated and enc.diff_kept)
    return {
        "pairs": n, "truncated": truncated, "diff_kept": kept,
        "truncated_share": truncated / n if n else 0.0,
        "diff_kept_share": kept / n if n else 1.0,
        "diff_kept_when_truncated": kept_truncated / truncated if truncated else 1.0,
    }
