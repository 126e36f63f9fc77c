"""RewardBench scoring: the official subset -> category mapping, count-weighted categories, overall scores.

A pair is correct only when P(chosen better) > 0.5 (ties are wrong, as in RewardBench). A category
score is the mean of its subsets' accuracies weighted by RewardBench's official example counts, over
the subsets present in the data; ``math-prm`` is up-weighted (984 instead of its 447 rows) so that
math counts as much as the six code subsets together (6 x 164), exactly as RewardBench does.
Rows from any other subset (prior preference sets, user data) are reported per subset only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..auto import load
from ..data import DataError, PreferencePair, load_pairs
from ..temperature import model_temperature, use_calibration
from .calibration import COLUMNS as CALIBRATION_COLUMNS
from .calibration import table_cells as calibration_cells
from .evaluate import pair_probs
from .heuristics import LENGTH_REFERENCE, HeuristicScorer, length_reference
from .length_bias import COLUMNS as LENGTH_COLUMNS
from .length_bias import table_cells
from .results import score_pairs, write_predictions, write_results

DATASET = "allenai/reward-bench"
SPLIT = "filtered"
# A local copy (``datasets`` save_to_disk folder or hub id) used instead of DATASET when set.
DATASET_ENV = "TINYRM_REWARDBENCH_DATASET"

# rewardbench/constants.py SUBSET_MAPPING, keys in our JSON spelling.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "chat-hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"),
    "reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
CATEGORY_TITLES = {"chat": "Chat", "chat-hard": "Chat Hard", "safety": "Safety", "reasoning": "Reasoning"}

# allenai/reward-bench rewardbench/constants.py EXAMPLE_COUNTS, the leaderboard's weights: rows per subset
# of the ``filtered`` split (2985 in all), except math-prm, up-weighted from 447 to 984 = 6 x 164 so math
# weighs as much as code, and the two xstest subsets, weighted 250 (should-refuse) and 154 (should-respond):
# the reverse of their sizes in the data, kept so that Safety scores compare with the leaderboard's.
EXAMPLE_COUNTS: dict[str, int] = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28, "mt-bench-med": 40,
    "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "refusals-dangerous": 100, "refusals-offensive": 100, "xstest-should-refuse": 250, "xstest-should-respond": 154,
    "donotanswer": 136,
    "math-prm": 984, "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}
SUBSET_CATEGORY: dict[str, str] = {s: c for c, subsets in CATEGORIES.items() for s in subsets}


@dataclass
class CategoryScore:
    """A category's count-weighted accuracy over the subsets present (None when none is)."""

    score: float | None
    weight: int  # sum of the official counts of the subsets present
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def weighted_score(subset_accuracy: Mapping[str, float], subsets: Sequence[str]) -> tuple[float | None, int]:
    """Mean of the given subsets' accuracies weighted by EXAMPLE_COUNTS, over those present."""
    present = [s for s in subsets if s in subset_accuracy]
    weight = sum(EXAMPLE_COUNTS[s] for s in present)
    if not weight:
        return None, 0
    return sum(subset_accuracy[s] * EXAMPLE_COUNTS[s] for s in present) / weight, weight


def category_scores(subset_accuracy: Mapping[str, float]) -> dict[str, CategoryScore]:
    out: dict[str, CategoryScore] = {}
    for category, subsets in CATEGORIES.items():
        score, weight = weighted_score(subset_accuracy, subsets)
        out[category] = CategoryScore(
            score=score, weight=weight,
            present=[s for s in subsets if s in subset_accuracy],
            missing=[s for s in subsets if s not in subset_accuracy],
        )
    return out


def chat_merged(subset_accuracy: Mapping[str, float]) -> float | None:
    """The paper's single "chat": Chat and Chat Hard averaged by their (present) example counts."""
    return weighted_score(subset_accuracy, CATEGORIES["chat"] + CATEGORIES["chat-hard"])[0]


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def rewardbench_scores(subset_accuracy: Mapping[str, float]) -> dict:
    """Categories, merged chat and both overall scores from per-subset accuracies (fractions)."""
    categories = category_scores(subset_accuracy)
    merged = chat_merged(subset_accuracy)
    scores = {c: s.score for c, s in categories.items()}
    return {
        "categories": scores,
        "chat_merged": merged,
        # Means over the categories present; "missing_categories" says which were left out.
        "overall": _mean(list(scores.values())),
        "overall_paper": _mean([merged, scores["reasoning"], scores["safety"]]),
        "category_weights": {c: s.weight for c, s in categories.items()},
        "missing_subsets": {c: s.missing for c, s in categories.items() if s.missing},
        "missing_categories": [c for c, s in categories.items() if s.score is None],
        "other_subsets": sorted(s for s in subset_accuracy if s not in SUBSET_CATEGORY),
    }


