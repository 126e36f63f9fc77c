"""Process (per-step) and outcome (per-solution) rewards with the same cloze machinery.

A step verdict is read at one mask: ``[CLS] <instruction> <problem> [SEP] <steps so far> Is the
last step correct? [MASK] [SEP]``, P(step correct) = softmax over the answer tokens (``yes`` /
``no`` by default, resolved like the pairwise ones). Context modes:

- ``prefix``: step k is judged from steps 1..k only; one sequence per step (batched). Scores never
  depend on later steps, which is what step-guided search needs.
- ``full``: every step is followed by its own verdict question and mask in one sequence over the
  whole solution: one pass instead of n, but each verdict also sees the later steps.

The outcome objective (ORM) asks ``Is the solution correct? [MASK]`` once after the last step.
Truncation never cuts the mask or the judged step: the oldest steps go first (an elision marker
shows where), then the problem is shortened; the judged step is cut only if it alone cannot fit.

Training weights the cross-entropy of each verdict by its class (``TrainConfig.step_class_weight``):
``balanced`` (default) gives each class the same total weight, ``n / (2 * n_class)`` from the
training labels, because incorrect steps are rare (about 1 in 10 in MR-GSM8K) and an unweighted
model learns to answer "correct" everywhere; ``none`` is the plain mean; a number weights the
incorrect class (correct = 1). The weights used are saved in ``tinyrm.json`` (``extra``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .aggregate import METHODS
from .aggregate import aggregate as combine
from .backbone import BackboneConfig, load_mlm, mask_logits, prepare_for_training, unwrap_peft
from .data import DataError, JsonlRows, expand_sources, write_records
from .model import ClozeScorer, RewardConfig, RewardModel, load_saved_backbone, pad_sequences
from .prompt import DEFAULT_PREFIX, keep_ends, resolve_answer_ids
from .steps import clean, is_filler, split

logger = logging.getLogger(__name__)

OBJECTIVES = ("process", "outcome")
CONTEXTS = ("prefix", "full")
ANSWER_TOKENS = ("yes", "no")  # index 0 = the step (solution) is correct
PREFIXES = {"process": "Check the solution step by step.", "outcome": "Check the solution."}
ELISION_MARKER = " ... "
StepsInput = Sequence[str] | str


# ----------------------------------------------------------------------------- templates
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


# ----------------------------------------------------------------------------- encoding
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
        if not text:
            return []
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
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


# ----------------------------------------------------------------------------- batches
def collate(encodings: Sequence[StepEncoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors plus the flattened (row, column) of every read mask."""
    batch = pad_sequences(encodings, pad_id)
    rows: list[int] = []
    cols: list[int] = []
    for row, enc in enumerate(encodings):
        rows += [row] * len(enc.mask_positions)
        cols += enc.mask_positions
    batch["mask_rows"] = torch.tensor(rows, dtype=torch.long)
    batch["mask_positions"] = torch.tensor(cols, dtype=torch.long)
    return batch


# ----------------------------------------------------------------------------- data
@dataclass
class ProcessRow:
    """One solution; ``labels[i]``: True correct, False the first error, None not labelled."""

    id: str
    question: str
    steps: list[str]
    labels: list[bool | None]
    solution_correct: bool
    kind: str = "graded"  # graded | reference

    @property
    def first_error(self) -> int | None:
        return next((i for i, label in enumerate(self.labels) if label is False), None)


@dataclass
class ProcessReport:
    rows: list[ProcessRow]
    skipped: int = 0


def step_labels(n_steps: int, first_error_step: int | None, solution_correct: bool) -> list[bool | None]:
    """The labelling rule: steps before the first error are correct, the first error is incorrect,
    later steps are unlabelled. Without a marked error, a correct solution's steps are all correct
    and a wrong one's are all unlabelled (the error is somewhere, but not known where)."""
    if first_error_step is None:
        return [True if solution_correct else None] * n_steps
    k = first_error_step - 1
    return [True] * k + [False] + [None] * (n_steps - k - 1)


