"""tinyrm's own head on the encoder: the token-level objective, and the classifier where transformers has
no head that pools as asked (``mean`` on the BERT family). Saved as the masked LM + ``head.safetensors``."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...backbone import base_state_dict, encoder_of, load_saved_backbone, unwrap_peft
from ...config import ADAPTER_DIR, RewardConfig
from ...inference.packed import packed_family, packed_hidden
from ...inference.varlen import Packed
from ...model_card import write_card

OBJECTIVES = ("classifier", "token")
POOLINGS = ("cls", "mean")
HEAD_FILE = "head.safetensors"
LEGACY_FORMAT = "tinyrm-head"  # backbone as a masked LM + head.safetensors


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
        # A new head: TrainConfig.head_lr_scale finds it by this mark (trainer.fresh_parameter_names), as it
        # finds a classifier's missing head weights.
        self.head.tinyrm_initialised_keys = ["head.weight", "head.bias"]
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

    @property
    def packable(self) -> bool:
        """Whether :meth:`packed_rewards` runs on this backbone (``inference.packed``)."""
        return packed_family(self.backbone) is not None

    def packed_rewards(self, packed: Packed) -> torch.Tensor:
        """:meth:`rewards` of a packed batch (no padding; ``inference.packed``), one per sequence."""
        hidden = packed_hidden(self.backbone, packed)
        lengths = torch.tensor(packed.lengths, device=hidden.device)
        if self.objective == "classifier":
            pooled = hidden[packed.starts] if self.pooling == "cls" else packed.segment_sum(hidden) / lengths[:, None]
            return self.head(pooled).squeeze(-1).float()
        mask = packed.response_mask.float()
        token_logits = self.head(hidden).squeeze(-1).float()
        return packed.segment_sum(token_logits * mask) / packed.segment_sum(mask).clamp(min=1.0)

    def forward(self, input_ids, attention_mask=None, response_mask=None, token_type_ids=None, labels=None,
                position_ids=None, cu_seqlens=None, max_seqlen=None, seq_lengths=None) -> dict:
        """Rows in (chosen, rejected) pairs; with ``cu_seqlens`` a packed batch (``PairCollator(packed=True)``)."""
        if cu_seqlens is not None:
            packed = Packed.from_inputs(input_ids, position_ids, cu_seqlens, max_seqlen, seq_lengths,
                                        token_type_ids=token_type_ids, response_mask=response_mask)
            return self._packed_forward(packed, labels)
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

    def _packed_forward(self, packed: Packed, labels) -> dict:
        """:meth:`forward` of a packed batch: the same scores and losses, summed per sequence, no padding."""
        out: dict[str, torch.Tensor] = {}
        if self.objective == "classifier":
            pairs = self.packed_rewards(packed).view(-1, 2)
            if labels is not None:
                out["loss"] = -F.logsigmoid(pairs[:, 0] - pairs[:, 1]).mean()
        else:
            token_logits = self.head(packed_hidden(self.backbone, packed)).squeeze(-1).float()
            mask = packed.response_mask.float()
            counts = packed.segment_sum(mask).clamp(min=1.0)
            pairs = (packed.segment_sum(token_logits * mask) / counts).view(-1, 2)
            if labels is not None:  # sequences alternate chosen / rejected: tokens of even ones are labelled 1
                targets = (packed.sequence_ids() % 2 == 0).float()
                per_token = F.binary_cross_entropy_with_logits(token_logits, targets, reduction="none")
                out["loss"] = (packed.segment_sum(per_token * mask) / counts).mean()
        out["logits"] = pairs
        return out


def freeze_unused(scorer: BaselineScorer) -> None:
    """The MLM head is not used here: keep it out of the optimiser (tied embeddings stay trainable)."""
    used = {id(p) for p in encoder_of(unwrap_peft(scorer.backbone)).parameters()}
    used |= {id(p) for p in scorer.head.parameters()}
    for param in scorer.backbone.parameters():
        if id(param) not in used:
            param.requires_grad_(False)


def save_head_format(directory: Path, scorer: BaselineScorer, tokenizer, config: RewardConfig) -> None:
    """The backbone as a plain masked LM (``adapter/`` under DoRA), the head, tokenizer, ``tinyrm.json`` and card."""
    from safetensors.torch import save_file

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


def load_head_format(path: Path, config: RewardConfig) -> tuple[object, BaselineScorer]:
    """Tokenizer and scorer of a folder saved by :func:`save_head_format`."""
    from safetensors.torch import load_file

    head_path = path / HEAD_FILE
    if not head_path.is_file():
        raise FileNotFoundError(f"{head_path}: missing (not a saved {config.objective} model)")
    tokenizer, mlm = load_saved_backbone(path, config.adapter)
    scorer = BaselineScorer(mlm, config.objective, config.extra.get("pooling", "cls"))
    scorer.head.load_state_dict(load_file(str(head_path)))
    return tokenizer, scorer
