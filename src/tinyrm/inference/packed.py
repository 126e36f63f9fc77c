"""The packed forward: a backbone run over a :class:`~tinyrm.inference.varlen.Packed` batch, no padding.

tinyrm's own thin forward over the backbone's modules (not a transformers attention backend): the
embeddings, each layer's projections, norms and MLP are the model's own modules, called on the flat
``[T, hidden]`` stream, and only the attention core is replaced by ``varlen.varlen_attention``.
Calling the modules (rather than reading their weights) keeps peft adapters, int8 linears and
dropout working as they are; nothing about the model or its saved folder changes.

Families: ModernBERT (global and sliding-window layers, rotary positions restarting per
sequence), BERT / RoBERTa / XLM-R (absolute positions; RoBERTa's offset by ``padding_idx + 1``) and
DistilBERT. Anything else (or a transformers layout these forwards do not recognise) is not
packable: :func:`packed_family` says None and the engine scores it padded.

``compiled=True`` (``InferenceConfig.compile``, scoring only) runs each layer's work before and after the
attention core through ``torch.compile`` (regional compilation): one graph per region and family, shared by
every layer (same structure, parameters as inputs) and dynamic in the token count after the first
recompile, so packed batches of any size reuse it. The attention core stays eager (its route is chosen in
Python per batch). What it fuses: the rotary embedding (computed in fp32: four kernels per tensor in eager,
:func:`_rotary`), the norms, the GLU/GELU and the residual adds.

Selection (``InferenceConfig.attention``): ``ATTENTIONS`` = auto | packed | padded; ``auto`` scores packed
where ``varlen_attn`` runs (CUDA, torch >= 2.10) and on the CPU, padded elsewhere, and trains packed on the
CPU and on CUDA where ``varlen_attn`` has a backward (docs/inference.md and docs/training.md have the CPU
measurements behind that).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import partial

import torch
from torch import nn

from ..backbone import encoder_of, head_kind, head_logits, unwrap_peft
from .varlen import Packed, flash_varlen_available, varlen_attention, varlen_backward_available

logger = logging.getLogger(__name__)

ATTENTIONS = ("auto", "packed", "padded")
BERT_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert"})
_warned: set[str] = set()


# ----------------------------------------------------------------------------- families
def packed_family(model: nn.Module) -> str | None:
    """``modernbert`` / ``bert`` / ``distilbert`` when the packed forward knows this backbone's layout
    (a masked LM or a sequence classifier, under peft or not), else None."""
    base = unwrap_peft(model)
    config = getattr(base, "config", None)
    try:
        encoder = encoder_of(base)
    except AttributeError:
        return None
    kind = getattr(config, "model_type", None)
    if kind == "modernbert":
        layers = getattr(encoder, "layers", None)
        ok = (hasattr(encoder, "rotary_emb") and layers and hasattr(layers[0], "attention_type")
              and hasattr(layers[0].attn, "Wqkv") and hasattr(config, "sliding_window"))
        return "modernbert" if ok else None
    if kind in BERT_TYPES:
        if getattr(config, "position_embedding_type", "absolute") != "absolute" or getattr(config, "is_decoder", False):
            return None  # relative positions / a decoder: not what this forward computes
        layers = getattr(getattr(encoder, "encoder", None), "layer", None)
        ok = layers and hasattr(layers[0].attention, "self") and hasattr(layers[0].attention.self, "query")
        return "bert" if ok else None
    if kind == "distilbert":
        layers = getattr(getattr(encoder, "transformer", None), "layer", None)
        return "distilbert" if layers and hasattr(layers[0].attention, "q_lin") else None
    return None


def packed_mlm_supported(mlm: nn.Module) -> bool:
    """Whether :func:`packed_mask_logits` runs on this masked LM (known layout and MLM head)."""
    return packed_family(mlm) is not None and head_kind(unwrap_peft(mlm)) != "fallback"


# ----------------------------------------------------------------------------- forwards
def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.view(x.shape[0], -1, head_dim)


def _dropout_p(module: nn.Module, p: float) -> float:
    return p if module.training else 0.0


def _rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's ``[T, D]`` rotary tables as :func:`_rotary` reads them: ``[T, 1, D]`` fp32, and ``sin`` with
    its first half negated (``rotate_half(x) * sin`` is then ``x`` with its halves swapped, times that)."""
    half = sin.shape[-1] // 2
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos.float().unsqueeze(1), signed.float().unsqueeze(1)


def _rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """transformers' ``apply_rotary_pos_emb`` for ``[T, H, D]``: ``x * cos + rotate_half(x) * sin`` in fp32,
    rounded once to ``x``'s dtype, over :func:`_rope_tables`. In four kernels per tensor instead of eight:
    a bf16 ``x`` is read as fp32 inside each kernel (type promotion) rather than copied to fp32 first, the
    negation of ``rotate_half`` is in ``signed_sin`` and its halves are swapped by one ``roll``; about half
    the memory traffic of the fp32 copies, the largest elementwise cost of an eager ModernBERT layer. The
    same bits in bf16; within an fp32 rounding (the fused multiply-add) in fp32."""
    def rotate(x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin).to(x.dtype)

    return rotate(q), rotate(k)