def normalise(steps: Sequence[str], labels: Sequence[bool | None]) -> tuple[list[str], list[bool | None]]:
    """Clean each step, drop filler and repeated steps, carrying the labels along."""
    out_steps: list[str] = []
    out_labels: list[bool | None] = []
    for step, label in zip(steps, labels):
        text = clean(step)
        if is_filler(text) or (out_steps and text == out_steps[-1]):
            continue
        out_steps.append(text)
        out_labels.append(label)
    return out_steps, out_labels


def parse_row(obj: object) -> ProcessRow:
    """Validate one ``{"question", "steps", "first_error_step", "solution_correct"}`` row."""
    if not isinstance(obj, dict):
        raise ValueError("row is not a JSON object")
    question, steps = obj.get("question"), obj.get("steps")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("'question' must be a non-empty string")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s.strip() for s in steps):
        raise ValueError("'steps' must be a non-empty list of non-empty strings")
    correct = obj.get("solution_correct")
    if not isinstance(correct, bool):
        raise ValueError("'solution_correct' must be true or false")
    first = obj.get("first_error_step")
    if first is not None and (isinstance(first, bool) or not isinstance(first, int) or not 1 <= first <= len(steps)):
        raise ValueError(f"'first_error_step' must be null or an integer in 1..{len(steps)}, got {first!r}")
    if first is not None and correct:
        raise ValueError("'first_error_step' is set but 'solution_correct' is true")
    clean_steps, labels = normalise(steps, step_labels(len(steps), first, correct))
    if not clean_steps:
        raise ValueError("no step left after removing markers and filler")
    return ProcessRow(str(obj.get("id", "")), question.strip(), clean_steps, labels, correct)


def reference_row(obj: dict, row: ProcessRow) -> ProcessRow | None:
    """The row's ``reference_solution`` split into steps, all correct (None when absent)."""
    text = obj.get("reference_solution")
    if not isinstance(text, str) or not text.strip():
        return None
    steps, labels = normalise(split(text), [True] * len(split(text)))
    if not steps:
        return None
    return ProcessRow(f"{row.id}:reference", row.question, steps, labels, True, kind="reference")


def load_rows(sources: Sequence[str], skip_bad_rows: bool = False, references: bool = True) -> ProcessReport:
    """Step-graded solutions from JSONL files (globs allowed), plus one all-correct solution per
    distinct question from ``reference_solution`` when ``references`` is set."""
    rows: list[ProcessRow] = []
    skipped = 0
    seen_questions: set[str] = set()
    for source in expand_sources(sources):
        reader = JsonlRows(source, parse_row, skip_bad_rows)
        for line_no, obj, row in reader:
            row.id = row.id or f"{reader.path.stem}:{line_no}"
            rows.append(row)
            if references and row.question not in seen_questions:
                seen_questions.add(row.question)
                ref = reference_row(obj, row)
                if ref is not None:
                    rows.append(ref)
        skipped += reader.skipped
    if not rows:
        raise DataError(f"no rows in {', '.join(sources)}")
    return ProcessReport(rows=rows, skipped=skipped)


def question_key(question: str, seed: int = 0) -> float:
    digest = hashlib.sha256(f"{seed}:{' '.join(question.lower().split())}".encode()).hexdigest()
    return int(digest[:12], 16) / 16**12