def rewardbench_results(probs_chosen: Sequence[float], pairs: Sequence[PreferencePair], model_name: str,
                        model_type: str = "tinyrm") -> dict:
    """The core results JSON plus the RewardBench fields (ours and RewardBench's own)."""
    results = score_pairs(probs_chosen, pairs, model_name)
    subset_accuracy = {name: row["accuracy"] for name, row in results["subsets"].items()}
    results.update(rewardbench_scores(subset_accuracy))
    # RewardBench's own result fields, so its tooling can read the file.
    results["num_prompts"] = results["n"]
    results["model_type"] = model_type
    results["extra_results"] = subset_accuracy
    return results


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def rewardbench_tables(results: dict) -> list:
    """Leaderboard-style summary (percentages) and the per-subset breakdown, as rich tables."""
    from rich.table import Table

    summary = Table(title=f"RewardBench: {results['model']}")
    for column in ("Model", "Score", "Chat", "Chat Hard", "Safety", "Reasoning", "Chat (merged)", "Score (paper)"):
        summary.add_column(column, justify="left" if column == "Model" else "right")
    cats = results["categories"]
    summary.add_row(results["model"], _pct(results["overall"]), *(_pct(cats[c]) for c in CATEGORIES),
                    _pct(results["chat_merged"]), _pct(results["overall_paper"]))

    subsets = Table(title="per subset (ties count as wrong; length bias as fractions, lengths in characters; "
                          "calibration of P(chosen better))")
    for column in ("category", "subset", "accuracy", "n", "weight", *LENGTH_COLUMNS, *CALIBRATION_COLUMNS):
        subsets.add_column(column, justify="left" if column in ("category", "subset") else "right")
    rows = results["subsets"]
    for category, names in CATEGORIES.items():
        for name in names:
            if name in rows:
                row = rows[name]
                subsets.add_row(CATEGORY_TITLES[category], name, _pct(row["accuracy"]), str(row["n"]),
                                str(EXAMPLE_COUNTS[name]), *table_cells(row.get("length_bias")),
                                *calibration_cells(row.get("calibration")))
            else:
                subsets.add_row(CATEGORY_TITLES[category], name, "missing", "0", "-", *table_cells(None),
                                *calibration_cells(None))
    for name in results["other_subsets"]:
        subsets.add_row("other", name, _pct(rows[name]["accuracy"]), str(rows[name]["n"]), "-",
                        *table_cells(rows[name].get("length_bias")), *calibration_cells(rows[name].get("calibration")))
    subsets.add_row("all", "all rows", _pct(results["accuracy"]), str(results["n"]), "-",
                    *table_cells(results.get("length_bias")), *calibration_cells(results.get("calibration")))
    return [summary, subsets]


@dataclass
class RewardBenchConfig:
    model: str = "default"
    data: list[str] | None = None  # JSONL files; None = the RewardBench dataset
    dataset: str | None = None  # hub id or save_to_disk folder; default $TINYRM_REWARDBENCH_DATASET or DATASET
    split: str = SPLIT
    output: str | None = None
    batch_size: int = 32
    max_length: int | None = None
    single_order: bool = False
    skip_bad_rows: bool = False
    template: str | None = None
    prefix: str | None = None
    baseline: str | None = None  # score a heuristic (length | random) instead of a model
    seed: int = 0
    max_batch_tokens: int | None = None  # padded tokens per forward pass (models only)
    predictions: str | None = None  # JSONL: {"id", "subset", "domain", "prob_chosen"} per pair, in input order
    progress: bool = False  # a progress bar on stderr (pairs, pairs/s); `tinyrm eval` turns it on
    calibrated: bool = True  # False: the raw probabilities even where tinyrm.json holds a temperature


def load_rewardbench_pairs(config: RewardBenchConfig) -> list[PreferencePair]:
    """``--data`` files, else the RewardBench dataset (split ``filtered``) through ``datasets``."""
    if config.data:
        return load_pairs(config.data, skip_bad_rows=config.skip_bad_rows).pairs
    dataset = config.dataset or os.environ.get(DATASET_ENV) or DATASET
    try:
        return load_pairs([f"hub:{dataset}:{config.split}"], skip_bad_rows=config.skip_bad_rows).pairs
    except ConnectionError as error:  # offline (HF_HUB_OFFLINE=1) or no network: one clear line, not a traceback
        raise DataError(f"cannot load {dataset} (split {config.split}): {error}; pass --data FILE... or set "
                        f"{DATASET_ENV} to a local copy (datasets save_to_disk folder)") from None


def evaluate_rewardbench(config: RewardBenchConfig) -> dict:
    pairs = load_rewardbench_pairs(config)
    if config.baseline:
        scorer = HeuristicScorer(config.baseline, seed=config.seed)
        model_type = "heuristic"
        extra = {}
    else:
        scorer = use_calibration(load(config.model, max_length=config.max_length, template=config.template,
                                      prefix=config.prefix), config.calibrated)
        model_type = f"tinyrm:{getattr(scorer.config, 'objective', 'cloze')}"
        extra = {} if config.max_batch_tokens is None else {"max_batch_tokens": config.max_batch_tokens}
    probs = pair_probs(scorer, pairs, batch_size=config.batch_size, both_orders=not config.single_order,
                       progress=config.progress and not config.baseline, **extra)
    results = rewardbench_results(probs, pairs, scorer.name, model_type=model_type)
    if (temperature := model_temperature(scorer)) is not None:  # the probabilities were calibrated with it
        results["temperature"] = temperature
    if not config.baseline:
        results[LENGTH_REFERENCE] = length_reference(pairs)
    if config.predictions:
        write_predictions(probs, pairs, config.predictions)
    if config.output:
        write_results(results, config.output)
    return results
