"""The classifier baseline as transformers' own one-label ``AutoModelForSequenceClassification``.

Used wherever the architecture's head pools as asked (``cls`` on any architecture, ``mean`` on
ModernBERT): trained as such and saved as a standard checkpoint that ``transformers.pipeline`` and
RewardBench's ``run_rm.py`` load without tinyrm.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...backbone import check_model_source, encoder_of, model_load_errors, unwrap_peft
from ...config import RewardConfig
from ...inference.packed import packed_family, packed_hidden
from ...inference.varlen import Packed
from ...model_card import SEQUENCE_CLASSIFICATION, write_card
from .encoding import ResponseEncoder
from .token import HEAD_FILE

logger = logging.getLogger(__name__)

REWARD_LABEL = "reward"
# Inputs of a saved sequence-classification tokenizer: no token type ids, as RewardBench feeds them.
NATIVE_INPUT_NAMES = ["input_ids", "attention_mask"]

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


def _packed_head(model: nn.Module) -> Callable[[torch.Tensor, Packed], torch.Tensor] | None:
    """transformers' sequence-classification head of ``model`` applied to packed hidden states ``[T, H]``
    (what its own forward does after the encoder), or None where this layout is not known."""
    base = unwrap_peft(model)
    family = packed_family(base)
    if family is None:
        return None
    if family == "modernbert" and all(hasattr(base, n) for n in ("head", "drop", "classifier")):
        mean = base.config.classifier_pooling == "mean"

        def modernbert(hidden: torch.Tensor, packed: Packed) -> torch.Tensor:
            if mean:  # the average over each sequence's tokens, as ModernBertForSequenceClassification
                pooled = packed.segment_sum(hidden) / torch.tensor(packed.lengths, device=hidden.device)[:, None]
            else:
                pooled = hidden[packed.starts]
            return base.classifier(base.drop(base.head(pooled)))
        return modernbert
    pooler = getattr(encoder_of(base), "pooler", None)
    if family == "bert" and pooler is not None and hasattr(base, "dropout"):  # BERT: pooler (dense + tanh on [CLS])
        return lambda hidden, packed: base.classifier(base.dropout(pooler(hidden[packed.starts][:, None])))
    if family == "bert" and hasattr(getattr(base, "classifier", None), "out_proj"):  # RoBERTa's head reads [:, 0]
        return lambda hidden, packed: base.classifier(hidden[packed.starts][:, None])
    if family == "distilbert" and hasattr(base, "pre_classifier"):
        return lambda hidden, packed: base.classifier(base.dropout(F.relu(base.pre_classifier(hidden[packed.starts]))))
    return None


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

    @property
    def packable(self) -> bool:
        """Whether :meth:`packed_rewards` runs on this architecture (``inference.packed``)."""
        return _packed_head(self.backbone) is not None

    def packed_rewards(self, packed: Packed) -> torch.Tensor:
        """:meth:`rewards` of a packed batch (no padding; ``inference.packed``), one per sequence."""
        head = _packed_head(self.backbone)
        if head is None:
            raise TypeError(f"no packed forward for {type(unwrap_peft(self.backbone)).__name__}")
        return head(packed_hidden(self.backbone, packed), packed).squeeze(-1).float()

    def forward(self, input_ids, attention_mask=None, response_mask=None, token_type_ids=None, labels=None,
                position_ids=None, cu_seqlens=None, max_seqlen=None, seq_lengths=None) -> dict:
        """Rows in (chosen, rejected) pairs; with ``cu_seqlens`` a packed batch (``PairCollator(packed=True)``)."""
        if cu_seqlens is not None:
            rewards = self.packed_rewards(Packed.from_inputs(input_ids, position_ids, cu_seqlens, max_seqlen,
                                                             seq_lengths, token_type_ids=token_type_ids))
        else:
            rewards = self.rewards(input_ids, attention_mask, response_mask, token_type_ids)
        pairs = rewards.view(-1, 2)
        out = {"logits": pairs}
        if labels is not None:
            out["loss"] = -F.logsigmoid(pairs[:, 0] - pairs[:, 1]).mean()
        return out


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