def split_questions(rows: Sequence[ProcessRow], test_fraction: float = 0.2,
                    seed: int = 0) -> tuple[list[ProcessRow], list[ProcessRow]]:
    """(train, test) by question: every solution of a question, reference included, lands on the
    same side, so test questions are unseen. Deterministic and independent of row order."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    train, test = [], []
    for row in rows:
        (test if question_key(row.question, seed) < test_fraction else train).append(row)
    return train, test


def write_rows(rows: Sequence[ProcessRow], path: str | Path) -> Path:
    """Rows in the input schema (references as correct solutions), for ``--data`` of train/eval."""
    return write_records(
        ({"id": row.id, "question": row.question, "steps": row.steps,
          "first_error_step": None if row.first_error is None else row.first_error + 1,
          "solution_correct": row.solution_correct} for row in rows),
        path,
    )


# ----------------------------------------------------------------------------- model settings
@dataclass
class ProcessSpec:
    encoder: StepEncoder
    answer_ids: torch.Tensor
    objective: str  # process | outcome (a pairwise model is used as a zero-shot process model)
    context: str


def spec(rm: RewardModel) -> ProcessSpec:
    """Process settings of a model, cached on it (rebuilt if its config changes)."""
    config = rm.config
    key = (config.objective, json.dumps(config.template, sort_keys=True), config.prefix,
           tuple(config.answer_tokens), config.max_length, json.dumps(config.extra.get("process", {})))
    cached = getattr(rm, "_process_spec", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    if config.objective in OBJECTIVES:
        template = StepTemplate.from_dict(config.template)
        prefix, answer_ids, objective = config.prefix, rm.answer_ids, config.objective
    else:  # a pairwise checkpoint asked for step verdicts: the untrained process prompt
        template, prefix, objective = STEP_TEMPLATES["process"], PREFIXES["process"], "process"
        answer_ids = resolve_answer_ids(rm.tokenizer, ANSWER_TOKENS)
    context = config.extra.get("process", {}).get("context", "prefix")
    result = ProcessSpec(StepEncoder(rm.tokenizer, template, prefix, config.max_length),
                         torch.tensor(answer_ids, device=rm.device), objective, context)
    rm._process_spec = (key, result)
    return result


def _steps(steps: StepsInput) -> list[str]:
    if isinstance(steps, str):
        return split(steps)
    if not all(isinstance(s, str) for s in steps):
        raise TypeError("steps must be a string or a list of strings")
    return [clean(s) for s in steps]


def _context(s: ProcessSpec, context: str | None) -> str:
    context = context or s.context
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {', '.join(CONTEXTS)}, got {context!r}")
    if s.objective == "outcome" and context == "full":
        raise ValueError("an outcome model gives one verdict per solution: context 'full' does not apply")
    return context


# ----------------------------------------------------------------------------- scoring
@torch.inference_mode()
def verdicts(rm: RewardModel, encodings: Sequence[StepEncoded], batch_size: int = 32) -> list[list[float]]:
    """P(answer token 0, i.e. correct) at each read mask of each encoding; batched by length."""
    s = spec(rm)
    if getattr(rm.config, "read", "mask") == "cls" and any(len(e.mask_positions) > 1 for e in encodings):
        raise ValueError("this process model reads its verdict at [CLS], one per sequence: score it with "
                         "context 'prefix' (a 'full' window reads several steps at once)")
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].input_ids))
    out: list[list[float]] = [[] for _ in encodings]
    pad_id = rm.tokenizer.pad_token_id or 0
    backbone = unwrap_peft(rm.model)
    for begin in range(0, len(order), batch_size):
        idx = order[begin : begin + batch_size]
        batch = {k: v.to(rm.device) for k, v in collate([encodings[i] for i in idx], pad_id).items()}
        if rm.config.read == "cls":  # one verdict per sequence, read at [CLS] (see process_read)
            batch["mask_positions"] = torch.zeros_like(batch["mask_positions"])
        logits = mask_logits(backbone, batch["input_ids"], batch["attention_mask"], batch["mask_positions"],
                             token_ids=s.answer_ids, token_type_ids=batch.get("token_type_ids"),
                             mask_rows=batch["mask_rows"])
        probs = torch.softmax(logits.float(), dim=-1)[:, 0].tolist()
        cursor = 0
        for i in idx:
            count = len(encodings[i].mask_positions)
            out[i] = probs[cursor : cursor + count]
            cursor += count
    return out


def score_many(rm: RewardModel, items: Sequence[tuple[str, StepsInput]], context: str | None = None,
               batch_size: int = 32) -> list[list[float]]:
    """P(step correct) for every step of every (problem, steps) item, in one batched run.

    On an outcome model, step k's score is the ORM's verdict on the solution cut after step k.
    """
    s = spec(rm)
    context = _context(s, context)
    encodings: list[StepEncoded] = []
    owners: list[int] = []
    solutions = [_steps(steps) for _, steps in items]
    for item, ((problem, _), steps) in enumerate(zip(items, solutions)):
        problem_ids, step_ids = s.encoder.tokenize(problem, steps)
        if context == "full":
            batch = s.encoder.encode_full(problem_ids, step_ids)
        else:
            batch = [s.encoder.encode_step(problem_ids, step_ids, k) for k in range(len(steps))]
        encodings += batch
        owners += [item] * len(batch)
    scores = [[0.0] * len(steps) for steps in solutions]
    for enc, owner, probs in zip(encodings, owners, verdicts(rm, encodings, batch_size)):
        for step, p in zip(enc.targets, probs):
            scores[owner][step] = p
    return scores


def outcome_scores(rm: RewardModel, items: Sequence[tuple[str, StepsInput]], batch_size: int = 32) -> list[float]:
    """An outcome model's P(solution correct) for each (problem, steps): one mask after the last step."""
    s = spec(rm)
    encodings = []
    for problem, steps in items:
        problem_ids, step_ids = s.encoder.tokenize(problem, _steps(steps) or [""])
        encodings.append(s.encoder.encode_step(problem_ids, step_ids, len(step_ids) - 1))
    return [p[0] for p in verdicts(rm, encodings, batch_size)]


