"""Model cards: the ``README.md`` every ``save_pretrained`` writes next to the weights.

A card is built from the saved ``RewardConfig`` alone: base model, objective, input format
(template, instruction prefix, read position, per-domain prefixes; for the classifier, the text
layout a ``text-classification`` pipeline must be given), training data and steps
(``extra["data"]``, ``extra["train"]``, ``extra["result"]``), measured accuracy (``extra["eval"]``,
filled by :func:`record_eval`, with length bias and calibration), the temperature of ``tinyrm calibrate``
(``calibration``) and a usage snippet (tinyrm, and plain transformers where the folder
is a standard ``AutoModelForSequenceClassification`` checkpoint).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .config import RewardConfig
from .evaluation.calibration import COLUMNS as CALIBRATION_COLUMNS
from .evaluation.calibration import table_cells as calibration_cells
from .evaluation.length_bias import COLUMNS as LENGTH_COLUMNS
from .evaluation.length_bias import table_cells

CARD_FILE = "README.md"
# RewardConfig.extra["format"] of a classifier saved as a plain AutoModelForSequenceClassification.
SEQUENCE_CLASSIFICATION = "sequence-classification"
# What the embedded default backbone is, for cards of models trained from it.
DEFAULT_BASE = "sentence-transformers/all-MiniLM-L6-v2"

OBJECTIVE_TEXT = {
    "cloze": "pairwise FLAN-cloze (TinyRM): a masked LM reads both responses in one prompt and answers "
             "which is better at one token; `P(a better than b)` is the softmax over the two answer tokens",
    "classifier": "classifier head, Bradley-Terry loss `-log sigmoid(r(chosen) - r(rejected))`: one scalar "
                  "reward per (prompt, response), `P(a better than b) = sigmoid(r(a) - r(b))`",
    "token": "token-level classification: a one-logit head on every response token trained towards "
             "\"this token belongs to the chosen response\"; a response's reward is the mean of its token "
             "logits, `P(a better than b) = sigmoid(r(a) - r(b))`",
    "process": "process reward (cloze): a masked LM judges each solution step correct or not at one token",
    "outcome": "outcome reward (cloze): a masked LM judges a whole solution correct or not at one token",
    "route": "routed bundle: a small domain classifier sends each comparison to one specialist reward model",
}
READ_TEXT = {"mask": "at the `[MASK]` slot", "cls": "at `[CLS]` (position 0)"}


def base_model_name(config) -> str:
    base = config.base_model or "unknown"
    return DEFAULT_BASE if base in ("default", "") else str(base)


def _hub_id(name: str) -> str | None:
    """``name`` if it reads as a hub id (ORG/NAME, not a local folder), for the card's metadata."""
    if Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return None
    return name


def _is_sequence_classification(config) -> bool:
    return config.extra.get("format") == SEQUENCE_CLASSIFICATION


def _front_matter(config) -> str:
    native = _is_sequence_classification(config)
    lines = ["---", f"library_name: {'transformers' if native else 'tinyrm'}"]
    if native:
        lines.append("pipeline_tag: text-classification")
    base = _hub_id(base_model_name(config))
    if base:
        lines.append(f"base_model: {base}")
    lines += ["tags:", "- reward-model", "- tinyrm", f"- {config.objective}", "---"]
    return "\n".join(lines)


def _template_text(template: Mapping[str, Any]) -> str:
    first = "".join(template.get("first", ()))
    second = "".join(template.get("second", ()))
    return f"`{first}` ‖ `{second}`"


