"""Packed training: the attention a run trains with (``TrainConfig.attention``, ``tinyrm train --attention``).

* ``packed``: each micro-batch is one token stream. The collator packs it (``inference.varlen.pack``: the
  flat input ids, ``cu_seqlens``, positions restarting at 0 for each sequence, each sequence's read
  position in the flat stream, the labels), and the scorer runs the packed forward
  (``inference.packed``): no padding in any embedding, linear layer or MLP. Attention goes through
  torch's ``varlen_attn`` and its backward (CUDA, bf16 autocast), or the exact SDPA route elsewhere
  (CPU, fp32, attention dropout, ModernBERT's local layers where the installed ``varlen_attn`` has no
  ``window_size``). Loss and gradients equal the padded step's (``tests/test_packed_train.py``).
* ``padded``: right-padded rows through the transformers forward (the step as it always was).
* ``auto``: packed on the CPU (measured faster than padded at mixed lengths on ModernBERT, a tie on MiniLM:
  docs/training.md) and on CUDA where ``varlen_attn`` exists and has a backward, padded elsewhere.

Full fine-tuning, DoRA (adapters stay injected: the packed forward calls the model's own modules), frozen
lower layers, the backbone's gradient checkpointing (run per layer as transformers would), bf16 autocast
and DDP (the packed batch is plain tensors plus host ints, moved by the Trainer) all train packed. A model
with no packed forward (another architecture) trains padded, with a line saying so. Every objective has a
packed step: cloze, classifier, token, and process / outcome (several read masks per sequence; session 16).
The choice is a runtime one: it is left out of the options saved in ``tinyrm.json``.
"""

from __future__ import annotations

import torch

from ..inference.packed import use_packed
from ..inference.varlen import flash_varlen_available, varlen_backward_available
from .arguments import is_main_process
from .config import TrainConfig


def describe(packed: bool, attention: str, device: torch.device, supported: bool) -> str:
    """The one line a run prints about its attention (``supported``: the model has a packed forward)."""
    if packed:
        if flash_varlen_available(device) and varlen_backward_available():
            return "attention: packed (no padding; varlen_attn where the layer allows it, exact SDPA elsewhere)"
        return (f"attention: packed (no padding in the linear layers; attention by the exact SDPA route: "
                f"no varlen_attn{' backward' if flash_varlen_available(device) else ''} on {device.type})")
    if attention == "auto" and supported:
        return (f"attention: padded (auto: packed on the CPU, and on CUDA where torch's varlen_attn has a backward; "
                f"--attention packed trains packed on {device.type} too)")
    why = "--attention padded" if attention == "padded" else "no packed forward for this model"
    return f"attention: padded ({why})"


def packed_training(config: TrainConfig, device: torch.device | str, supported: bool, name: str = "model") -> bool:
    """Whether this run trains packed (``config.attention`` resolved for ``device`` and a model whose packed
    forward exists, ``supported``); prints one line saying which, on the main process."""
    device = torch.device(device)
    packed = use_packed(config.attention, device, supported, name, training=True)
    if is_main_process():
        print(describe(packed, config.attention, device, supported))
    return packed

