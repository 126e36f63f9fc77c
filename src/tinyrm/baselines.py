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

Saved folders (all with ``tinyrm.json``, ``objective`` set, so ``RewardModel.from_pretrained``
dispatches here, and a ``README.md`` model card):

- ``classifier`` where the architecture's own sequence-classification head does the pooling asked
  for (``cls`` on any architecture: BERT's pooler dense + tanh over ``[CLS]`` then a linear layer,
  RoBERTa's dense + tanh + projection, ...; ``cls`` or ``mean`` on ModernBERT through its
  ``classifier_pooling``): the model *is* an ``AutoModelForSequenceClassification`` with one label
  (the reward), trained as such and saved as a standard checkpoint (DoRA merged into the weights) that
  ``AutoModelForSequenceClassification.from_pretrained``, ``pipeline("text-classification")`` and
  RewardBench's ``run_rm.py`` load without tinyrm and score exactly as tinyrm does. Its tokenizer is
  saved without segment (token type) ids, so the text pair ``(prompt, response)`` and the single
  string ``prompt + "[SEP]" + response`` (what its chat template renders) are the same input.
- ``classifier`` with ``mean`` pooling on the BERT family (no transformers head averages tokens) and
  ``token``: the backbone as a plain masked LM (plus ``adapter/`` under DoRA) and tinyrm's head in
  ``head.safetensors``; these need tinyrm to load.
"""

from __future__ import annotations

import copy
import inspect
import json
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
    check_model_source,
    encoder_of,
    load_mlm,
    model_load_errors,
    prepare_for_training,
    resolve_model_path,
    unwrap_peft,
)
from .data import PreferencePair
from .model import ADAPTER_DIR, RewardConfig, default_device
from .model_card import SEQUENCE_CLASSIFICATION, write_card
from .prompt import allocate_budget, keep_end, keep_ends
from .train import TrainConfig, TrainResult, finish, fit, load_training_pairs, make_result, report_parameters

logger = logging.getLogger(__name__)

OBJECTIVES = ("classifier", "token")
POOLINGS = ("cls", "mean")
HEAD_FILE = "head.safetensors"
LEGACY_FORMAT = "tinyrm-head"  # backbone as a masked LM + head.safetensors
REWARD_LABEL = "reward"
# Inputs of a saved sequence-classification tokenizer: no token type ids, as RewardBench feeds them.
NATIVE_INPUT_NAMES = ["input_ids", "attention_mask"]
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


# ----------------------------------------------------------------------------------------- native classifier
# Architectures whose sequence-classification head can average the tokens (``config.classifier_pooling``).
MEAN_POOLING_TYPES = frozenset({"modernbert"})


def native_classifier_supported(model: str | None, pooling: str) -> bool:
    """Whether transformers' own sequence-classification head of ``model`` pools as ``pooling`` asks:
    ``cls`` on any architecture with such a head, ``mean`` on ModernBERT only."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    path = check_model_source(model)
    with model_load_errors(model):
        model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return False
    return pooling == "cls" or model_type in MEAN_POOLING_TYPES


