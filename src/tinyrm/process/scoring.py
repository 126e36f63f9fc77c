"""Scoring solutions step by step with any cloze model: a process or outcome checkpoint, or a pairwise
one asked zero-shot (the untrained process prompt)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..pairwise.model import RewardModel
from ..prompt import resolve_answer_ids
from ..temperature import calibrate_output
from .aggregate import aggregate as combine
from .aggregate import check_method, rank_key
from .prompt import (
    ANSWER_TOKENS,
    CONTEXTS,
    OBJECTIVES,
    PREFIXES,
    STEP_TEMPLATES,
    StepEncoded,
    StepEncoder,
    StepsInput,
    StepTemplate,
)
from .steps import clean, split


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
    else:  # a pairwise checkpoint asked for step verdicts: the untrained process prompt (or a prefix given)
        template, objective = STEP_TEMPLATES["process"], "process"
        prefix = config.extra.get("process", {}).get("prefix", PREFIXES["process"])
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


def resolve_context(s: ProcessSpec, context: str | None) -> str:
    context = context or s.context
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {', '.join(CONTEXTS)}, got {context!r}")
    if s.objective == "outcome" and context == "full":
        raise ValueError("an outcome model gives one verdict per solution: context 'full' does not apply")
    return context


def verdicts(rm: RewardModel, encodings: Sequence[StepEncoded], batch_size: int = 32,
             calibrated: bool | None = None) -> list[list[float]]:
    """P(answer token 0, i.e. correct) at each read mask of each encoding, through the model's scoring engine
    (``rm.engine``, ``inference.engine.InferenceEngine.read_probs``): batches of at most ``batch_size``
    sequences under its token budget, its precision (bf16 where native, near-ties re-read in fp32) and its
    attention (packed where ``auto`` picks it). A process or outcome model calibrated by ``tinyrm calibrate``
    gives sigmoid(logit(P) / T) (``tinyrm.temperature``); ``calibrated=False`` (or ``rm.calibrated = False``)
    the raw P. A model reading [CLS] reads one verdict per sequence: the engine refuses a ``full`` window."""
    per_encoding = rm.engine.read_probs(encodings, spec(rm).answer_ids, batch_size=batch_size)
    probs = iter(calibrate_output(rm, [p for row in per_encoding for p in row], calibrated, kind="step"))
    return [[next(probs) for _ in row] for row in per_encoding]


@dataclass
class StepBatch:
    """The sequences that read every step of some (problem, steps) items (``encode_many``): ``owners[i]`` is
    the item ``encodings[i]`` belongs to, ``solutions`` the items' steps as scored (split and cleaned)."""

    encodings: list[StepEncoded]
    owners: list[int]
    solutions: list[list[str]]

    def place(self, rows: Sequence[Sequence[float]]) -> list[list[float]]:
        """Per item, P(step correct) for each of its steps, from the verdicts of ``encodings`` (``verdicts``)."""
        scores = [[0.0] * len(steps) for steps in self.solutions]
        for enc, owner, probs in zip(self.encodings, self.owners, rows):
            for step, p in zip(enc.targets, probs):
                scores[owner][step] = p
        return scores


def encode_many(rm: RewardModel, items: Sequence[tuple[str, StepsInput]], context: str | None = None) -> StepBatch:
    """Every step of every (problem, steps) item as the sequences that read it (``StepEncoder.encode_solution``)."""
    s = spec(rm)
    context = resolve_context(s, context)
    batch = StepBatch([], [], [_steps(steps) for _, steps in items])
    for item, ((problem, _), steps) in enumerate(zip(items, batch.solutions)):
        encodings = s.encoder.encode_solution(*s.encoder.tokenize(problem, steps), context)
        batch.encodings += encodings
        batch.owners += [item] * len(encodings)
    return batch


def score_many(rm: RewardModel, items: Sequence[tuple[str, StepsInput]], context: str | None = None,
               batch_size: int = 32, calibrated: bool | None = None) -> list[list[float]]:
    """P(step correct) for every step of every (problem, steps) item, in one batched run.

    On an outcome model, step k's score is the ORM's verdict on the solution cut after step k.
    """
    batch = encode_many(rm, items, context)
    return batch.place(verdicts(rm, batch.encodings, batch_size, calibrated))


