"""The step-verdict prompt: templates, instructions, answer tokens, and the encoder with its truncation rules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Right-padded tensors plus the flattened (row, column) of every read mask (``mask_rows``): the scoring
# engine's collation, which takes several read masks per sequence.
from ..inference.batches import collate  # noqa: F401 (tinyrm.process.collate)
from ..prompt import keep_ends, text_ids

OBJECTIVES = ("process", "outcome")
CONTEXTS = ("prefix", "full")
ANSWER_TOKENS = ("yes", "no")  # index 0 = the step (solution) is correct
PREFIXES = {"process": "Check the solution step by step.", "outcome": "Check the solution."}
ELISION_MARKER = " ... "
StepsInput = Sequence[str] | str


@dataclass(frozen=True)
class StepTemplate:
    """The verdict question written after the judged step, and the text between steps."""

    name: str
    verdict: str
    separator: str = "\n"

    def to_dict(self) -> dict:
        # Also a valid pairwise PromptTemplate (prompt = problem, a = earlier steps, b = judged
        # step), so everything that reads ``tinyrm.json`` accepts it.
        return {"name": self.name, "first": ["{instruction}", " ", "{prompt}"],
                "second": ["{a}", "{b}", self.verdict, "{mask}"],
                "verdict": self.verdict, "separator": self.separator}

    @classmethod
    def from_dict(cls, data: dict) -> StepTemplate:
        if "verdict" not in data:
            raise ValueError(f"template {data.get('name')!r} is a pairwise template, not a process one")
        return cls(name=data["name"], verdict=data["verdict"], separator=data.get("separator", "\n"))


STEP_TEMPLATES: dict[str, StepTemplate] = {
    "process": StepTemplate("process", " Is the last step correct? "),
    "outcome": StepTemplate("outcome", " Is the solution correct? "),
}


@dataclass
class StepEncoded:
    input_ids: list[int]
    token_type_ids: list[int] | None
    mask_positions: list[int]  # masks whose verdict is read (a full-mode window may hold more)
    targets: list[int]  # index of the step judged at each of those masks
    truncated: bool = False


def special_layout(tokenizer) -> tuple[list[int], list[int], list[int], list[int] | None, tuple[int, int]]:
    """The tokenizer's pair layout ``start x middle y end`` (and its token types), from a probe."""
    if tokenizer.mask_token_id is None:
        raise ValueError("tokenizer has no mask token: a masked language model is required")
    mask_id = int(tokenizer.mask_token_id)
    probe = tokenizer(tokenizer.mask_token, tokenizer.mask_token)
    ids = list(probe["input_ids"])
    where = [i for i, t in enumerate(ids) if t == mask_id]
    if len(where) != 2:
        raise ValueError("could not infer the tokenizer's special-token layout")
    types = probe.get("token_type_ids")
    segment_types = (types[where[0]], types[where[1]]) if types is not None else (0, 0)
    return (ids[: where[0]], ids[where[0] + 1 : where[1]], ids[where[1] + 1 :],
            None if types is None else list(types), segment_types)


