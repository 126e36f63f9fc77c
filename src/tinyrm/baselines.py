"""The conventional ways of turning an encoder into a reward model, trained by the same Trainer.

Both objectives score each response on its own, as TRL's RewardTrainer and official RewardBench do:
the encoder reads ``[CLS] prompt [SEP] response [SEP]`` (prompt cut from its start, response in the
middle when too long) and ``P(a better than b) = sigmoid(r(a) - r(b))``, so the order of the two
responses never matters.

- ``classifier``: a scalar head on a pooled state (``cls``: the first token; ``mean``: the mean over
  all tokens), trained with the Bradley-Terry loss ``-log sigmoid(r(chosen) - r(rejected))``.
- ``token``: token-level classification. A one-logit head on every response token is trained with
  binary cross-entropy towards "this token belongs to the chosen response" (1 for every token of the
  chosen response, 0 for every token of the rejected one; each response's tokens averaged, then the
  responses). A response's score is the **mean over its tokens of that per-token logit** (the
  log-odds of "chosen"); prompt and special tokens are not scored.

Saved folders hold the backbone as a plain masked LM (plus ``adapter/`` under DoRA), the head in
``head.safetensors`` and ``tinyrm.json`` with ``objective`` set, so ``RewardModel.from_pretrained``
dispatches here.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .backbone import (
    BackboneConfig,
    base_state_dict,
    encoder_of,
    load_mlm,
    prepare_for_training,
    resolve_model_path,
    unwrap_peft,
)
from .data import PreferencePair
from .model import ADAPTER_DIR, RewardConfig, default_device
from .prompt import allocate_budget, keep_end, keep_ends
from .train import TrainConfig, TrainResult, finish, fit, load_training_pairs, make_result, report_parameters

logger = logging.getLogger(__name__)

OBJECTIVES = ("classifier", "token")
POOLINGS = ("cls", "mean")
HEAD_FILE = "head.safetensors"
PairInput = tuple[str, str, str]


# ----------------------------------------------------------------------------------------- encoding
@dataclass
class ResponseEncoded:
    input_ids: list[int]
    token_type_ids: list[int] | None
    response_mask: list[int]  # 1 on the response's own tokens
    truncated: bool = False


class ResponseEncoder:
    """(prompt, response) -> ``[CLS] prompt [SEP] response [SEP]`` ids within ``max_length``.

    The prompt keeps its end (the latest turns), the response its head and tail (the final answer);
    the prompt keeps at least a quarter of the budget, as in the cloze encoder.
    """

    def __init__(self, tokenizer, max_length: int = 512, elision_marker: str = " ... ") -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        sentinel = tokenizer.mask_token or tokenizer.unk_token
        sentinel_id = tokenizer.convert_tokens_to_ids(sentinel)
        # Learn the pair layout of this tokenizer's special tokens from a probe.
        probe = tokenizer(sentinel, sentinel)
        ids = list(probe["input_ids"])
        where = [i for i, t in enumerate(ids) if t == sentinel_id]
        if len(where) != 2:
            raise ValueError("could not infer the tokenizer's special-token layout")
        self.start, self.middle, self.end = ids[: where[0]], ids[where[0] + 1 : where[1]], ids[where[1] + 1 :]
        types = probe.get("token_type_ids")
        self.types = None if types is None else (list(types), where)
        self.marker = self._ids(elision_marker)
        fixed = len(self.start) + len(self.middle) + len(self.end)
        if max_length <= fixed + 1:
            raise ValueError(f"max_length={max_length} leaves no room for text ({fixed} special tokens)")
        self.avail = max_length - fixed

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def encode(self, prompt: str, response: str) -> ResponseEncoded:
        p_ids, r_ids = self._ids(prompt), self._ids(response)
        p_len, r_len, _ = allocate_budget(self.avail, len(p_ids), len(r_ids), 0)
        truncated = p_len < len(p_ids) or r_len < len(r_ids)
        p_ids, r_ids = keep_end(p_ids, p_len, self.marker), keep_ends(r_ids, r_len, self.marker)
        input_ids = self.start + p_ids + self.middle + r_ids + self.end
        first = len(self.start) + len(p_ids) + len(self.middle)
        response_mask = [0] * first + [1] * len(r_ids) + [0] * len(self.end)
        token_type_ids = None
        if self.types is not None:
            types, where = self.types
            token_type_ids = (types[: where[0]] + [types[where[0]]] * len(p_ids) + types[where[0] + 1 : where[1]]
                              + [types[where[1]]] * len(r_ids) + types[where[1] + 1 :])
        return ResponseEncoded(input_ids, token_type_ids, response_mask, truncated)


def pad_responses(encodings: Sequence[ResponseEncoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encodings into input_ids / attention_mask / response_mask (/ token_type_ids)."""
    width = max(len(e.input_ids) for e in encodings)
    n = len(encodings)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    response = torch.zeros((n, width), dtype=torch.long)
    has_types = encodings[0].token_type_ids is not None
    types = torch.zeros((n, width), dtype=torch.long) if has_types else None
    for row, enc in enumerate(encodings):
        k = len(enc.input_ids)
        input_ids[row, :k] = torch.tensor(enc.input_ids)
        attention[row, :k] = 1
        response[row, :k] = torch.tensor(enc.response_mask)
        if types is not None:
            types[row, :k] = torch.tensor(enc.token_type_ids)
    batch = {"input_ids": input_ids, "attention_mask": attention, "response_mask": response}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