def outcome_scores(rm: RewardModel, items: Sequence[tuple[str, StepsInput]], batch_size: int = 32,
                   calibrated: bool | None = None) -> list[float]:
    """An outcome model's P(solution correct) for each (problem, steps): one mask after the last step."""
    s = spec(rm)
    encodings = []
    for problem, steps in items:
        problem_ids, step_ids = s.encoder.tokenize(problem, _steps(steps) or [""])
        encodings.append(s.encoder.encode_step(problem_ids, step_ids, len(step_ids) - 1))
    return [p[0] for p in verdicts(rm, encodings, batch_size, calibrated)]


def solution_scores(rm: RewardModel, items: Sequence[tuple[str, StepsInput]], aggregate: str = "min",
                    context: str | None = None, threshold: float = 0.5, batch_size: int = 32,
                    calibrated: bool | None = None) -> list[float]:
    """One score per solution: the ORM verdict for outcome models, aggregated step scores otherwise."""
    check_method(aggregate)
    if spec(rm).objective == "outcome":
        return outcome_scores(rm, items, batch_size=batch_size, calibrated=calibrated)
    per_step = score_many(rm, items, context=context, batch_size=batch_size, calibrated=calibrated)
    return [combine(scores, aggregate, threshold=threshold) for scores in per_step]


def score_steps(rm: RewardModel, problem: str, steps: StepsInput, context: str | None = None,
                batch_size: int = 32, calibrated: bool | None = None) -> list[float]:
    """P(step correct) for each step (a string is split with :func:`tinyrm.process.steps.split`)."""
    return score_many(rm, [(problem, steps)], context=context, batch_size=batch_size, calibrated=calibrated)[0]


def score_solution(rm: RewardModel, problem: str, steps: StepsInput, aggregate: str = "min",
                   context: str | None = None, threshold: float = 0.5, calibrated: bool | None = None) -> float:
    """One reward for a solution (see :func:`tinyrm.process.aggregate.aggregate`; ORMs ignore ``aggregate``)."""
    return solution_scores(rm, [(problem, steps)], aggregate=aggregate, context=context, threshold=threshold,
                           calibrated=calibrated)[0]


def solution_reward(rm: RewardModel, scores: Sequence[float], aggregate: str = "min", threshold: float = 0.5) -> float:
    """A solution's reward from its step scores: their aggregate, or an outcome model's verdict on the whole
    solution, which is its last step's (the same sequence). Needs at least one score for an outcome model."""
    check_method(aggregate)
    if spec(rm).objective != "outcome":
        return combine(list(scores), aggregate, threshold=threshold)
    if not scores:
        raise ValueError("an outcome model's reward needs at least one step")
    return scores[-1]


def steps_and_reward(rm: RewardModel, problem: str, steps: StepsInput, aggregate: str = "min",
                     context: str | None = None, threshold: float = 0.5,
                     calibrated: bool | None = None) -> tuple[list[float], float]:
    """:func:`score_steps` and :func:`score_solution` of one solution from one scoring run: the step verdicts
    and :func:`solution_reward` of them (calling the two functions scores every step twice)."""
    check_method(aggregate)
    scores = score_steps(rm, problem, steps, context=context, calibrated=calibrated)
    if not scores and spec(rm).objective == "outcome":  # no step: the solution judged as ""
        return scores, outcome_scores(rm, [(problem, steps)], calibrated=calibrated)[0]
    return scores, solution_reward(rm, scores, aggregate, threshold)


def rerank(rm: RewardModel, problem: str, candidates: Sequence[StepsInput], aggregate: str = "min",
           context: str | None = None, threshold: float = 0.5, batch_size: int = 32,
           calibrated: bool | None = None) -> list[tuple[int, float]]:
    """``[(index, score), ...]`` best first (ties keep the input order), sorted by
    :func:`tinyrm.process.aggregate.rank_key` (``product``: by its logarithm, which does not underflow)."""
    items = [(problem, c) for c in candidates]
    check_method(aggregate)
    if spec(rm).objective == "outcome":
        scores = keys = outcome_scores(rm, items, batch_size=batch_size, calibrated=calibrated)
    else:
        per_step = score_many(rm, items, context=context, batch_size=batch_size, calibrated=calibrated)
        scores = [combine(s, aggregate, threshold=threshold) for s in per_step]
        keys = [rank_key(s, aggregate, threshold) for s in per_step]
    return [(i, scores[i]) for i in sorted(range(len(scores)), key=lambda i: (-keys[i], i))]