def _checkpointed(layer: nn.Module, step, hidden: torch.Tensor) -> torch.Tensor:
    """``step(hidden)``: one layer, through the layer's own gradient checkpointing where transformers has it
    on (``gradient_checkpointing_enable``), as the layer's HF forward would run; else plainly."""
    if getattr(layer, "gradient_checkpointing", False) and layer.training and torch.is_grad_enabled():
        return layer._gradient_checkpointing_func(step, hidden)
    return step(hidden)


def _modernbert_pre(layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor,
                    signed_sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    attn = layer.attn
    qkv = attn.Wqkv(layer.attn_norm(hidden)).view(hidden.shape[0], 3, -1, attn.head_dim)
    q, k, v = qkv.unbind(1)
    return (*_rotary(q, k, cos, signed_sin), v)


def _modernbert_post(layer: nn.Module, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    hidden = hidden + layer.attn.out_drop(layer.attn.Wo(out.reshape(hidden.shape[0], -1)))
    return hidden + layer.mlp(layer.mlp_norm(hidden))


def _modernbert(encoder: nn.Module, packed: Packed, compiled: bool = False) -> torch.Tensor:
    pre, post = _regions("modernbert", compiled)
    hidden = encoder.embeddings(input_ids=packed.input_ids[None])[0]
    positions = packed.position_ids[None]
    rope = {}
    for kind in {layer.attention_type for layer in encoder.layers}:
        cos, sin = encoder.rotary_emb(hidden[None], positions, kind)
        rope[kind] = _rope_tables(cos[0], sin[0])
    half_window = encoder.config.sliding_window  # local_attention // 2 on each side (|i - j| <= it)

    def block(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        attn = layer.attn
        q, k, v = pre(layer, hidden, *rope[layer.attention_type])
        local = layer.attention_type == "sliding_attention"
        out = varlen_attention(q, k, v, packed, scale=attn.head_dim ** -0.5, window=half_window if local else None,
                               dropout_p=_dropout_p(attn, attn.attention_dropout))
        return post(layer, hidden, out)

    for layer in encoder.layers:
        hidden = _checkpointed(layer, partial(block, layer), hidden)
    return encoder.final_norm(hidden)


def _position_offset(embeddings: nn.Module) -> int:
    """RoBERTa-style embeddings number positions from ``padding_idx + 1``; BERT's from 0."""
    padding = getattr(embeddings, "padding_idx", None)
    if hasattr(embeddings, "create_position_ids_from_input_ids") and padding is not None:
        return int(padding) + 1
    return 0


def _bert_pre(layer: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
    sa = layer.attention.self
    return tuple(_heads(proj(hidden), sa.attention_head_size) for proj in (sa.query, sa.key, sa.value))


def _bert_post(layer: nn.Module, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    attended = layer.attention.output(context.reshape(hidden.shape[0], -1), hidden)
    return layer.output(layer.intermediate(attended), attended)


def _bert(encoder: nn.Module, packed: Packed, compiled: bool = False) -> torch.Tensor:
    pre, post = _regions("bert", compiled)
    embeddings = encoder.embeddings
    positions = packed.position_ids + _position_offset(embeddings)
    kwargs = {"input_ids": packed.input_ids[None], "position_ids": positions[None]}
    if packed.token_type_ids is not None:
        kwargs["token_type_ids"] = packed.token_type_ids[None]
    hidden = embeddings(**kwargs)[0]

    def block(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        sa = layer.attention.self
        q, k, v = pre(layer, hidden)
        context = varlen_attention(q, k, v, packed, scale=sa.attention_head_size ** -0.5,
                                   dropout_p=_dropout_p(sa, sa.dropout.p))
        return post(layer, hidden, context)

    for layer in encoder.encoder.layer:
        hidden = _checkpointed(layer, partial(block, layer), hidden)
    return hidden


def _distilbert_pre(layer: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
    sa = layer.attention
    return tuple(_heads(proj(hidden), sa.attention_head_size) for proj in (sa.q_lin, sa.k_lin, sa.v_lin))


def _distilbert_post(layer: nn.Module, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    attended = layer.sa_layer_norm(layer.attention.out_lin(context.reshape(hidden.shape[0], -1)) + hidden)
    return layer.output_layer_norm(layer.ffn(attended) + attended)


def _distilbert(encoder: nn.Module, packed: Packed, compiled: bool = False) -> torch.Tensor:
    pre, post = _regions("distilbert", compiled)
    hidden = encoder.embeddings(input_ids=packed.input_ids[None], position_ids=packed.position_ids[None])[0]

    def block(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        sa = layer.attention
        q, k, v = pre(layer, hidden)
        context = varlen_attention(q, k, v, packed, scale=sa.attention_head_size ** -0.5,
                                   dropout_p=_dropout_p(sa, sa.dropout.p))
        return post(layer, hidden, context)

    for layer in encoder.transformer.layer:
        hidden = _checkpointed(layer, partial(block, layer), hidden)
    return hidden


_REGIONS = {"modernbert": (_modernbert_pre, _modernbert_post), "bert": (_bert_pre, _bert_post),
            "distilbert": (_distilbert_pre, _distilbert_post)}
_compiled_regions: dict[str, tuple] = {}


def _regions(family: str, compiled: bool) -> tuple:
    """The family's (pre-attention, post-attention) layer functions; with ``compiled``, their
    ``torch.compile`` wrappers, made once per process (dynamo caches graphs per wrapper, keyed by guards on
    the inputs' shapes and dtypes, so every layer and every model of one shape shares them)."""
    if not compiled:
        return _REGIONS[family]
    if family not in _compiled_regions:
        _compiled_regions[family] = tuple(torch.compile(fn) for fn in _REGIONS[family])
    return _compiled_regions[family]


_FORWARDS = {"modernbert": _modernbert, "bert": _bert, "distilbert": _distilbert}


def packed_hidden(model: nn.Module, packed: Packed, compiled: bool = False) -> torch.Tensor:
    """The encoder's last hidden states ``[T, hidden]`` of a packed batch (``model``: a masked LM or a
    sequence classifier of a known family, peft-wrapped or not). Differentiable; ``compiled``: the layers'
    regions through ``torch.compile`` (module docstring)."""
    family = packed_family(model)
    if family is None:
        raise TypeError(f"no packed forward for {type(unwrap_peft(model)).__name__}; score it padded")
    return _FORWARDS[family](encoder_of(unwrap_peft(model)), packed, compiled)


def packed_mask_logits(mlm: nn.Module, packed: Packed, token_ids: torch.Tensor | None = None,
                       positions: torch.Tensor | None = None, compiled: bool = False) -> torch.Tensor:
    """``backbone.mask_logits`` for a packed batch: the MLM head's logits ``[M, len(token_ids)]`` (or
    ``[M, V]``) at ``positions`` of the flat stream (default: each sequence's mask, ``packed.mask_index``;
    ``packed.starts`` reads [CLS])."""
    positions = packed.mask_index if positions is None else positions
    if positions is None:
        raise ValueError("packed_mask_logits: the batch has no mask positions; pass positions")
    base = unwrap_peft(mlm)
    return head_logits(base, packed_hidden(base, packed, compiled)[positions], token_ids)


# ----------------------------------------------------------------------------- selection
def check_attention(attention: str) -> str:
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    return attention


def use_packed(attention: str, device: torch.device | str, supported: bool, name: str = "model",
               training: bool = False) -> bool:
    """Whether to score (``training``: train) packed: ``packed`` wherever the backbone is supported (else
    padded, with a warning once), ``padded`` never, ``auto`` where it was measured to win: scoring on CUDA
    where ``varlen_attn`` runs and on the CPU (its exact SDPA route: faster at mixed lengths, even at one
    length; docs/inference.md), training on the CPU too (faster on ModernBERT at mixed lengths, a tie on
    MiniLM; docs/training.md) and on CUDA where ``varlen_attn`` also has a backward
    (:func:`~tinyrm.inference.varlen.varlen_backward_available`)."""
    check_attention(attention)
    if attention == "padded":
        return False
    if attention == "packed" and not supported:
        if name not in _warned:
            _warned.add(name)
            logger.warning("attention='packed': no packed forward for %s; %s it padded", name,
                           "training" if training else "scoring")
        return False
    if attention == "packed":
        return supported
    on_cpu = torch.device(device).type == "cpu"
    if training:
        return supported and (on_cpu or (flash_varlen_available(device) and varlen_backward_available()))
    return supported and (on_cpu or flash_varlen_available(device))


def apply_attention(model, attention: str | None):
    """Set the attention of a loaded model (``--attention``): the engine's config of cloze and process
    models, each specialist of a routed model, a baseline's ``attention``. None leaves it as it is."""
    if attention is None:
        return model
    check_attention(attention)
    targets = [model, *getattr(model, "specialists", {}).values()]
    applied = False
    for target in targets:
        config = getattr(getattr(target, "engine", None), "config", None)
        if config is not None and hasattr(config, "attention"):
            config.attention = attention
            applied = True
        elif hasattr(target, "attention"):
            target.attention = attention
            applied = True
    if not applied:
        raise ValueError(f"attention {attention!r} does not apply to {type(model).__name__}")
    return model


def enable_flash_attention(model: nn.Module, device: torch.device) -> None:
    """On GPU with the ``flash-attn`` package installed, the padded forward uses it (transformers then runs
    attention unpadded); ``TINYRM_NO_FLASH_ATTN`` keeps SDPA. The packed forward needs no package."""
    if device.type != "cuda" or importlib.util.find_spec("flash_attn") is None:
        return
    if os.environ.get("TINYRM_NO_FLASH_ATTN"):
        return
    setter = getattr(unwrap_peft(model), "set_attn_implementation", None)
    if callable(setter):
        try:
            setter("flash_attention_2")
        except (ImportError, ValueError) as error:  # unsupported architecture or build
            logger.info("flash attention not enabled: %s", error)