def _input_section(config) -> list[str]:
    lines = ["## Input format", ""]
    objective = config.objective
    if objective == "route":
        specialists = config.extra.get("specialists", {})
        sources = config.extra.get("sources", {})
        lines.append("- each (prompt, a, b) goes to the specialist of its predicted domain (each has its own card):")
        lines += [f"  - `{domain}`: `{folder}`" + (f" (from `{sources[domain]}`)" if domain in sources else "")
                  for domain, folder in sorted(specialists.items())]
        return lines
    if objective in ("cloze", "process", "outcome"):
        template = config.template or {}
        lines.append(f"- template: `{template.get('name', '?')}`: {_template_text(template)} "
                     "(two segments joined by the tokenizer's pair separator)")
        lines.append(f"- prefix (instruction): {json.dumps(config.prefix)}")
        if objective == "cloze":
            lines.append(f"- read position: `{config.read}` (the answer is read {READ_TEXT.get(config.read, '?')})")
            lines.append(f"- both orders averaged: {config.both_orders}")
        lines.append(f"- answer tokens: {', '.join(f'`{t}`' for t in config.answer_tokens)}")
        if config.domain_prefixes:
            lines.append("- domain prefixes (a row's `domain` picks its instruction; others use the prefix):")
            lines += [f"  - `{d}`: {json.dumps(prefix)}" for d, prefix in sorted(config.domain_prefixes.items())]
        context = config.extra.get("process", {}).get("context")
        if context:
            lines.append(f"- step context: `{context}`")
    else:
        pooling = config.extra.get("pooling", "cls")
        lines.append("- each (prompt, response) is scored on its own: the tokenizer's text pair "
                     "`(prompt, response)`, i.e. `[CLS] prompt [SEP] response [SEP]` for BERT-style tokenizers")
        if objective == "classifier":
            lines.append(f"- pooling: `{pooling}`")
        if _is_sequence_classification(config):
            separator = config.extra.get("separator", "[SEP]")
            lines.append("- no segment (token type) ids: the single string "
                         f"`prompt + {json.dumps(separator)} + response` gives the same tokens as the text pair, and "
                         "the tokenizer's chat template renders a `[user, assistant]` conversation that way "
                         "(earlier turns joined by newlines), so RewardBench's `run_rm.py` scores it as tinyrm does")
            lines.append("- the one logit (label `reward`, `problem_type: regression`) is the reward; higher is better")
    if objective in ("classifier", "token"):
        note = ("tinyrm keeps the end of a long prompt and the head and tail of a long response; plain "
                "transformers truncation differs on inputs longer than this")
    else:
        note = "tinyrm shortens the prompt and the responses (or steps), never the answer slot"
    lines.append(f"- max length: {config.max_length} tokens ({note})")
    return lines


def _data_files(config) -> list[str]:
    data = config.extra.get("data")
    if isinstance(data, Mapping):
        data = data.get("files")
    if data is None:
        data = config.extra.get("train", {}).get("data")
    return [str(d) for d in data] if data else []


TRAIN_KEYS = ("lr", "epochs", "batch_size", "micro_batch_size", "max_length", "max_steps", "warmup_ratio",
              "weight_decay", "dora_rank", "freeze_layers", "loss", "order", "precision", "seed", "max_pairs")


