"""Shared by the packed-vs-padded tests (``test_packed``, ``test_packed_train``): mixed-length pairs and tiny
baseline scorers.

A 3-layer random ModernBERT (local window ``window``, global every 2nd layer) or BERT on the given tokenizer,
wrapped as the sequence-classifier scorer or tinyrm's own head on a masked LM; the seed is fixed (4).
"""

from __future__ import annotations

import torch

from tinyrm.tools.synthetic import generate


def randomize_adapters(model: torch.nn.Module, seed: int = 3) -> torch.nn.Module:
    """DoRA/LoRA adapters that change the output (peft starts ``lora_B`` at zero): every ``lora_`` parameter
    drawn from N(0, 0.2), seeded."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.2)
    return model


def mixed_items(n: int, seed: int = 5) -> list[tuple[str, str, str]]:
    """Pairs from a few tokens to ~150: many times a 16-token local window, and very mixed."""
    out = []
    for k, pair in enumerate(generate(n, seed=seed)):
        pad = " and more detail" * ((k * 3) % 11)
        out.append((pair.prompt + pad, pair.chosen + pad[: 16 * (k % 4)], pair.rejected))
    return out


def baseline_scorer(tokenizer_path: str, kind: str, objective: str, pooling: str, *, window: int,
                    freeze_layers: int | None = None):
    """Return ``(scorer, tokenizer)``.

    ``kind`` "modernbert" is always a ``ModernBertForSequenceClassification``; BERT is a
    ``BertForSequenceClassification`` for the classifier objective with cls pooling, otherwise
    (mean pooling, the token objective) a ``BaselineScorer`` on ``BertForMaskedLM``. With ``freeze_layers``
    the backbone goes through ``prepare_for_training(.., BackboneConfig(freeze_layers=...))`` and the token
    scorer's unused parameters are frozen (``freeze_unused``).
    """
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        ModernBertConfig,
        ModernBertForSequenceClassification,
    )

    from tinyrm.backbone import BackboneConfig, prepare_for_training
    from tinyrm.pairwise.baselines.classifier import SequenceClassifierScorer
    from tinyrm.pairwise.baselines.token import BaselineScorer, freeze_unused

    def prepare(model: torch.nn.Module) -> torch.nn.Module:
        if freeze_layers is None:
            return model
        return prepare_for_training(model, BackboneConfig(freeze_layers=freeze_layers))

    torch.manual_seed(4)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    common = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=2, pad_token_id=tokenizer.pad_token_id, num_labels=1)
    if kind == "modernbert":
        model = ModernBertForSequenceClassification(ModernBertConfig(
            **common, local_attention=window, global_attn_every_n_layers=2, classifier_pooling=pooling,
            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
            cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id))
        scorer = SequenceClassifierScorer(prepare(model), pooling)
    elif objective == "classifier" and pooling == "cls":
        scorer = SequenceClassifierScorer(prepare(BertForSequenceClassification(BertConfig(**common))), pooling)
    else:  # tinyrm's own head on a masked LM (mean pooling on BERT, the token objective)
        scorer = BaselineScorer(prepare(BertForMaskedLM(BertConfig(**common))), objective, pooling)
        if freeze_layers is not None:
            freeze_unused(scorer)
    return scorer, tokenizer