def load_sequence_classifier(name_or_path: str | None, pooling: str | None = None):
    """Tokenizer and a one-label ``AutoModelForSequenceClassification`` built on a backbone checkpoint.

    The label is the reward (``problem_type`` regression, so pipelines return the raw logit); weights
    the checkpoint lacks (the classification head, BERT's pooler when absent) are initialised and
    their names kept for ``TrainConfig.head_lr_scale``. ``pooling`` sets ``classifier_pooling`` where
    the architecture has it (ModernBERT).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = check_model_source(name_or_path)
    with model_load_errors(name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(path)
        options: dict = {"num_labels": 1, "problem_type": "regression", "id2label": {0: REWARD_LABEL},
                         "label2id": {REWARD_LABEL: 0}}
        if pooling is not None and hasattr(AutoConfig.from_pretrained(path), "classifier_pooling"):
            options["classifier_pooling"] = pooling
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a fresh classification head is expected, not news
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True, **options)
        finally:
            hf_logging.set_verbosity(verbosity)
    model.tinyrm_initialised_keys = sorted(info.get("missing_keys", []))
    return tokenizer, model


def classifier_head_modules(model: nn.Module) -> list[str]:
    """Names of the modules on top of the encoder (classification head, BERT's pooler): trained in
    full under DoRA (peft ``modules_to_save``)."""
    names = [name for name, child in model.named_children()
             if name != model.base_model_prefix and next(child.parameters(), None) is not None]
    if getattr(encoder_of(model), "pooler", None) is not None:
        names.append("pooler")
    return names


def pair_separator(tokenizer) -> str:
    """The text of the special tokens between the two segments of a pair (``[SEP]``, ``</s></s>``)."""
    middle = ResponseEncoder(tokenizer, max_length=1 << 16).middle
    return "".join(tokenizer.convert_ids_to_tokens(middle))


def chat_template(separator: str) -> str:
    """A chat template that renders ``[..., user, assistant]`` as ``prompt + separator + response``
    (earlier turns joined by newlines), the training input as one string: what RewardBench feeds."""
    sep = json.dumps(separator)
    return ("{%- for message in messages -%}"
            "{%- if loop.last and not loop.first and message['role'] == 'assistant' -%}{{ " + sep + " }}"
            '{%- elif not loop.first -%}{{ "\n" }}{%- endif -%}'
            "{{ message['content'] }}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ " + sep + " }}{%- endif -%}")


def prepare_tokenizer(tokenizer) -> str | None:
    """Make a tokenizer give a sequence classifier its training input from either text layout.

    Token type ids are dropped (RewardBench's runner never passes them, and a ModernBERT forward does
    not take them), so the text pair ``(prompt, response)`` and the one string ``prompt + SEP +
    response`` encode alike; the chat template writes that string. Returns the separator text, or None
    (and no chat template) where this tokenizer does not encode the two alike.
    """
    tokenizer.model_input_names = list(NATIVE_INPUT_NAMES)
    tokenizer.init_kwargs["model_input_names"] = list(NATIVE_INPUT_NAMES)  # saved in tokenizer_config.json
    separator = pair_separator(tokenizer)
    probe = ("Is 2 + 2 = 4?", "Yes, it is.")
    if tokenizer(*probe)["input_ids"] != tokenizer(probe[0] + separator + probe[1])["input_ids"]:
        logger.warning("the tokenizer does not encode %r as its pair separator; no chat template saved", separator)
        return None
    tokenizer.chat_template = chat_template(separator)
    return separator


class SequenceClassifierScorer(nn.Module):
    """A one-label ``AutoModelForSequenceClassification`` (possibly under DoRA) whose logit is the reward.

    ``forward`` is ``BaselineScorer``'s classifier: rows in (chosen, rejected) pairs, Bradley-Terry loss
    ``-log sigmoid(r(chosen) - r(rejected))``, ``logits = [[r(chosen), r(rejected)], ...]``.
    """

    objective = "classifier"

    def __init__(self, model: nn.Module, pooling: str = "cls") -> None:
        super().__init__()
        self.backbone = model
        self.pooling = pooling
        self._types = "token_type_ids" in inspect.signature(unwrap_peft(model).forward).parameters

    def rewards(self, input_ids, attention_mask, response_mask=None, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self._types:
            kwargs["token_type_ids"] = token_type_ids
        return self.backbone(**kwargs).logits.squeeze(-1).float()

    def forward(self, input_ids, attention_mask, response_mask=None, token_type_ids=None, labels=None) -> dict:
        pairs = self.rewards(input_ids, attention_mask, response_mask, token_type_ids).view(-1, 2)
        out = {"logits": pairs}
        if labels is not None:
            out["loss"] = -F.logsigmoid(pairs[:, 0] - pairs[:, 1]).mean()
        return out


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


def save_baseline(directory: str | Path, scorer: BaselineScorer | SequenceClassifierScorer, tokenizer,
                  config: RewardConfig) -> None:
    """Save a classifier / token model (the format follows the scorer, see the module docstring) and its card."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(scorer, SequenceClassifierScorer):
        save_sequence_classifier(directory, scorer, tokenizer, config)
        return
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
    config.extra["format"] = LEGACY_FORMAT
    config.save(directory)
    write_card(directory, config)


def save_sequence_classifier(directory: Path, scorer: SequenceClassifierScorer, tokenizer,
                             config: RewardConfig) -> None:
    """A standard ``AutoModelForSequenceClassification`` folder (DoRA merged into the weights, so
    plain transformers scores the trained model) + tokenizer + ``tinyrm.json`` + card."""
    model = scorer.backbone
    if unwrap_peft(model) is not model:
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(directory)
    stale = directory / HEAD_FILE  # from an older save into the same folder: it would be read instead
    if stale.is_file():
        stale.unlink()
    tokenizer.save_pretrained(directory)
    config.adapter = None
    config.extra["format"] = SEQUENCE_CLASSIFICATION
    config.save(directory)
    write_card(directory, config)


def load_saved_classifier(path: str | Path):
    """Tokenizer and model of a saved sequence-classification folder, loaded as plain transformers does."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with model_load_errors(str(path)):
        return AutoTokenizer.from_pretrained(str(path)), AutoModelForSequenceClassification.from_pretrained(str(path))


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
    if config.extra.get("format") == SEQUENCE_CLASSIFICATION:
        tokenizer, model = load_saved_classifier(path)
        scorer = SequenceClassifierScorer(model, config.extra.get("pooling", "cls"))
    else:  # tinyrm's head format (every folder saved before the sequence-classification one)
        head_path = path / HEAD_FILE
        if not head_path.is_file():
            raise FileNotFoundError(f"{head_path}: missing (not a saved {config.objective} model)")
        tokenizer, mlm = load_mlm(str(path))
        if config.adapter:
            from peft import PeftModel

            mlm = PeftModel.from_pretrained(mlm, str(path / config.adapter))
        scorer = BaselineScorer(mlm, config.objective, config.extra.get("pooling", "cls"))
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


def build_scorer(config: TrainConfig) -> tuple[BaselineScorer | SequenceClassifierScorer, object, RewardConfig]:
    """Backbone (freezing / DoRA as for cloze) + a fresh head, and the config to save with it.

    The classifier objective is a one-label ``AutoModelForSequenceClassification`` wherever the
    architecture's own head pools as asked (``native_classifier_supported``); else (BERT-family
    ``mean``) and for ``token``, the masked LM + tinyrm's head.
    """
    if config.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {config.objective!r}")
    if config.objective == "classifier" and config.pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {config.pooling!r}")
    backbone_config = BackboneConfig(
        model=config.model, dora_rank=config.dora_rank, dora_alpha=config.dora_alpha,
        dora_targets=config.dora_targets, freeze_layers=config.freeze_layers,
    )
    extra: dict = {"pooling": config.pooling}
    if config.objective == "classifier" and native_classifier_supported(config.model, config.pooling):
        tokenizer, model = load_sequence_classifier(config.model, config.pooling)
        separator = prepare_tokenizer(tokenizer)
        if separator is not None:
            extra["separator"] = separator
        backbone = prepare_for_training(model, backbone_config, modules_to_save=classifier_head_modules(model))
        scorer: BaselineScorer | SequenceClassifierScorer = SequenceClassifierScorer(backbone, config.pooling)
        extra["format"] = SEQUENCE_CLASSIFICATION
    else:
        if config.objective == "classifier":
            logger.warning("%s: transformers has no sequence-classification head with %s pooling for this "
                           "architecture; the model is saved in tinyrm's head format (tinyrm loads it, plain "
                           "transformers does not). --pooling cls gives a standard checkpoint.",
                           config.model, config.pooling)
        tokenizer, mlm = load_mlm(config.model)
        scorer = BaselineScorer(prepare_for_training(mlm, backbone_config), config.objective, config.pooling)
        freeze_unused(scorer)
        extra["format"] = LEGACY_FORMAT
    extra["train"] = {k: v for k, v in asdict(config).items() if k != "data"}
    extra["data"] = [str(d) for d in config.data]
    reward_config = RewardConfig(
        objective=config.objective, max_length=config.max_length, base_model=config.model, both_orders=False,
        extra=extra,
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

    def save(module: BaselineScorer | SequenceClassifierScorer) -> None:
        reward_config.extra["result"] = asdict(result)
        save_baseline(config.output, module, tokenizer, reward_config)

    finish(config, outcome, result, save)
    return result