def short_repr(value: object, width: int = 80) -> str:
    """``repr(value)`` cut to ``width`` characters, for one-line notes (a long prefix, a prefix map)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _averaged_lines(config) -> list[str]:
    """What ``tinyrm merge --average`` made: whose weights, whose settings, what differed."""
    extra = config.extra
    lines = ["- weights: the weighted average (`tinyrm merge --average`, no training since) of "
             + ", ".join(f"`{d}` ({w:.3f})" for d, w in zip(extra["averaged_from"], extra.get("weights") or []))]
    settings_from = extra.get("settings_from")
    lines.append(f"- scoring settings (tinyrm.json) from `{settings_from}`" if settings_from else
                 "- scoring settings: tinyrm's defaults (no folder had a tinyrm.json)")
    for name, values in (extra.get("differing_settings") or {}).items():
        shown = ", ".join(f"`{d}`: {short_repr(v)}" for d, v in values.items())
        lines.append(f"- {name} differed (the first kept): {shown}")
    if not config.calibration:
        lines.append("- calibration: none (a temperature fitted to one checkpoint says nothing about the average)")
    return lines


def _training_section(config) -> list[str]:
    if config.extra.get("averaged_from"):
        return ["## Training", "", *_averaged_lines(config)]
    train = config.extra.get("train") or {}
    result = config.extra.get("result") or {}
    files = _data_files(config)
    report = config.extra.get("router_report")
    if report:
        counts = ", ".join(f"{d}: {n}" for d, n in report.get("counts", {}).items())
        return ["## Training", "", f"- router trained on {counts or 'no rows'} (training accuracy "
                f"{report.get('train_accuracy', '-')}); the specialists as trained"]
    if not (train or result or files):
        return ["## Training", "", "Not trained by tinyrm (a checkpoint wrapped as it is)."]
    lines = ["## Training", ""]
    if files:
        lines.append("- data: " + ", ".join(f"`{f}`" for f in files))
    else:
        lines.append("- data: not recorded")
    if result:
        done = [f"{result['steps']} steps" if "steps" in result else None,
                f"{result['pairs']} pairs" if "pairs" in result else None,
                f"{result['examples']} examples" if "examples" in result else None,
                f"{result['seconds']} s" if "seconds" in result else None]
        lines.append("- trained: " + ", ".join(d for d in done if d))
        if result.get("trainable_parameters") and result.get("total_parameters"):
            lines.append(f"- parameters: {result['trainable_parameters']:,} trainable / "
                         f"{result['total_parameters']:,} total")
        for key in ("correct_verdicts", "incorrect_verdicts", "skipped_rows", "truncated_examples"):
            if result.get(key):
                lines.append(f"- {key.replace('_', ' ')}: {result[key]}")
    settings = [f"{k}={train[k]}" for k in TRAIN_KEYS if train.get(k) is not None]
    if settings:
        lines.append("- settings: " + ", ".join(settings))
    return lines


def _eval_section(config) -> list[str]:
    evals = config.extra.get("eval")
    if not evals:
        return ["## Evaluation", "", "No accuracy recorded (`tinyrm.model_card.record_eval` adds one)."]
    columns = (*LENGTH_COLUMNS, *CALIBRATION_COLUMNS)
    lines = ["## Evaluation", "", f"| data | accuracy | pairs | {' | '.join(columns)} |",
             "| --- | ---: | ---: |" + " ---: |" * len(columns)]
    for name, row in evals.items():
        accuracy = row.get("accuracy")
        shown = "-" if accuracy is None else f"{accuracy:.4f}"
        cells = [*table_cells(row.get("length_bias")), *calibration_cells(row.get("calibration"))]
        lines.append(f"| {name} | {shown} | {row.get('n', '-')} | {' | '.join(cells)} |")
        if row.get("rewardbench_overall") is not None:
            lines.append(f"| {name} (RewardBench overall) | {row['rewardbench_overall']:.4f} | {row.get('n', '-')} |"
                         + " - |" * len(columns))
    if any(row.get("length_bias") for row in evals.values()):
        lines += ["", "Length bias (lengths in characters): accuracy on the pairs whose chosen response is the longer "
                  "/ the shorter one (pairs in brackets), and the share of unequal-length pairs where the model "
                  "prefers the longer response."]
    if any(row.get("calibration") for row in evals.values()):
        lines += ["", "Calibration of P(chosen better), each pair counted as (P, 1) and (1 - P, 0): expected "
                  "calibration error over 10 equal-width bins, Brier score and log loss (0.693 = always 0.5)."]
        for name, row in evals.items():
            if row.get("temperature") is not None:
                lines.append(f"- {name}: probabilities calibrated with temperature {row['temperature']:.4g}")
    return lines


def _calibration_section(config) -> list[str]:
    block = getattr(config, "calibration", None)
    if not block:
        return []
    what = {"process": "P(step correct)", "outcome": "P(solution correct)"}.get(config.objective, "P(a better than b)")
    lines = ["## Calibration", "",
             f"- method: `{block.get('method', 'temperature')}` scaling (`tinyrm calibrate`): every {what} tinyrm "
             f"gives out is `sigmoid(logit(P) / T)` with T = {block['temperature']:.6g}; each probability keeps "
             "its side of 0.5",
             f"- fitted on: {', '.join(f'`{d}`' for d in block.get('data', [])) or 'not recorded'} "
             f"({block.get('n', '?')} {block.get('unit', 'examples')})"]
    before, after = block.get("log_loss_before"), block.get("log_loss_after")
    if before is not None and after is not None:
        lines.append(f"- log loss on that data: {before:.4f} before, {after:.4f} after")
    lines.append("- raw probabilities: `calibrated=False` in Python, `--no-calibration` on the CLI")
    return lines


def _usage_section(config, path: str) -> list[str]:
    # The class that loads this kind (tinyrm.load picks the same one from tinyrm.json).
    if config.objective in ("process", "outcome"):
        load = ["from tinyrm import ProcessRewardModel", "",
                f"rm = ProcessRewardModel.from_pretrained({json.dumps(path)})"]
    elif config.objective == "cloze":
        load = ["from tinyrm import RewardModel", "", f"rm = RewardModel.from_pretrained({json.dumps(path)})"]
    else:
        load = ["import tinyrm", "", f"rm = tinyrm.load({json.dumps(path)})"]
    lines = ["## Usage", "", "With tinyrm:", "", "```python", *load]
    if config.objective in ("process", "outcome"):
        lines += ['rm.score_steps("What is 2 + 3 * 4?", ["3 * 4 = 12.", "2 + 12 = 14."])  # P(step correct) each',
                  'rm.score_solution("What is 2 + 3 * 4?", ["3 * 4 = 12.", "2 + 12 = 14."])']
    else:
        lines.append('rm.compare("What is 2 + 2?", "4", "5")  # P(first response better)')
        if config.objective in ("classifier", "token"):
            lines.append('rm.score("What is 2 + 2?", "4")  # the scalar reward')
    lines.append("```")
    if _is_sequence_classification(config):
        lines += ["", "With plain transformers (no tinyrm needed):", "", "```python",
                  "from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline", "",
                  f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(path)})",
                  f"model = AutoModelForSequenceClassification.from_pretrained({json.dumps(path)})",
                  'inputs = tokenizer("What is 2 + 2?", "4", return_tensors="pt")  # text pair (prompt, response)',
                  "reward = model(**inputs).logits[0, 0].item()", "",
                  f'scorer = pipeline("text-classification", model={json.dumps(path)})',
                  'scorer({"text": "What is 2 + 2?", "text_pair": "4"})  # {"label": "reward", "score": reward}',
                  "```", "",
                  f"RewardBench: `python scripts/run_rm.py --model {path} --max_length {config.max_length}` "
                  "(the tokenizer's chat template gives the training format)."]
    return lines


def build_card(config, path: str = "PATH") -> str:
    """The card text for a model saved with ``config``; ``path`` is what the usage snippet loads."""
    objective = config.objective
    if objective == "route":
        base = "- base model: each specialist's (see their cards)"
    else:
        base = (f"- base model: `{base_model_name(config)}`"
                + (f" (tinyrm's embedded default, `{config.base_model}`)" if config.base_model == "default" else ""))
    lines = [_front_matter(config), "", f"# tinyrm reward model ({objective})", "", base,
             f"- objective: `{objective}`: {OBJECTIVE_TEXT.get(objective, 'see tinyrm')}"]
    if config.adapter:
        lines.append(f"- DoRA adapter in `{config.adapter}/` (the root weights are the base model without it)")
    if objective in ("classifier", "token"):
        saved = ("a standard `AutoModelForSequenceClassification` checkpoint (`num_labels=1`)"
                 if _is_sequence_classification(config) else
                 "the backbone as a masked LM plus tinyrm's head (`head.safetensors`): load it with tinyrm")
        lines.append(f"- saved as: {saved}")
    lines.append(f"- tinyrm version: {__version__}")
    lines += [""] + _input_section(config) + [""] + _training_section(config) + [""] + _eval_section(config)
    if getattr(config, "calibration", None):
        lines += [""] + _calibration_section(config)
    lines += [""] + _usage_section(config, path) + [""]
    return "\n".join(lines)


def write_card(directory: str | Path, config, path: str | None = None) -> Path:
    """Write ``README.md`` into a saved folder (what every ``save_pretrained`` calls)."""
    directory = Path(directory)
    card = directory / CARD_FILE
    card.write_text(build_card(config, path or str(directory)), encoding="utf-8")
    return card


def eval_summary(results: Mapping[str, Any], data: Sequence[str] | None = None) -> dict:
    """The part of a results JSON (``tinyrm eval`` / ``tinyrm rewardbench``) kept in ``extra["eval"]``."""
    summary: dict[str, Any] = {"accuracy": results.get("accuracy"), "n": results.get("n")}
    if results.get("overall") is not None:
        summary["rewardbench_overall"] = results["overall"]
    if results.get("length_bias"):
        summary["length_bias"] = results["length_bias"]
    if results.get("calibration"):  # the three figures; the bins stay in the results JSON
        summary["calibration"] = {k: results["calibration"].get(k) for k in ("ece", "brier", "log_loss")}
    if results.get("temperature") is not None:
        summary["temperature"] = results["temperature"]
    if data:
        summary["data"] = [str(d) for d in data]
    if results.get("domains"):
        summary["domains"] = {k: v.get("accuracy") for k, v in results["domains"].items()}
    return summary


def record_eval(directory: str | Path, results: Mapping[str, Any], name: str | None = None,
                data: Sequence[str] | None = None) -> dict:
    """Hook: keep a measured accuracy in the saved folder's ``tinyrm.json`` (``extra["eval"][name]``)
    and rewrite its card. ``name`` defaults to the data files' names (else ``eval``). Returns the entry."""
    directory = Path(directory)
    config = RewardConfig.load(directory)
    entry = add_eval(config, results, name, data)
    config.save(directory)
    write_card(directory, config)
    return entry


def add_eval(config, results: Mapping[str, Any], name: str | None = None, data: Sequence[str] | None = None) -> dict:
    """Put a measured accuracy into ``config.extra["eval"][name]`` (for a folder about to be saved)."""
    label = name or (", ".join(Path(d).name for d in data) if data else "eval")
    entry = eval_summary(results, data)
    config.extra.setdefault("eval", {})[label] = entry
    return entry