def solution_scores(rm: RewardModel, items: Sequence[tuple[str, StepsInput]], aggregate: str = "min",
                    context: str | None = None, threshold: float = 0.5, batch_size: int = 32) -> list[float]:
    """One score per solution: the ORM verdict for outcome models, aggregated step scores otherwise."""
    if aggregate not in METHODS:
        raise ValueError(f"unknown aggregation {aggregate!r}; choose from {', '.join(METHODS)}")
    if spec(rm).objective == "outcome":
        return outcome_scores(rm, items, batch_size=batch_size)
    per_step = score_many(rm, items, context=context, batch_size=batch_size)
    return [combine(scores, aggregate, threshold=threshold) for scores in per_step]


def score_steps(rm: RewardModel, problem: str, steps: StepsInput, context: str | None = None,
                batch_size: int = 32) -> list[float]:
    """P(step correct) for each step (a string is split with :func:`tinyrm.steps.split`)."""
    return score_many(rm, [(problem, steps)], context=context, batch_size=batch_size)[0]


def score_solution(rm: RewardModel, problem: str, steps: StepsInput, aggregate: str = "min",
                   context: str | None = None, threshold: float = 0.5) -> float:
    """One reward for a solution (see :func:`tinyrm.aggregate.aggregate`; ORMs ignore ``aggregate``)."""
    return solution_scores(rm, [(problem, steps)], aggregate=aggregate, context=context, threshold=threshold)[0]


def rerank(rm: RewardModel, problem: str, candidates: Sequence[StepsInput], aggregate: str = "min",
           context: str | None = None, threshold: float = 0.5, batch_size: int = 32) -> list[tuple[int, float]]:
    """``[(index, score), ...]`` best first (ties keep the input order)."""
    scores = solution_scores(rm, [(problem, c) for c in candidates], aggregate=aggregate, context=context,
                             threshold=threshold, batch_size=batch_size)
    return sorted(enumerate(scores), key=lambda pair: (-pair[1], pair[0]))


# ----------------------------------------------------------------------------- training
def label_index(correct: bool) -> int:
    return 0 if correct else 1  # answer token 0 ("yes") means correct