class StepEncoder:
    """Encodes (problem, steps) into sequences with one mask per judged step."""

    def __init__(self, tokenizer, template: StepTemplate, prefix: str, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.prefix = prefix
        self.max_length = max_length
        self.mask_id = int(tokenizer.mask_token_id) if tokenizer.mask_token_id is not None else None
        self.start, self.middle, self.end, self._types, self._segment_types = special_layout(tokenizer)
        self.prefix_ids = self._ids(prefix)
        self.verdict_ids = self._ids(template.verdict.rstrip()) + [self.mask_id]
        self.marker_ids = self._ids(ELISION_MARKER)
        self.base = len(self.start) + len(self.middle) + len(self.end) + len(self.prefix_ids)
        if max_length - self.base - len(self.verdict_ids) < 4 * len(self.marker_ids):
            raise ValueError(f"max_length={max_length} is too small: the special tokens, instruction and "
                             f"verdict question alone need {self.base + len(self.verdict_ids)} tokens")

    def _ids(self, text: str) -> list[int]:
        ids = text_ids(self.tokenizer, text)  # cut by tinyrm
        return [t for t in ids if t != self.mask_id]  # user text must not add an answer slot

    def tokenize(self, problem: str, steps: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """Problem and step ids, tokenized once per solution (with the whitespace that joins them)."""
        problem_ids = self._ids((" " if self.prefix else "") + problem)
        sep = self.template.separator
        return problem_ids, [self._ids((sep if i else "") + step) for i, step in enumerate(steps)]

    def _assemble(self, first: list[int], second: list[int], masks: list[int], targets: list[int],
                  truncated: bool) -> StepEncoded:
        offset = len(self.start) + len(first) + len(self.middle)
        input_ids = self.start + first + self.middle + second + self.end
        types = None
        if self._types is not None:
            t0, t1 = self._segment_types
            n0, n1 = len(self.start), len(self.middle)
            types = (self._types[:n0] + [t0] * len(first) + self._types[n0 + 1 : n0 + 1 + n1]
                     + [t1] * len(second) + self._types[n0 + 2 + n1 :])
        return StepEncoded(input_ids, types, [offset + m for m in masks], targets, truncated)

    def encode_step(self, problem_ids: list[int], step_ids: list[list[int]], k: int) -> StepEncoded:
        """One sequence judging step ``k`` from the steps before it (prefix mode, outcome mode)."""
        avail = self.max_length - self.base - len(self.verdict_ids)
        problem, context, judged = problem_ids, step_ids[:k], step_ids[k]
        marker: list[int] = []
        truncated = len(problem) + sum(map(len, context)) + len(judged) > avail
        if truncated:
            # 1. Drop the oldest steps, keeping the most recent ones that fit after a marker.
            room = avail - len(problem) - len(judged) - len(self.marker_ids)
            kept: list[list[int]] = []
            for ids in reversed(context):
                if len(ids) > room:
                    break
                kept.insert(0, ids)
                room -= len(ids)
            marker = self.marker_ids if len(kept) < len(context) else []
            context = kept
            over = len(problem) + len(marker) + sum(map(len, context)) + len(judged) - avail
            if over > 0:  # 2. Shorten the problem (head and tail kept), down to a quarter of the room.
                floor = min(len(problem), avail // 4)
                problem = keep_ends(problem, max(floor, len(problem) - over), self.marker_ids)
                over = len(problem) + len(marker) + len(judged) - avail
            if over > 0:  # 3. Only a step longer than everything else allowed is cut.
                judged = keep_ends(judged, len(judged) - over, self.marker_ids)
        second = marker + [t for ids in context for t in ids] + judged + self.verdict_ids
        first = self.prefix_ids + problem
        return self._assemble(first, second, [len(second) - 1], [k], truncated)

    def encode_solution(self, problem_ids: list[int], step_ids: list[list[int]], context: str) -> list[StepEncoded]:
        """Sequences reading every step's verdict: one per step (``prefix``), or as few windows as fit (``full``)."""
        if context == "full":
            return self.encode_full(problem_ids, step_ids)
        return [self.encode_step(problem_ids, step_ids, k) for k in range(len(step_ids))]

    def encode_full(self, problem_ids: list[int], step_ids: list[list[int]],
                    wanted: Sequence[int] | None = None) -> list[StepEncoded]:
        """Every step followed by its own mask, in as few windows as fit (one when it all fits).

        A window that does not start at step 1 begins with the elision marker and, room permitting,
        earlier steps as context (their masks are present but not read). ``wanted``: the steps
        whose verdicts are read (default all); windows reading none are left out.
        """
        n = len(step_ids)
        wanted_set = set(range(n) if wanted is None else wanted)
        cost = [len(ids) + len(self.verdict_ids) for ids in step_ids]
        avail = self.max_length - self.base - len(problem_ids)
        marker = len(self.marker_ids)
        encodings: list[StepEncoded] = []
        nxt = 0
        while nxt < n:
            room = avail - (marker if nxt > 0 else 0)
            end, used = nxt, 0
            while end < n and used + cost[end] <= room:
                used += cost[end]
                end += 1
            if end == nxt:  # this step does not fit beside the whole problem
                if nxt in wanted_set:
                    encodings.append(self.encode_step(problem_ids, step_ids, nxt))
                nxt += 1
                continue
            start = nxt
            while start > 0 and used + cost[start - 1] + (marker if start - 1 > 0 else 0) <= avail:
                used += cost[start - 1]
                start -= 1
            reads = [i for i in range(nxt, end) if i in wanted_set]
            if reads:
                second = list(self.marker_ids) if start > 0 else []
                masks = []
                for i in range(start, end):
                    second += step_ids[i] + self.verdict_ids
                    if i in reads:
                        masks.append(len(second) - 1)
                truncated = start > 0 or end < n
                encodings.append(self._assemble(self.prefix_ids + problem_ids, second, masks, reads, truncated))
            nxt = end
        return encodings

