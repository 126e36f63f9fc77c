"""Combining checkpoints: fold DoRA adapters into the backbone, or average specialists' weights.

``merge_dora`` uses peft's ``merge_and_unload`` and checks that the merged model scores a test
set like the adapter model did (within ``tolerance``, fp32, adapters run unmerged), timing both.
``average_checkpoints`` is the paper's WARM attempt: a weighted mean of full fine-tunes of one
backbone, refusing folders that do not share architecture, tokenizer, tensor shapes and the
``tinyrm.json`` fields that decide how a model is scored (``SCORING_FIELDS``).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backbone import mask_logits, read_positions, unwrap_peft
from ..config import CONFIG_FILE, RewardConfig
from ..data import PreferencePair, load_pairs
from ..inference.batches import collate, pair_scores
from ..model_card import short_repr
from ..pairwise.model import RewardModel

logger = logging.getLogger(__name__)

# Config keys that differ between copies of one architecture without changing the weights' meaning.
_CONFIG_NOISE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "_commit_hash",
                 "_attn_implementation_autoset", "id2label", "label2id"}


@dataclass
class MergeDoraConfig:
    dora: str
    output: str
    data: list[str] = field(default_factory=list)  # test pairs; synthetic pairs when empty
    n_pairs: int = 64
    batch_size: int = 32
    tolerance: float = 1e-4
    repeats: int = 3  # timing repeats (best of)


@dataclass
class MergeDoraReport:
    output: str
    n_pairs: int
    max_abs_diff: float
    seconds_adapter: float
    seconds_merged: float
    speedup: float


def check_pairs(data: Sequence[str], n_pairs: int) -> list[PreferencePair]:
    if data:
        return load_pairs(list(data)).pairs[:n_pairs]
    from .synthetic import generate

    return generate(n_pairs, seed=1234)


@torch.inference_mode()
def direct_scores(rm: RewardModel, items: Sequence[tuple[str, str, str]], batch_size: int = 32,
                  both_orders: bool = True) -> list[float]:
    """P(a better), both orders averaged, computed in fp32 straight through ``rm.model``.

    ``RewardModel.compare_batch`` runs a private copy with adapters already merged (and bf16 on
    CPUs that have it), which would make the comparison below trivially exact; this path runs
    the DoRA layers as trained, so it measures what merging changes.
    """
    encodings = [rm.encode(p, a, b) for p, a, b in items]
    if both_orders:
        encodings += [rm.encode(p, b, a) for p, a, b in items]
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].input_ids))
    backbone = unwrap_peft(rm.model)
    answer_ids = torch.tensor(rm.answer_ids, device=rm.device)
    probs = [0.0] * len(encodings)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.to(rm.device) for k, v in collate([encodings[i] for i in idx], rm.tokenizer.pad_token_id
                                                             or 0).items()}
        positions = read_positions(rm.config.read, batch["mask_positions"])  # where the engine reads
        logits = mask_logits(backbone, batch["input_ids"], batch["attention_mask"], positions,
                             token_ids=answer_ids, token_type_ids=batch.get("token_type_ids"))
        for i, p in zip(idx, torch.softmax(logits.float(), dim=-1)[:, 0].tolist()):
            probs[i] = p
    return pair_scores(probs, len(items), both_orders)


def _timed_scores(rm, items: list[tuple[str, str, str]], batch_size: int, repeats: int) -> tuple[list[float], float]:
    """Scores and the best wall time over ``repeats`` runs (best-of reduces CPU-sharing noise)."""
    best = float("inf")
    scores: list[float] = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        scores = direct_scores(rm, items, batch_size)
        best = min(best, time.perf_counter() - start)
    return scores, best


def merge_dora(config: MergeDoraConfig) -> MergeDoraReport:
    """Fold the adapter of ``config.dora`` into its base weights and save a plain checkpoint."""
    source = Path(config.dora)
    if not (source / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{source}: not a tinyrm model folder (no {CONFIG_FILE})")
    saved = RewardConfig.load(source)
    if saved.objective != "cloze" or not saved.adapter:
        raise ValueError(f"{source}: has no DoRA adapter to merge (train with --dora-rank > 0)")
    rm = RewardModel.from_pretrained(str(source), device="cpu")
    pairs = check_pairs(config.data, config.n_pairs)
    if not pairs:
        raise ValueError("merge --dora: the test set is empty")
    items = [(p.prompt, p.chosen, p.rejected) for p in pairs]
    before, seconds_adapter = _timed_scores(rm, items, config.batch_size, config.repeats)

    merged = rm.model.merge_and_unload()  # W' = m * (W + BA) / ||W + BA|| folded into W
    rm.model = merged
    rm.config.adapter = None
    rm.config.extra = {**rm.config.extra, "merged_from": str(source)}
    after, seconds_merged = _timed_scores(rm, items, config.batch_size, config.repeats)
    diff = max(abs(a - b) for a, b in zip(before, after))
    if diff > config.tolerance:
        raise ValueError(f"merged model disagrees with the adapter model: max |dP| = {diff:.2e} "
                         f"> tolerance {config.tolerance:g}; nothing saved")
    rm.save_pretrained(config.output)
    return MergeDoraReport(output=config.output, n_pairs=len(pairs), max_abs_diff=diff,
                           seconds_adapter=round(seconds_adapter, 4), seconds_merged=round(seconds_merged, 4),
                           speedup=round(seconds_adapter / max(seconds_merged, 1e-9), 3))


@dataclass
class AverageConfig:
    checkpoints: list[str]
    output: str
    weights: list[float] | None = None  # uniform when None; normalised to sum 1


# tinyrm.json fields that decide how a model is scored: where the head reads, which tokens answer, how the input
# is laid out (objective: only cloze models are averaged). Folders that differ in one are refused.
SCORING_FIELDS = ("read", "answer_tokens", "template")
# Fields that may differ (specialists trained with their own prefixes, the paper's WARM attempt, or cut at
# different lengths): the average takes the first tinyrm.json's values and records the differences.
FIRST_WINS = ("prefix", "domain_prefixes", "max_length", "truncation", "diff_context", "both_orders")


class IncompatibleCheckpoints(ValueError):
    """Checkpoints that cannot be averaged (different backbone, tokenizer, shapes, adapters)."""


def _model_signature(directory: Path) -> dict:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory).to_dict()
    return {k: v for k, v in config.items() if k not in _CONFIG_NOISE}


def saved_configs(directories: Sequence[Path]) -> dict[Path, RewardConfig]:
    """The ``tinyrm.json`` of each folder that has one (a plain masked LM has none and imposes nothing),
    refusing kinds that cannot be averaged."""
    configs: dict[Path, RewardConfig] = {}
    for directory in directories:
        if not (directory / CONFIG_FILE).is_file():
            continue
        saved = RewardConfig.load(directory)
        if saved.objective != "cloze":
            raise IncompatibleCheckpoints(f"{directory}: objective {saved.objective!r}; only cloze reward "
                                          "models can be averaged")
        if saved.adapter:
            raise IncompatibleCheckpoints(f"{directory}: holds a DoRA adapter; fold it in first with "
                                          f"`tinyrm merge --dora {directory} --output DIR`")
        configs[directory] = saved
    return configs


def check_settings(configs: dict[Path, RewardConfig]) -> None:
    """Refuse folders whose ``tinyrm.json`` differs in how the model is scored (see ``SCORING_FIELDS``)."""
    if not configs:
        return
    (first, reference), *others = configs.items()
    for directory, saved in others:
        for name in SCORING_FIELDS:
            mine, theirs = getattr(saved, name), getattr(reference, name)
            if mine != theirs:
                raise IncompatibleCheckpoints(
                    f"{directory}: {name} {short_repr(mine)} differs from {first}'s {short_repr(theirs)} "
                    "(tinyrm.json); the average would be scored as only one of them was trained")


def differing_settings(configs: dict[Path, RewardConfig]) -> dict[str, dict[str, object]]:
    """The ``FIRST_WINS`` fields that differ between folders, each as {folder: value}."""
    found: dict[str, dict[str, object]] = {}
    for name in FIRST_WINS:
        values = {str(d): getattr(c, name) for d, c in configs.items()}
        if any(v != next(iter(values.values())) for v in values.values()):
            found[name] = values
    return found


def check_compatible(directories: Sequence[Path]) -> dict[Path, RewardConfig]:
    """Raise ``IncompatibleCheckpoints`` naming the folder that differs; returns the folders' ``tinyrm.json``.

    The ``tinyrm.json`` checks come first, so that a folder that is no cloze model (a route bundle has
    no backbone config) gets its own error rather than one from transformers."""
    from transformers import AutoTokenizer

    configs = saved_configs(directories)
    check_settings(configs)
    first = directories[0]
    reference = _model_signature(first)
    vocab = AutoTokenizer.from_pretrained(first).get_vocab()
    for directory in directories[1:]:
        signature = _model_signature(directory)
        if signature != reference:
            keys = sorted(k for k in set(signature) | set(reference) if signature.get(k) != reference.get(k))
            details = ", ".join(f"{k}: {reference.get(k)!r} vs {signature.get(k)!r}" for k in keys[:4])
            raise IncompatibleCheckpoints(f"{directory}: different backbone from {first} ({details})")
        if AutoTokenizer.from_pretrained(directory).get_vocab() != vocab:
            raise IncompatibleCheckpoints(f"{directory}: different tokenizer vocabulary from {first}")
    return configs


def normalised_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ValueError(f"--weights: got {len(weights)} weights for {n} checkpoints")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("--weights must be non-negative with a positive sum")
    total = float(sum(weights))
    return [w / total for w in weights]


def average_checkpoints(config: AverageConfig) -> RewardModel:
    """Weighted mean of the checkpoints' tensors, saved with the first ``tinyrm.json``'s settings."""
    from ..backbone import load_mlm

    if len(config.checkpoints) < 2:
        raise ValueError("merge --average needs at least two checkpoints")
    directories = [Path(d) for d in config.checkpoints]
    for directory in directories:
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such model folder")
    configs = check_compatible(directories)
    weights = normalised_weights(config.weights, len(directories))

    tokenizer, base = load_mlm(str(directories[0]))
    states = [base.state_dict()] + [load_mlm(str(d))[1].state_dict() for d in directories[1:]]
    averaged: dict[str, torch.Tensor] = {}
    for key, tensor in states[0].items():
        shapes = {tuple(s[key].shape) for s in states if key in s}
        if len(shapes) != 1 or any(key not in s for s in states):
            raise IncompatibleCheckpoints(f"tensor {key} is missing or differs in shape between checkpoints")
        if tensor.is_floating_point():
            averaged[key] = sum(w * s[key].double() for w, s in zip(weights, states)).to(tensor.dtype)
        else:  # integer buffers (position ids) must agree, not be averaged
            if any(not torch.equal(s[key], tensor) for s in states[1:]):
                raise IncompatibleCheckpoints(f"integer buffer {key} differs between checkpoints")
            averaged[key] = tensor
    base.load_state_dict(averaged)
    # A plain masked LM (no tinyrm.json) has no settings: take them from the first folder that has some.
    settings_from = next(iter(configs), None)
    reward_config = copy.deepcopy(configs[settings_from]) if settings_from else RewardConfig()
    reward_config.adapter = None
    reward_config.calibration = None  # a temperature fitted to one checkpoint says nothing about the average
    differing = differing_settings(configs)
    if differing:
        logger.warning("merge --average: %s differ between the folders; using %s's", ", ".join(differing),
                       settings_from)
    # What the model card's Training section describes (model_card: an average, not "not trained by tinyrm").
    reward_config.extra = {"averaged_from": [str(d) for d in directories], "weights": weights,
                           "settings_from": str(settings_from) if settings_from else None}
    if differing:
        reward_config.extra["differing_settings"] = differing
    rm = RewardModel(base, tokenizer, reward_config, device="cpu")
    rm.save_pretrained(config.output)
    rm.name = config.output
    return rm