class ProcessDataset(Dataset):
    """Encoded training examples: labelled steps (process) or whole solutions (outcome)."""

    def __init__(self, rows: Sequence[ProcessRow], encoder: StepEncoder, objective: str, context: str) -> None:
        self.examples: list[tuple[StepEncoded, list[int]]] = []
        self.truncated = 0
        for row in rows:
            problem_ids, step_ids = encoder.tokenize(row.question, row.steps)
            if objective == "outcome":
                encs = [encoder.encode_step(problem_ids, step_ids, len(step_ids) - 1)]
                labels = {len(step_ids) - 1: row.solution_correct}
            else:
                labels = {i: label for i, label in enumerate(row.labels) if label is not None}
                if not labels:
                    continue  # unlabelled steps are never trained on
                if context == "full":
                    encs = encoder.encode_full(problem_ids, step_ids, wanted=sorted(labels))
                else:
                    encs = [encoder.encode_step(problem_ids, step_ids, k) for k in sorted(labels)]
            for enc in encs:
                self.truncated += enc.truncated
                self.examples.append((enc, [label_index(labels[t]) for t in enc.targets]))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        enc, labels = self.examples[index]
        return {"input_ids": enc.input_ids, "encoding": enc, "labels": labels}

    def label_counts(self) -> tuple[int, int]:
        """(correct, incorrect) verdicts trained on."""
        flat = [label for _, labels in self.examples for label in labels]
        return flat.count(0), flat.count(1)


CLASS_WEIGHTINGS = ("balanced", "none")


def parse_class_weight(value: str | float | None) -> str | float:
    """A ``step_class_weight`` setting: ``"balanced"``, ``"none"`` or the positive weight of the
    incorrect class (the correct class then weighs 1), given as a number or a numeric string."""
    if value is None:
        return "none"
    if isinstance(value, str) and value.strip().lower() in CLASS_WEIGHTINGS:
        return value.strip().lower()
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = float("nan")
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"step_class_weight must be 'balanced', 'none' or a positive number "
                         f"(the weight of the incorrect class), got {value!r}")
    return weight


def class_weights(labels: Sequence[int], setting: str | float = "balanced") -> list[float] | None:
    """Cross-entropy weights ``[correct, incorrect]`` for label indices (0 correct, 1 incorrect).

    ``balanced``: ``n / (2 * n_class)``, scikit-learn's ``compute_class_weight("balanced")``, so
    each class contributes the same total weight; ``none``: None (the plain mean); a number: the
    incorrect class's weight, the correct class weighing 1. ``balanced`` with one class absent
    gives None (nothing to rebalance).
    """
    setting = parse_class_weight(setting)
    if setting == "none":
        return None
    if not isinstance(setting, str):
        return [1.0, float(setting)]
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(list(labels), dtype=np.int64)
    if not (y == 0).any() or not (y == 1).any():
        logger.warning("step_class_weight=balanced: only one class among %d labels, not reweighting", len(y))
        return None
    return [float(w) for w in compute_class_weight("balanced", classes=np.array([0, 1]), y=y)]