# ----------------------------------------------------------------------------------------- module
def hidden_size_of(mlm: nn.Module) -> int:
    config = unwrap_peft(mlm).config
    size = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
    if not size:
        raise TypeError(f"cannot find the hidden size of {type(mlm).__name__}")
    return int(size)


class BaselineScorer(nn.Module):
    """Encoder + one-logit head; rows come in (chosen, rejected) pairs when training.

    ``forward`` returns ``{"loss", "logits"}`` with ``logits = [[r(chosen), r(rejected)], ...]`` and
    labels 0, so the shared RewardTrainer's argmax accuracy counts the pairs ranked right.
    """

    def __init__(self, backbone: nn.Module, objective: str, pooling: str = "cls") -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.backbone = backbone
        self.objective = objective
        self.pooling = pooling
        self.head = nn.Linear(hidden_size_of(backbone), 1)
        encoder = encoder_of(unwrap_peft(backbone))
        self._types = "token_type_ids" in inspect.signature(encoder.forward).parameters

    def hidden_states(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        encoder = encoder_of(unwrap_peft(self.backbone))  # adapters stay injected under peft
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._types:
            kwargs["token_type_ids"] = token_type_ids
        return encoder(**kwargs).last_hidden_state

    def rewards(self, input_ids, attention_mask, response_mask, token_type_ids=None) -> torch.Tensor:
        """One score per row: the pooled head output, or the mean token logit over the response."""
        hidden = self.hidden_states(input_ids, attention_mask, token_type_ids)
        if self.objective == "classifier":
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            return self.head(pooled).squeeze(-1).float()
        token_logits = self.head(hidden).squeeze(-1).float()
        mask = response_mask.float()
        return (token_logits * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, input_ids, attention_mask, response_mask, token_type_ids=None, labels=None) -> dict:
        out: dict[str, torch.Tensor] = {}
        if self.objective == "classifier":
            scores = self.rewards(input_ids, attention_mask, response_mask, token_type_ids)
            pairs = scores.view(-1, 2)
            if labels is not None:  # Bradley-Terry
                out["loss"] = -F.logsigmoid(pairs[:, 0] - pairs[:, 1]).mean()
        else:
            hidden = self.hidden_states(input_ids, attention_mask, token_type_ids)
            token_logits = self.head(hidden).squeeze(-1).float()
            mask = response_mask.float()
            counts = mask.sum(1).clamp(min=1.0)
            pairs = ((token_logits * mask).sum(1) / counts).view(-1, 2)
            if labels is not None:
                # Rows alternate chosen / rejected: every response token is labelled 1 / 0.
                targets = torch.zeros_like(token_logits)
                targets[0::2] = 1.0
                per_token = F.binary_cross_entropy_with_logits(token_logits, targets, reduction="none")
                out["loss"] = ((per_token * mask).sum(1) / counts).mean()
        out["logits"] = pairs
        return out


def freeze_unused(scorer: BaselineScorer) -> None:
    """The MLM head is not used here: keep it out of the optimiser (tied embeddings stay trainable)."""
    used = {id(p) for p in encoder_of(unwrap_peft(scorer.backbone)).parameters()}
    used |= {id(p) for p in scorer.head.parameters()}
    for param in scorer.backbone.parameters():
        if id(param) not in used:
            param.requires_grad_(False)


# ----------------------------------------------------------------------------------------- the model
def _batches(order: list[int], lengths: list[int], batch_size: int | None,
             max_batch_tokens: int | None) -> Iterable[list[int]]:
    """Consecutive slices of ``order`` (ascending length) within the row and padded-token caps."""
    rows = batch_size or (None if max_batch_tokens else 32)
    batch: list[int] = []
    for i in order:
        full = rows is not None and len(batch) >= rows
        over = max_batch_tokens is not None and batch and (len(batch) + 1) * lengths[i] > max_batch_tokens
        if full or over:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


class BaselineRewardModel:
    """Scoring interface of ``RewardModel`` (``compare``, ``compare_batch``, ``rank``, ``save_pretrained``)
    for the classifier and token objectives. ``score(prompt, response)`` gives the scalar reward."""

    def __init__(self, scorer: BaselineScorer, tokenizer, config: RewardConfig, device: str | None = None) -> None:
        self.model = scorer
        self.tokenizer = tokenizer
        self.config = config
        self.device = torch.device(device) if device else default_device()
        self.model.to(self.device).eval()
        self.encoder = ResponseEncoder(tokenizer, config.max_length)
        self.name = config.base_model or "unknown"

    @property
    def objective(self) -> str:
        return self.config.objective

    @torch.inference_mode()
    def score_batch(self, items: Iterable[tuple[str, str]], batch_size: int | None = 32,
                    max_batch_tokens: int | None = None) -> list[float]:
        """Reward of each (prompt, response); batches are formed by length, capped at ``batch_size``
        rows and (if given) ``max_batch_tokens`` padded tokens."""
        encodings = [self.encoder.encode(p, r) for p, r in items]
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].input_ids))
        scores = [0.0] * len(encodings)
        pad_id = self.tokenizer.pad_token_id or 0
        for idx in _batches(order, [len(e.input_ids) for e in encodings], batch_size, max_batch_tokens):
            batch = {k: v.to(self.device) for k, v in pad_responses([encodings[i] for i in idx], pad_id).items()}
            for i, value in zip(idx, self.model.rewards(**batch).tolist()):
                scores[i] = value
        return scores

    def score(self, prompt: str, response: str) -> float:
        return self.score_batch([(prompt, response)])[0]

    def compare_batch(self, items: Iterable[PairInput], batch_size: int | None = 32, both_orders: bool | None = None,
                      max_batch_tokens: int | None = None) -> list[float]:
        """P(a better than b) = sigmoid(r(a) - r(b)); ``both_orders`` is accepted for interface
        compatibility and changes nothing: each response is scored on its own."""
        items = list(items)
        unique: dict[tuple[str, str], int] = {}
        for prompt, a, b in items:
            unique.setdefault((prompt, a), len(unique))
            unique.setdefault((prompt, b), len(unique))
        scores = self.score_batch(list(unique), batch_size=batch_size, max_batch_tokens=max_batch_tokens)
        diffs = torch.tensor([scores[unique[(p, a)]] - scores[unique[(p, b)]] for p, a, b in items],
                             dtype=torch.float64)
        return torch.sigmoid(diffs).tolist()

    def compare(self, prompt: str, a: str, b: str, both_orders: bool | None = None) -> float:
        return self.compare_batch([(prompt, a, b)])[0]

    def rank(self, prompt: str, candidates: Sequence[str], method: str = "knockout",
             batch_size: int = 32) -> list[tuple[int, float]]:
        """``[(index, reward), ...]`` best first: a scalar reward needs no tournament (``method`` unused)."""
        scores = self.score_batch([(prompt, c) for c in candidates], batch_size=batch_size)
        return sorted(enumerate(scores), key=lambda item: -item[1])

    def best_of_n(self, prompt: str, candidates: Sequence[str], **kw) -> int:
        return self.rank(prompt, candidates, **kw)[0][0]

    def save_pretrained(self, directory: str | Path) -> None:
        save_baseline(directory, self.model, self.tokenizer, self.config)


