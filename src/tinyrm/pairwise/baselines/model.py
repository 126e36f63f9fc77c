"""``BaselineRewardModel``: the classifier and token objectives behind the ``RewardModel`` scoring interface."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from ...backbone import check_max_length, default_device, resolve_model_path
from ...config import CONFIG_FILE, RewardConfig, reward_classifier_folder
from ...inference.packed import check_attention, use_packed
from ...inference.tokens import check_pairs
from ...inference.varlen import pack
from ...model_card import SEQUENCE_CLASSIFICATION
from ...temperature import calibrate_output
from ..rank import rank_candidates
from .classifier import SequenceClassifierScorer, load_saved_classifier, save_sequence_classifier
from .encoding import ResponseEncoder, length_batches, pad_responses
from .token import OBJECTIVES, BaselineScorer, load_head_format, save_head_format

logger = logging.getLogger(__name__)

PairInput = tuple[str, str, str]


class BaselineRewardModel:
    """Scoring interface of ``RewardModel`` (``compare``, ``compare_batch``, ``rank``, ``save_pretrained``)
    for the classifier and token objectives. ``score(prompt, response)`` gives the scalar reward."""

    def __init__(self, scorer: BaselineScorer | SequenceClassifierScorer, tokenizer, config: RewardConfig,
                 device: str | None = None) -> None:
        self.model = scorer
        self.tokenizer = tokenizer
        self.config = config
        self.device = torch.device(device) if device else default_device()
        check_max_length(scorer, config.max_length, config.base_model or "model")
        self.model.to(self.device).eval()
        self.encoder = ResponseEncoder(tokenizer, config.max_length)
        self.name = config.base_model or "unknown"
        self._attention = "auto"
        self.calibrated = True  # False: raw probabilities even with a saved temperature (tinyrm.temperature)

    @property
    def attention(self) -> str:
        """auto | packed | padded, as ``InferenceConfig.attention`` of cloze models (``inference.packed``)."""
        return self._attention

    @attention.setter
    def attention(self, value: str) -> None:
        self._attention = check_attention(value)

    def uses_packed(self) -> bool:
        return use_packed(self._attention, self.device, self.model.packable, self.name)

    @property
    def objective(self) -> str:
        return self.config.objective

    @torch.inference_mode()
    def score_batch(self, items: Iterable[tuple[str, str]], batch_size: int | None = 32,
                    max_batch_tokens: int | None = None) -> list[float]:
        """Reward of each (prompt, response); batches are formed by length, capped at ``batch_size``
        rows and (if given) ``max_batch_tokens`` padded tokens."""
        items = list(items)
        check_pairs(items, ("prompt", "response"))
        encodings = [self.encoder.encode(p, r) for p, r in items]
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].input_ids))
        scores = [0.0] * len(encodings)
        pad_id = self.tokenizer.pad_token_id or 0
        packed = self.uses_packed()
        lengths = [len(e.input_ids) for e in encodings]
        for idx in length_batches(order, lengths, batch_size, max_batch_tokens, packed=packed):
            if packed:  # no padding: the batch as one token stream
                rewards = self.model.packed_rewards(pack([encodings[i] for i in idx], self.device))
            else:
                batch = {k: v.to(self.device) for k, v in pad_responses([encodings[i] for i in idx], pad_id).items()}
                rewards = self.model.rewards(**batch)
            for i, value in zip(idx, rewards.tolist()):
                scores[i] = value
        return scores

    def score(self, prompt: str, response: str) -> float:
        return self.score_batch([(prompt, response)])[0]

    def compare_batch(self, items: Iterable[PairInput], batch_size: int | None = 32, both_orders: bool | None = None,
                      max_batch_tokens: int | None = None, calibrated: bool | None = None) -> list[float]:
        """P(a better than b) = sigmoid(r(a) - r(b)); ``both_orders`` is accepted for interface
        compatibility and changes nothing: each response is scored on its own. With a saved temperature T
        (``tinyrm calibrate``): sigmoid(logit(P) / T), unless ``calibrated=False``."""
        items = list(items)
        check_pairs(items)
        unique: dict[tuple[str, str], int] = {}
        for prompt, a, b in items:
            unique.setdefault((prompt, a), len(unique))
            unique.setdefault((prompt, b), len(unique))
        scores = self.score_batch(list(unique), batch_size=batch_size, max_batch_tokens=max_batch_tokens)
        diffs = torch.tensor([scores[unique[(p, a)]] - scores[unique[(p, b)]] for p, a, b in items],
                             dtype=torch.float64)
        return calibrate_output(self, torch.sigmoid(diffs).tolist(), calibrated)

    def compare(self, prompt: str, a: str, b: str, both_orders: bool | None = None,
                calibrated: bool | None = None) -> float:
        return self.compare_batch([(prompt, a, b)], calibrated=calibrated)[0]

    def rank(self, prompt: str, candidates: Sequence[str], method: str = "knockout",
             batch_size: int = 32) -> list[tuple[int, float]]:
        """``[(index, reward), ...]`` best first: a scalar reward needs no tournament (``method`` unused)."""
        return rank_candidates(self, prompt, candidates, method=method, batch_size=batch_size).pairs()

    def best_of_n(self, prompt: str, candidates: Sequence[str], **kw) -> int:
        return self.rank(prompt, candidates, **kw)[0][0]

    def save_pretrained(self, directory: str | Path) -> None:
        save_baseline(directory, self.model, self.tokenizer, self.config)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, **overrides) -> BaselineRewardModel:
        """Load a saved classifier / token model; of the ``RewardModel`` options only ``max_length`` applies."""
        path = Path(resolve_model_path(str(path)))
        if (path / CONFIG_FILE).is_file():
            config = RewardConfig.load(path)
        elif reward_classifier_folder(path):  # saved by transformers or TRL: a one-label sequence classifier
            config = RewardConfig(objective="classifier", base_model=str(path),
                                  extra={"format": SEQUENCE_CLASSIFICATION})
        else:
            raise ValueError(f"{path}: no {CONFIG_FILE} and not a one-label sequence classifier: not a baseline model")
        if config.objective not in OBJECTIVES:
            raise ValueError(f"{path}: objective {config.objective!r} is not a baseline objective {OBJECTIVES}")
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "max_length":
                config.max_length = int(value)
            elif key in ("template", "prefix", "answer_tokens", "both_orders"):
                logger.warning("%s: %r does not apply to the %s objective; ignored", path, key, config.objective)
            else:
                raise TypeError(f"unknown option {key!r} for RewardModel.from_pretrained")
        if config.extra.get("format") == SEQUENCE_CLASSIFICATION:
            tokenizer, model = load_saved_classifier(path)
            scorer = SequenceClassifierScorer(model, config.extra.get("pooling", "cls"))
        else:  # tinyrm's head format (every folder saved before the sequence-classification one)
            tokenizer, scorer = load_head_format(path, config)
        rm = cls(scorer, tokenizer, config, device=device)
        rm.name = str(path)
        return rm


def save_baseline(directory: str | Path, scorer: BaselineScorer | SequenceClassifierScorer, tokenizer,
                  config: RewardConfig) -> None:
    """Save a classifier / token model and its card; the format follows the scorer (see
    ``tinyrm.pairwise.baselines``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(scorer, SequenceClassifierScorer):
        save_sequence_classifier(directory, scorer, tokenizer, config)
    else:
        save_head_format(directory, scorer, tokenizer, config)