class WeightedClozeScorer(ClozeScorer):
    """A ``ClozeScorer`` whose loss is the class-weighted cross-entropy over the read masks.

    With ``weight = class_weight[label]`` per mask, the loss is ``sum(weight * ce) / sum(weight)``:
    ``F.cross_entropy(..., weight=class_weight)`` for the two-answer loss, and the same weighting
    of the whole-vocabulary cross-entropy for ``loss="full-vocab"``.
    """

    def __init__(self, mlm: torch.nn.Module, answer_ids: Sequence[int], class_weight: Sequence[float],
                 loss: str = "pair", read: str = "mask") -> None:
        super().__init__(mlm, answer_ids, loss=loss, read=read)
        if len(class_weight) != 2:
            raise ValueError(f"class_weight needs one weight per answer (2), got {len(class_weight)}")
        self.register_buffer("class_weight", torch.tensor([float(w) for w in class_weight]), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_positions: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                mask_rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if labels is None:
            return super().forward(input_ids, attention_mask, mask_positions, token_type_ids, None, mask_rows)
        full_vocab = self.loss_kind == "full-vocab"
        if self.read == "cls":  # one read per row (with mask_rows: prefix-mode process rows), at [CLS]
            mask_positions = torch.zeros_like(mask_positions)
        logits = mask_logits(
            unwrap_peft(self.mlm), input_ids, attention_mask, mask_positions,
            token_ids=None if full_vocab else self.answer_ids, token_type_ids=token_type_ids, mask_rows=mask_rows,
        )
        targets = self.answer_ids[labels] if full_vocab else labels
        per_mask = F.cross_entropy(logits.float(), targets, reduction="none")
        weights = self.class_weight[labels]
        loss = (per_mask * weights).sum() / weights.sum()
        return {"loss": loss, "logits": logits[:, self.answer_ids] if full_vocab else logits}


@dataclass
class ProcessCollator:
    pad_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate([f["encoding"] for f in features], self.pad_id)
        batch["labels"] = torch.tensor([label for f in features for label in f["labels"]], dtype=torch.long)
        return batch


def process_settings(config) -> tuple[StepTemplate, str, tuple[str, str]]:
    """Template, instruction and answer tokens; the pairwise defaults are swapped for process ones."""
    template = STEP_TEMPLATES[config.objective]
    prefix = PREFIXES[config.objective] if config.prefix == DEFAULT_PREFIX else config.prefix
    answers = ANSWER_TOKENS if tuple(config.answer_tokens) == ("0", "1") else tuple(config.answer_tokens)
    return template, prefix, answers


def process_read(config) -> str:
    """Where verdicts are read: [CLS] only where each sequence holds one read mask (prefix context, or
    an outcome model) and the backbone's defaults ask for it; full-context windows read many masks."""
    read = getattr(config, "read", "mask")
    read = "mask" if read == "auto" else read
    if read == "cls" and getattr(config, "context", "prefix") == "full" and config.objective == "process":
        return "mask"
    return read


def build_model(config) -> RewardModel:
    """Backbone (freezing / DoRA applied) wrapped as a RewardModel with the process config."""
    tokenizer, mlm = load_mlm(config.model)
    model = prepare_for_training(mlm, BackboneConfig(
        model=config.model, dora_rank=config.dora_rank, dora_alpha=config.dora_alpha,
        dora_targets=config.dora_targets, freeze_layers=config.freeze_layers))
    template, prefix, answers = process_settings(config)
    context = getattr(config, "context", "prefix")
    reward_config = RewardConfig(
        objective=config.objective, template=template.to_dict(), prefix=prefix, answer_tokens=list(answers),
        max_length=config.max_length, both_orders=False, base_model=config.model, read=process_read(config),
        extra={"process": {"context": context},
               "train": {k: v for k, v in asdict(config).items() if k != "data"},
               "data": [str(d) for d in config.data]},  # the files, for the model card
    )
    return RewardModel(model, tokenizer, reward_config, device="cpu")


def train(config):
    """``tinyrm train --objective process|outcome``: returns a ``tinyrm.train.TrainResult``."""
    from transformers import set_seed

    from .train import finish, fit, make_result, report_parameters

    if config.objective not in OBJECTIVES:
        raise ValueError(f"tinyrm.process trains objectives {OBJECTIVES}, not {config.objective!r}")
    context = getattr(config, "context", "prefix")
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {', '.join(CONTEXTS)}, got {context!r}")
    weighting = parse_class_weight(getattr(config, "step_class_weight", "balanced"))
    set_seed(config.seed)
    report = load_rows(config.data, skip_bad_rows=config.skip_bad_rows)
    rm = build_model(config)
    parameters = report_parameters(rm.model)
    dataset = ProcessDataset(report.rows, spec(rm).encoder, config.objective, context)
    if not len(dataset):
        raise DataError(f"no labelled steps to train on in {', '.join(config.data)}")
    positives, negatives = dataset.label_counts()
    logger.info("%d examples: %d correct / %d incorrect verdicts", len(dataset), positives, negatives)
    weights = class_weights([0] * positives + [1] * negatives, weighting)
    rm.config.extra["step_class_weight"] = {
        "setting": weighting, "weights": None if weights is None else dict(zip(("correct", "incorrect"), weights))}
    if weights is None:
        scorer = ClozeScorer(rm.model, rm.answer_ids, loss=config.loss, read=rm.config.read)
    else:
        logger.info("class weights: correct %.4f, incorrect %.4f (%s)", *weights, weighting)
        scorer = WeightedClozeScorer(rm.model, rm.answer_ids, weights, loss=config.loss, read=rm.config.read)
    outcome = fit(scorer, dataset, ProcessCollator(rm.tokenizer.pad_token_id or 0), config)
    result = make_result(config, outcome, 1, parameters, truncated=dataset.truncated, skipped=report.skipped)

    def save(scorer) -> None:
        rm.model = scorer.mlm
        rm.config.extra["result"] = {**asdict(result), "correct_verdicts": positives, "incorrect_verdicts": negatives}
        rm.save_pretrained(config.output)

    finish(config, outcome, result, save)
    return result


def load(path: str | Path, device: str | None = None, **overrides) -> RewardModel:
    """A saved process/outcome model (``RewardModel.from_pretrained`` dispatches here).

    Overrides: ``max_length``, ``prefix``, ``context`` (prefix | full); ``None`` values are ignored.
    """
    config = RewardConfig.load(path)
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "context":
            if value not in CONTEXTS:
                raise ValueError(f"context must be one of {', '.join(CONTEXTS)}, got {value!r}")
            config.extra.setdefault("process", {})["context"] = value
        elif key in ("max_length", "prefix", "both_orders"):
            setattr(config, key, value)
        elif key == "template":
            raise ValueError("process and outcome models keep their saved template")
        else:
            raise TypeError(f"unknown option {key!r} for a {config.objective} model")
    tokenizer, mlm = load_saved_backbone(path, config)
    rm = RewardModel(mlm, tokenizer, config, device=device)
    rm.name = str(path)
    return rm


# ----------------------------------------------------------------------------- evaluation
def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``; ties count half); None without
    both classes."""
    labels = [bool(p) for p in positives]
    if all(labels) or not any(labels):
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, [float(s) for s in scores]))


def binary_metrics(scores: Sequence[float], positives: Sequence[bool], threshold: float = 0.5) -> dict:
    """Accuracy, balanced accuracy and AUROC of P(correct) against labels."""
    predicted = [s >= threshold for s in scores]
    hits_pos = sum(p and y for p, y in zip(predicted, positives))
    hits_neg = sum((not p) and (not y) for p, y in zip(predicted, positives))
    n_pos = sum(bool(y) for y in positives)
    n_neg = len(positives) - n_pos
    recalls = [r for r in (hits_pos / n_pos if n_pos else None, hits_neg / n_neg if n_neg else None) if r is not None]
    return {"n": len(positives), "n_correct": n_pos, "n_incorrect": n_neg,
            "accuracy": (hits_pos + hits_neg) / len(positives) if positives else 0.0,
            "balanced_accuracy": sum(recalls) / len(recalls) if recalls else 0.0,
            "auroc": auroc(scores, positives)}


@dataclass
class ProcessEvalConfig:
    model: str = "default"
    data: list[str] = field(default_factory=list)
    objective: str = "process"  # process: step level; outcome: solution level
    context: str | None = None
    aggregate: str = "min"
    threshold: float = 0.5
    batch_size: int = 32
    max_length: int | None = None
    skip_bad_rows: bool = False
    output: str | None = None


def evaluate_steps(rm: RewardModel, rows: Sequence[ProcessRow], context: str | None = None,
                   threshold: float = 0.5, batch_size: int = 32) -> dict:
    """Step-level accuracy / AUROC on labelled steps, first-error-step accuracy on graded wrong
    solutions, and "no step flagged" accuracy on correct ones."""
    scores = score_many(rm, [(r.question, r.steps) for r in rows], context=context, batch_size=batch_size)
    return step_metrics(rows, scores, threshold)


def step_metrics(rows: Sequence[ProcessRow], scores: Sequence[Sequence[float]], threshold: float = 0.5) -> dict:
    """The metrics of :func:`evaluate_steps` from already computed step scores."""
    step_scores, step_labels_ = [], []
    for row, row_scores in zip(rows, scores):
        for score, label in zip(row_scores, row.labels):
            if label is not None:
                step_scores.append(score)
                step_labels_.append(label)
    located = [(row, s) for row, s in zip(rows, scores) if row.first_error is not None]
    clean_rows = [(row, s) for row, s in zip(rows, scores) if row.solution_correct]
    first = [combine(s, "first_error", threshold) == row.first_error for row, s in located]
    no_error = [combine(s, "first_error", threshold) == len(s) for _, s in clean_rows]
    return {
        "steps": binary_metrics(step_scores, step_labels_, threshold),
        "first_error_accuracy": sum(first) / len(first) if first else None, "first_error_n": len(first),
        "no_error_accuracy": sum(no_error) / len(no_error) if no_error else None, "no_error_n": len(no_error),
    }


def evaluate_solutions(rm: RewardModel, rows: Sequence[ProcessRow], aggregate: str = "min",
                       context: str | None = None, threshold: float = 0.5, batch_size: int = 32) -> dict:
    scores = solution_scores(rm, [(r.question, r.steps) for r in rows], aggregate=aggregate, context=context,
                             threshold=threshold, batch_size=batch_size)
    if aggregate == "first_error":  # a step count: "no step flagged" is the positive verdict
        scores = [float(s == len(r.steps)) for s, r in zip(scores, rows)]
    return {"solutions": binary_metrics(scores, [r.solution_correct for r in rows], threshold)}


def evaluate(config: ProcessEvalConfig) -> dict:
    rows = load_rows(config.data, skip_bad_rows=config.skip_bad_rows).rows
    rm = RewardModel.from_pretrained(config.model, max_length=config.max_length)
    s = spec(rm)
    context = _context(s, config.context)
    results: dict = {"model": rm.name, "model_objective": s.objective, "evaluation": config.objective,
                     "context": context, "threshold": config.threshold, "rows": len(rows)}
    if config.objective == "process":
        results.update(evaluate_steps(rm, rows, context, config.threshold, config.batch_size))
    results.update(evaluate_solutions(rm, rows, config.aggregate, context, config.threshold, config.batch_size))
    results["aggregate"] = "orm" if s.objective == "outcome" else config.aggregate
    if config.output:
        from .evaluate import write_results

        write_results(results, config.output)
    return results


def results_table(results: dict):
    from rich.table import Table

    table = Table(title=f"tinyrm eval --objective {results['evaluation']}: {results['model']} "
                        f"({results['model_objective']} model, context {results['context']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("n", justify="right")

    def fmt(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    if "steps" in results:
        st = results["steps"]
        table.add_row("step accuracy", fmt(st["accuracy"]), f"{st['n']} ({st['n_incorrect']} incorrect)")
        table.add_row("step balanced accuracy", fmt(st["balanced_accuracy"]), str(st["n"]))
        table.add_row("step AUROC", fmt(st["auroc"]), str(st["n"]))
        table.add_row("first-error-step accuracy", fmt(results["first_error_accuracy"]), str(results["first_error_n"]))
        table.add_row("no-error accuracy (correct solutions)", fmt(results["no_error_accuracy"]),
                      str(results["no_error_n"]))
    so = results["solutions"]
    label = f"solution ({results['aggregate']})"
    table.add_row(f"{label} accuracy", fmt(so["accuracy"]), f"{so['n']} ({so['n_correct']} correct)")
    table.add_row(f"{label} AUROC", fmt(so["auroc"]), str(so["n"]))
    return table


def run_eval(args) -> int:
    """``tinyrm eval --objective process|outcome --model DIR --data FILE...``."""
    from .cli.output import show_results

    if not args.data:
        raise ValueError("--data FILE... is required with --objective process|outcome")
    config = ProcessEvalConfig(
        model=args.model, data=args.data, objective=args.objective, context=getattr(args, "context", None),
        aggregate=getattr(args, "aggregate", None) or "min", batch_size=args.batch_size,
        max_length=args.max_length, skip_bad_rows=args.skip_bad_rows, output=args.output,
    )
    results = evaluate(config)
    return show_results(results, results_table, args.output, bool(getattr(args, "json", False)))

