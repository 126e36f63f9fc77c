"""``RewardConfig``: what every saved tinyrm model carries in ``tinyrm.json``, whatever its kind.

The ``objective`` field names the kind (``cloze``, ``classifier``, ``token``, ``process``, ``outcome``,
``route``); :mod:`tinyrm.auto` maps it to the class that loads the folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._version import __version__
from .prompt import DEFAULT_PREFIX, get_template, prefix_for_domain
from .truncation import DEFAULT_DIFF_CONTEXT, DEFAULT_TRUNCATION, LEGACY_TRUNCATION

CONFIG_FILE = "tinyrm.json"
ADAPTER_DIR = "adapter"
READ_POSITIONS = ("mask", "cls")


@dataclass
class RewardConfig:
    """Everything needed to score with a saved model; stored as ``tinyrm.json``."""

    objective: str = "cloze"
    template: dict = field(default_factory=lambda: get_template("flan").to_dict())
    prefix: str = DEFAULT_PREFIX
    answer_tokens: list[str] = field(default_factory=lambda: ["0", "1"])
    max_length: int = 512
    both_orders: bool = True
    # Where the MLM head reads the answer: at the [MASK] slot (the paper) or at [CLS] (position 0),
    # which a sentence-embedding backbone with a fresh head reads far better (docs/training.md).
    read: str = "mask"
    adapter: str | None = None
    base_model: str | None = None
    extra: dict = field(default_factory=dict)
    # Per-domain instructions (the all-at-once recipe): a row whose domain is a key is encoded with
    # that prefix, every other row (no domain, or an unmapped one) with ``prefix``. None = off.
    domain_prefixes: dict[str, str] | None = None
    # How an over-long pair is cut (ends | diff, tinyrm.truncation), the same at scoring as in training.
    truncation: str = DEFAULT_TRUNCATION
    diff_context: int = DEFAULT_DIFF_CONTEXT
    # ``tinyrm calibrate``: {"method": "temperature", "temperature": T, "n": ..., "data": [...], ...}; every
    # probability the model gives out is then sigmoid(logit(P) / T) (tinyrm.temperature). None = raw.
    calibration: dict | None = None
    # Keys of a tinyrm.json written by a newer tinyrm that this one does not know: written back as they
    # were, so calibrating or recording an eval here does not strip them.
    other_fields: dict = field(default_factory=dict, repr=False, compare=False)

    def prefix_for(self, domain: str | None) -> str:
        """The instruction used for a row of ``domain`` (None: no domain)."""
        return prefix_for_domain(domain, self.domain_prefixes, self.prefix)

    def prefixes_for(self, domains: Sequence[str | None] | None) -> list[str] | None:
        """One instruction per row, or None (every row the default ``prefix``) when no row needs its own."""
        if domains is None or not self.domain_prefixes:
            return None
        return [self.prefix_for(domain) for domain in domains]

    @classmethod
    def load(cls, directory: str | Path) -> RewardConfig:
        data = json.loads((Path(directory) / CONFIG_FILE).read_text())
        data.pop("tinyrm_version", None)
        # Saved before the option existed: trained with the original rule, whatever the default is now.
        data.setdefault("truncation", LEGACY_TRUNCATION)
        data.pop("other_fields", None)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known, other_fields={k: v for k, v in data.items() if k not in cls.__dataclass_fields__})

    def save(self, directory: str | Path) -> None:
        fields = asdict(self)
        payload = {**fields.pop("other_fields"), **fields, "tinyrm_version": __version__}
        if payload["calibration"] is None:  # an uncalibrated folder's tinyrm.json stays as it always was
            del payload["calibration"]
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n")


def saved_objective(path: str | Path) -> str:
    """The objective of a saved folder. Without ``tinyrm.json``: ``classifier`` for a one-label sequence
    classifier (a reward model as transformers or TRL save it), else ``cloze`` (a plain masked LM)."""
    if (Path(path) / CONFIG_FILE).is_file():
        return RewardConfig.load(path).objective
    return "classifier" if reward_classifier_folder(path) else "cloze"


def reward_classifier_folder(path: str | Path) -> bool:
    """A checkpoint folder whose ``config.json`` is a ``...ForSequenceClassification`` with one label."""
    try:
        data = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    architectures = data.get("architectures") or [] if isinstance(data, dict) else []
    labels = data.get("id2label") or {} if isinstance(data, dict) else {}
    return any(str(a).endswith("ForSequenceClassification") for a in architectures) and len(labels) == 1


def check_read(read: str) -> str:
    if read not in READ_POSITIONS:
        raise ValueError(f"read must be one of {READ_POSITIONS}, got {read!r}")
    return read


# objective -> the class whose ``from_pretrained(path, device=None, **overrides)`` loads it. Filled by
# tinyrm.auto, the one module that imports every kind: a kind's module can then hand another kind's
# folder on (``RewardModel.from_pretrained`` of a process checkpoint) without importing that kind.
MODEL_CLASSES: dict[str, type] = {}


def model_class(objective: str) -> type:
    if objective not in MODEL_CLASSES:
        raise ValueError(f"unknown objective {objective!r}; choose from {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[objective]
