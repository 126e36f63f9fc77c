"""DoRA's forward with fewer passes over the activations: the same function as peft's, in two fused ops.

peft computes a DoRA layer's output as ``result + (s - 1) * (result - bias) + s * scaling * B(A(x))`` with
``s = magnitude / ||W + scaling * BA||`` (per output feature, the norm detached as the DoRA paper says). Under
bf16 autocast ``s`` is float32, so each of those five element-wise ops runs over a float32 ``[tokens, out]``
tensor (and twice as many in the backward): on the CPU, DoRA with 11 of 22 layers frozen took 26.7 s per
training step against 16.9 s for the same freezing without adapters (docs/training.md). The same function,
rearranged::

    s * result + (1 - s) * bias  +  A(x) @ (s * scaling * B)^T

is one ``addcmul`` and one ``addmm`` over the activations, in the activations' dtype; the per-feature factors
go into ``B`` (a ``[out, r]`` tensor) and the bias (``[out]``), so gradients reach the magnitude, ``A`` and
``B`` as before. Weights, saved adapters and merging are peft's own: only ``forward`` is replaced, through
peft's LoRA-variant hook (``layer.lora_variant[adapter]``), and peft's own forward still runs where this one
does not apply (dropout active in training, ``fan_in_fan_out`` layers, a peft without the hook).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

try:  # peft >= 0.16: LoRA variants (DoRA is one)
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.lora.variants import DoraLinearVariant
    from peft.utils.integrations import dequantize_module_weight
except ImportError:  # pragma: no cover - an older peft keeps its own forward
    DoraLinearVariant = None  # type: ignore[assignment,misc]


if DoraLinearVariant is not None:

    class FusedDoraLinearVariant(DoraLinearVariant):
        """peft's DoRA for ``nn.Linear`` layers, its forward in two fused ops (module docstring)."""

        @staticmethod
        def forward(module: LoraLinear, active_adapter: str, x: torch.Tensor, result: torch.Tensor,
                    **kwargs: Any) -> torch.Tensor:
            dora = module.lora_magnitude_vector[active_adapter]
            dropout = module.lora_dropout[active_adapter]
            if (module.training and not isinstance(dropout, nn.Identity)) or dora.fan_in_fan_out:
                return DoraLinearVariant.forward(module, active_adapter, x, result, **kwargs)
            lora_A, lora_B = module.lora_A[active_adapter], module.lora_B[active_adapter]
            scaling = module.scaling[active_adapter]
            base = module.get_base_layer()
            # The norm exactly as peft computes it (its caching in eval mode included).
            lora_weight = dora.get_lora_weight(lora_A=lora_A, lora_B=lora_B, adapter_name=active_adapter)
            weight = dequantize_module_weight(base).to(x.dtype)
            norm = dora.get_weight_norm(weight=weight, lora_weight=lora_weight.detach().to(x.dtype),
                                        scaling=scaling, adapter_name=active_adapter).detach()
            scale = dora.weight / norm  # [out], float32: the magnitude's gradient flows through it
            # Everything over the activations in the base layer's output dtype (bf16 under autocast, or a bf16
            # backbone's under float32 adapters), where peft ends too (``result.to(torch_result_dtype)``).
            dtype = result.dtype
            low = lora_A(x).to(dtype)  # [..., r]
            scaled = result * scale.to(dtype) if base.bias is None else torch.addcmul(
                (base.bias * (1 - scale)).to(dtype), result, scale.to(dtype))
            up = (lora_B.weight * (scale * scaling).unsqueeze(1)).to(dtype)  # [out, r]
            out = torch.addmm(scaled.reshape(-1, scaled.shape[-1]), low.reshape(-1, low.shape[-1]), up.t())
            return out.view(scaled.shape)


def fuse_dora(model: nn.Module) -> int:
    """Give every DoRA ``nn.Linear`` adapter in ``model`` the fused forward; returns how many it changed.

    Idempotent; a model without DoRA (or a peft without LoRA variants) is left as it is."""
    if DoraLinearVariant is None:
        return 0
    changed = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        for adapter, variant in module.lora_variant.items():
            if type(variant) is DoraLinearVariant:
                module.lora_variant[adapter] = FusedDoraLinearVariant()
                changed += 1
    return changed
