"""int8 scoring on CPU: dynamic quantisation of the encoder's linear layers.

``precision="int8"`` (``InferenceConfig.precision``, ``RewardModel.from_pretrained(precision=...)``,
``tinyrm eval/compare --precision int8``) makes the inference engine score with a private copy of the
model whose encoder ``nn.Linear`` layers compute in int8: int8 weights (one scale per output
channel), activations quantised on every call from their observed range, int32 accumulation, fp32
everywhere else (embeddings, layer norms, attention softmax, the MLM head). Two schemes
(``InferenceConfig.int8_scheme``):

* ``"dynamic"`` (default): ``torch.ao.quantization.quantize_dynamic`` modules (fbgemm / oneDNN
  kernels). One activation scale per tensor, and 7-bit activations on x86 (``reduce_range``), so a
  few outlier features or tokens coarsen every other value: on the embedded MiniLM the last hidden
  state moves by ~30% (relative L2; [CLS] ~16%) against ~1% for bf16.
* ``"per-token"``: :class:`PerTokenInt8Linear`, ``torch._int_mm`` with one 8-bit activation scale
  per token row; about half that error on MiniLM (weight rounding alone is ~4%).

Which is faster, and whether either keeps decisions (>= 99% agreement with fp32 is the target),
is measured by ``benchmarks/int8.py`` on a trained model.

What stays in fp32, and why:

* the MLM-head transform (``dense`` + norm): it runs on one row per sequence (the mask row), so
  quantising it saves nothing measurable and only adds error;
* the vocabulary projection: scoring reads the two answer-token rows of its weight
  (``backbone.mask_logits``), and it is tied to the input embeddings;
* the ``recheck_margin`` guard of the engine still applies: pairs whose int8 P lies within the
  margin of 0.5 are re-scored in fp32 with the live model (no second copy is kept for that).

Quantised kernels exist for CPU only (fbgemm / oneDNN / qnnpack), so int8 on a CUDA device is an
error, raised before any weights are loaded when ``from_pretrained`` is given the precision.
Speed against fp32 and bf16 is measured by ``benchmarks/int8.py``; agreement with fp32 is
tested in ``tests/test_int8.py``.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

INT8 = "int8"
# The engine keys its private model copies by dtype; int8 copies live under this marker.
INT8_DTYPE = torch.qint8


def check_int8_device(device: torch.device | str) -> None:
    """``ValueError`` unless ``device`` is a CPU: quantised kernels are CPU-only in torch."""
    device = torch.device(device)
    if device.type != "cpu":
        raise ValueError(f"precision 'int8' is CPU only (dynamic quantisation has no {device.type} kernels); "
                         "on a GPU use precision 'bf16', or load the model with device='cpu' "
                         "(CLI: hide the GPU with CUDA_VISIBLE_DEVICES=)")


INT8_SCHEMES = ("dynamic", "per-token")


def check_scheme(scheme: str) -> str:
    if scheme not in INT8_SCHEMES:
        raise ValueError(f"int8_scheme must be one of {INT8_SCHEMES}, got {scheme!r}")
    return scheme


class PerTokenInt8Linear(nn.Module):
    """``nn.Linear`` in int8: weights rounded once (symmetric, one scale per output channel),
    activations on every call (symmetric, one scale per row: the row's max |x| / 127), the product
    by ``torch._int_mm`` (exact int32 accumulation), then rescaled to fp32 and the bias added."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_t", q.t().contiguous())  # [in, out]: _int_mm(x [N, in], w [in, out])
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-8).div_(127.0)
        q = torch.round(rows / scale).clamp_(-127, 127).to(torch.int8)
        out = torch._int_mm(q, self.weight_t).float().mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-token"


def _replace_linears(module: nn.Module, make) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, make(child))
        else:
            _replace_linears(child, make)


def quantize_encoder_(model: nn.Module, scheme: str = "dynamic", per_channel: bool = True) -> nn.Module:
    """Replace the encoder's ``nn.Linear`` layers of ``model`` (an MLM, adapters merged) in place.

    ``model`` is cast to fp32 first. Returns ``model``. ``scheme``: ``dynamic`` (torch.ao) or
    ``per-token`` (:class:`PerTokenInt8Linear`). For ``dynamic``, per-channel weight scales (the
    default) track fp32 more closely than one scale per matrix.
    """
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    from ..backbone import encoder_of, unwrap_peft

    backbone = unwrap_peft(model)
    backbone.float().eval()
    if check_scheme(scheme) == "per-token":
        _replace_linears(encoder_of(backbone), PerTokenInt8Linear)
        return model
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the eager API is what torch 2.x ships.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*")
        quantize_dynamic(encoder_of(backbone), {nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
    return model


def quantized_linear_count(model: nn.Module) -> int:
    """How many int8 linear layers (either scheme) ``model`` holds (0 for a float model)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return sum(isinstance(m, (DynamicLinear, PerTokenInt8Linear)) for m in model.modules())