def save_baseline(directory: str | Path, scorer: BaselineScorer, tokenizer, config: RewardConfig) -> None:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backbone = unwrap_peft(scorer.backbone)
    if backbone is not scorer.backbone:  # DoRA: base weights as a plain MLM, adapter in a subfolder
        backbone.save_pretrained(directory, state_dict=base_state_dict(scorer.backbone))
        scorer.backbone.save_pretrained(directory / ADAPTER_DIR)
        config.adapter = ADAPTER_DIR
    else:
        backbone.save_pretrained(directory)
        config.adapter = None
    head = {k: v.detach().cpu().contiguous() for k, v in scorer.head.state_dict().items()}
    save_file(head, str(directory / HEAD_FILE), metadata={"format": "pt"})
    tokenizer.save_pretrained(directory)
    config.save(directory)


def load(path: str | Path, device: str | None = None, **overrides) -> BaselineRewardModel:
    """Load a saved classifier / token model (what ``RewardModel.from_pretrained`` calls)."""
    from safetensors.torch import load_file

    path = Path(resolve_model_path(str(path)))
    config = RewardConfig.load(path)
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
    tokenizer, mlm = load_mlm(str(path))
    if config.adapter:
        from peft import PeftModel

        mlm = PeftModel.from_pretrained(mlm, str(path / config.adapter))
    scorer = BaselineScorer(mlm, config.objective, config.extra.get("pooling", "cls"))
    head_path = path / HEAD_FILE
    if not head_path.is_file():
        raise FileNotFoundError(f"{head_path}: missing (not a saved {config.objective} model)")
    scorer.head.load_state_dict(load_file(str(head_path)))
    rm = BaselineRewardModel(scorer, tokenizer, config, device=device)
    rm.name = str(path)
    return rm


