"""A token budget per forward pass sized to the device: :func:`default_batch_tokens`.

A fixed 16,384 tokens per pass suits a CPU (where a larger pass gains nothing: the matmuls already run at
the peak) but leaves a GPU's matmul units idle between small passes (docs/speed.md, the GPU path). This
sizes the budget from the memory a CUDA device has free for this process and keeps 16,384 everywhere else.
``InferenceConfig.max_batch_tokens = "auto"`` (the default) calls it on every scoring call;
``benchmarks/gpu_path.py`` sweeps fixed values against it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbone import unwrap_peft

CPU_BATCH_TOKENS = 16384  # the budget off CUDA (InferenceConfig.max_batch_tokens' fixed default before "auto")
MAX_BATCH_TOKENS = 262144  # past this a pass is long enough to hide launches; more only costs memory
_ROUND = 4096


def activation_bytes_per_token(model: nn.Module | None, max_length: int = 512, dtype_bytes: int = 2) -> int:
    """An upper estimate of the memory one token of a scoring pass holds at once (inference: one layer's
    activations live at a time): the residual stream, its norm, q/k/v and the attention output (6 x hidden),
    the MLP's input projection and its activation (3 x intermediate, ModernBERT's GLU doubles the input
    projection), plus fp32 attention scores over ``max_length`` keys per head, for the routes that
    materialise them (padded SDPA with a mask; FlashAttention does not, so this over-counts there)."""
    config = getattr(unwrap_peft(model), "config", None) if model is not None else None
    hidden = getattr(config, "hidden_size", 1024)
    intermediate = getattr(config, "intermediate_size", 4 * hidden)
    heads = getattr(config, "num_attention_heads", 16)
    return dtype_bytes * (6 * hidden + 3 * intermediate) + 4 * heads * max_length


def default_batch_tokens(device: torch.device | str, model: nn.Module | None = None, *, max_length: int = 512,
                         fraction: float = 0.25, cap: int = MAX_BATCH_TOKENS, free_bytes: int | None = None) -> int:
    """Tokens per forward pass for scoring on ``device``.

    Off CUDA: ``CPU_BATCH_TOKENS``. On CUDA: the tokens whose activations (:func:`activation_bytes_per_token`)
    fill ``fraction`` of the memory free to this process (``torch.cuda.mem_get_info``'s free memory plus what
    this process's caching allocator holds unused, so the budget does not shrink as the cache grows; or
    ``free_bytes``), rounded down to a multiple of 4,096, at least ``CPU_BATCH_TOKENS`` and at most ``cap``.
    A quarter, not all: the caching allocator fragments, and the budget counts padded rows on the padded path.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BATCH_TOKENS
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
        free_bytes += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    tokens = int(free_bytes * fraction) // activation_bytes_per_token(model, max_length)
    tokens = tokens // _ROUND * _ROUND
    return max(CPU_BATCH_TOKENS, min(cap, tokens))
