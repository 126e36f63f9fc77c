"""Scoring solutions step by step with any cloze model: a process or outcome checkpoint, or a pairwise
one asked zero-shot (the untrained process prompt)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..pairwise.model import RewardModel
from ..pairwise.rank import check_candidates
from ..prompt import resolve_answer_ids
from ..temperature import calibrate_output
from .aggregate import aggregate as combine
from .aggregate import check_method, check_threshold, rank_key
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


def _steps(steps: StepsInput, where: str = "") -> list[str]:
    """The steps as scored: a string split into steps (:func:`tinyrm.process.steps.split`), a list (or any
    iterable: a generator is read once, here, before anything is checked) taken step by step; every step then
    cleaned (:func:`tinyrm.process.steps.clean`). ``where`` prefixes errors (``"candidate 2: "``)."""
    if isinstance(steps, str):
        return [clean(s) for s in split(steps)]
    if isinstance(steps, (bytes, bytearray, Mapping)) or not isinstance(steps, Iterable):
        raise TypeError(f"{where}steps is {type(steps).__name__}, not a string or a list of strings")
    steps = list(steps)
    for i, step in enumerate(steps):
        if not isinstance(step, str):
            raise TypeError(f"{where}steps[{i}] is {type(step).__name__}, not str")
    return [clean(s) for s in steps]


def _problem(problem: object, where: str = "") -> str:
    if not isinstance(problem, str):
        raise TypeError(f"{where}problem is {type(problem).__name__}, not str")
    return problem


def _solutions(items: Iterable[tuple[str, StepsInput]]) -> list[tuple[str, list[str]]]:
    """Each (problem, steps) item checked, its steps as scored (``_steps``); errors name the item."""
    solutions = []
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"item {i}: expected (problem, steps), got {item!r:.60}")
        solutions.append((_problem(item[0], f"item {i}: "), _steps(item[1], f"item {i}: ")))
    return solutions


def _judged(solutions: Sequence[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """What a solution-level score reads: a solution with no step (an empty or blank text, an empty list) is one
    empty step ``""`` that the model judges, as an outcome model always did, not the aggregate of no step (1.0:
    an empty answer would rank first and, as an RL reward, teach a policy to say nothing)."""
    return [(problem, steps or [""]) for problem, steps in solutions]


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
    return _encode(rm, _solutions(items), context)


def _encode(rm: RewardModel, solutions: Sequence[tuple[str, list[str]]], context: str | None) -> StepBatch:
    s = spec(rm)
    context = resolve_context(s, context)
    batch = StepBatch([], [], [steps for _, steps in solutions])
    for item, (problem, steps) in enumerate(solutions):
        encodings = s.encoder.encode_solution(*s.encoder.tokenize(problem, steps), context)
        batch.encodings += encodings
        batch.owners += [item] * len(encodings)
    return batch


def score_many(rm: RewardModel, items: Sequence[tuple[str, StepsInput]], context: str | None = None,
               batch_size: int = 32, calibrated: bool | None = None) -> list[list[float]]:
    """P(step correct) for every step of every (problem, steps) item, in one batched run.

    On an outcome model, step k's score is the ORM's verdict on the solution cut after step k.
    """
    return _score_many(rm, _solutions(items), context, batch_size, calibrated)


def _score_many(rm: RewardModel, solutions: Sequence[tuple[str, list[str]]], context: str | None,
                batch_size: int, calibrated: bool | None) -> list[list[float]]:
    batch = _encode(rm, solutions, context)
    return batch.place(verdicts(rm, batch.encodings, batch_size, calibrated))


def outcome_scores(rm: RewardModel, items: Sequence[tuple[str, StepsInput]], batch_size: int = 32,
                   calibrated: bool | None = None) -> list[float]:
    """An outcome model's P(solution correct) for each (problem, steps): one mask after the last step."""
    return _outcome_scores(rm, _judged(_solutions(items)), batch_size, calibrated)


def _outcome_scores(rm: RewardModel, judged: Sequence[tuple[str, list[str]]], batch_size: int,
                    calibrated: bool | None) -> list[float]:
    s = spec(rm)
    encodings = []
    for problem, steps in judged:
        problem_ids, step_ids = s.encoder.tokenize(problem, steps)
        encodings.append(s.encoder.encode_step(problem_ids, step_ids, len(step_ids) - 1))
    return [p[0] for p in verdicts(rm, encodings, batch_size, calibrated)]