# ----------------------------------------------------------------------------------------- training
class PairDataset(Dataset):
    """One example per preference pair: the chosen and the rejected sequence, label 0."""

    def __init__(self, pairs: Sequence[PreferencePair], encoder: ResponseEncoder) -> None:
        self.examples = [(encoder.encode(p.prompt, p.chosen), encoder.encode(p.prompt, p.rejected)) for p in pairs]
        self.truncated = sum(int(c.truncated) + int(r.truncated) for c, r in self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        chosen, rejected = self.examples[index]
        # "input_ids" only serves the Trainer's group-by-length sampler (total length of the pair).
        return {"input_ids": chosen.input_ids + rejected.input_ids, "chosen": chosen, "rejected": rejected,
                "labels": 0}


@dataclass
class PairCollator:
    pad_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        rows = [enc for f in features for enc in (f["chosen"], f["rejected"])]  # chosen, rejected, ...
        batch = pad_responses(rows, self.pad_id)
        batch["labels"] = torch.zeros(len(features), dtype=torch.long)
        return batch


def build_scorer(config: TrainConfig) -> tuple[BaselineScorer, object, RewardConfig]:
    """Backbone (freezing / DoRA as for cloze) + a fresh head, and the config to save with it."""
    if config.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {config.objective!r}")
    tokenizer, mlm = load_mlm(config.model)
    backbone = prepare_for_training(mlm, BackboneConfig(
        model=config.model, dora_rank=config.dora_rank, dora_alpha=config.dora_alpha,
        dora_targets=config.dora_targets, freeze_layers=config.freeze_layers,
    ))
    scorer = BaselineScorer(backbone, config.objective, config.pooling)
    freeze_unused(scorer)
    train_options = {k: v for k, v in asdict(config).items() if k != "data"}
    reward_config = RewardConfig(
        objective=config.objective, max_length=config.max_length, base_model=config.model, both_orders=False,
        extra={"pooling": config.pooling, "train": train_options},
    )
    return scorer, tokenizer, reward_config


def train(config: TrainConfig) -> TrainResult:
    """Train a classifier / token baseline with the shared Trainer (``fit``) and save it."""
    from transformers import set_seed

    if config.loss != "pair" or config.order != "both":
        logger.warning("--loss/--order apply to the cloze objective only; ignored for %s", config.objective)
    set_seed(config.seed)  # before the head is created
    report = load_training_pairs(config)
    scorer, tokenizer, reward_config = build_scorer(config)
    parameters = report_parameters(scorer)
    dataset = PairDataset(report.pairs, ResponseEncoder(tokenizer, config.max_length))
    outcome = fit(scorer, dataset, PairCollator(tokenizer.pad_token_id or 0), config)
    result = make_result(config, outcome, 1, parameters, truncated=dataset.truncated, skipped=report.skipped)

    def save(module: BaselineScorer) -> None:
        reward_config.extra["result"] = asdict(result)
        save_baseline(config.output, module, tokenizer, reward_config)

    finish(config, outcome, result, save)
    return result