def _per_solution(rm: RewardModel, solutions: Sequence[tuple[str, list[str]]], aggregate: str,
                  context: str | None, threshold: float, batch_size: int,
                  calibrated: bool | None) -> tuple[list[float], list[float]]:
    """(score, sort key) of each solution: an outcome model's verdict (both), else its steps' aggregate and
    ``rank_key``. A solution with no step is judged as one empty step (``_judged``)."""
    check_method(aggregate)
    check_threshold(threshold)
    judged = _judged(solutions)
    if spec(rm).objective == "outcome":
        scores = _outcome_scores(rm, judged, batch_size, calibrated)
        return scores, scores
    per_step = _score_many(rm, judged, context, batch_size, calibrated)
    return ([combine(s, aggregate, threshold=threshold) for s in per_step],
            [rank_key(s, aggregate, threshold) for s in per_step])


def solution_scores(rm: RewardModel, items: Sequence[tuple[str, StepsInput]], aggregate: str = "min",
                    context: str | None = None, threshold: float = 0.5, batch_size: int = 32,
                    calibrated: bool | None = None) -> list[float]:
    """One score per solution: the ORM verdict for outcome models, aggregated step scores otherwise. A solution
    with no step is scored as one empty step ``""`` that the model judges (never ``aggregate([])``'s 1.0)."""
    return _per_solution(rm, _solutions(items), aggregate, context, threshold, batch_size, calibrated)[0]


def score_steps(rm: RewardModel, problem: str, steps: StepsInput, context: str | None = None,
                batch_size: int = 32, calibrated: bool | None = None) -> list[float]:
    """P(step correct) for each step (a string is split with :func:`tinyrm.process.steps.split`; no step: ``[]``)."""
    return _score_many(rm, [(_problem(problem), _steps(steps))], context, batch_size, calibrated)[0]


def score_solution(rm: RewardModel, problem: str, steps: StepsInput, aggregate: str = "min",
                   context: str | None = None, threshold: float = 0.5, calibrated: bool | None = None) -> float:
    """One reward for a solution (see :func:`tinyrm.process.aggregate.aggregate`; ORMs ignore ``aggregate``).
    A solution with no step (``""``, blank, ``[]``) is judged by the model as one empty step."""
    solution = [(_problem(problem), _steps(steps))]
    return _per_solution(rm, solution, aggregate, context, threshold, 32, calibrated)[0][0]


def solution_reward(rm: RewardModel, scores: Sequence[float], aggregate: str = "min", threshold: float = 0.5) -> float:
    """A solution's reward from its step scores: their aggregate, or an outcome model's verdict on the whole
    solution, which is its last step's (the same sequence). Needs at least one score for an outcome model; no
    score at all is ``aggregate([])`` (1.0) on a process model: callers with a solution of no step score it as
    one empty step instead (``score_solution``; ``/v1/score_steps`` takes at least one step)."""
    check_method(aggregate)
    check_threshold(threshold)
    if spec(rm).objective != "outcome":
        return combine(list(scores), aggregate, threshold=threshold)
    if not scores:
        raise ValueError("an outcome model's reward needs at least one step")
    return scores[-1]


def steps_and_reward(rm: RewardModel, problem: str, steps: StepsInput, aggregate: str = "min",
                     context: str | None = None, threshold: float = 0.5,
                     calibrated: bool | None = None) -> tuple[list[float], float]:
    """:func:`score_steps` and :func:`score_solution` of one solution from one scoring run: the step verdicts
    and :func:`solution_reward` of them (calling the two functions scores every step twice). With no step: no
    score, and the reward of the solution judged as one empty step, as ``score_solution`` gives."""
    check_method(aggregate)
    check_threshold(threshold)
    solution = [(_problem(problem), _steps(steps))]
    if not solution[0][1]:
        return [], _per_solution(rm, solution, aggregate, context, threshold, 32, calibrated)[0][0]
    scores = _score_many(rm, solution, context, 32, calibrated)[0]
    return scores, solution_reward(rm, scores, aggregate, threshold)


def rerank(rm: RewardModel, problem: str, candidates: Sequence[StepsInput], aggregate: str = "min",
           context: str | None = None, threshold: float = 0.5, batch_size: int = 32,
           calibrated: bool | None = None) -> list[tuple[int, float]]:
    """``[(index, score), ...]`` best first (ties keep the input order), sorted by
    :func:`tinyrm.process.aggregate.rank_key` (``product``: by its logarithm, which does not underflow).
    A candidate with no step is judged as one empty step (``solution_scores``); a str ``candidates`` is refused
    (``tinyrm.pairwise.rank.check_candidates``'s message), as each of its characters would be a candidate."""
    if isinstance(candidates, str):
        check_candidates(candidates)  # raises: "candidates must be a list of strings, got str"
    problem = _problem(problem)
    solutions = [(problem, _steps(c, f"candidate {i}: ")) for i, c in enumerate(candidates)]
    scores, keys = _per_solution(rm, solutions, aggregate, context, threshold, batch_size, calibrated)
    return [(i, scores[i]) for i in sorted(range(len(scores)), key=lambda i: (-keys[i], i))]
