"""Scoring precision: which compute dtype the inference engine runs for ``precision`` on a device.

``PRECISIONS``: ``auto`` (bf16 where the device computes it natively, else fp32), ``bf16``, ``fp32``
and ``int8`` (CPU only: dynamically quantised encoder linears, :mod:`tinyrm.inference.quantize`).
``check_precision`` / ``apply_precision`` are what ``RewardModel.from_pretrained(precision=...)`` and
``tinyrm.load(precision=...)`` run before and after loading.
"""

from __future__ import annotations

import platform
from functools import lru_cache

import torch

from .quantize import INT8, INT8_DTYPE, check_int8_device

PRECISIONS = ("auto", "bf16", "fp32", INT8)  # int8: CPU only, inference.quantize


@lru_cache(maxsize=1)
def cpu_bf16_native() -> bool:
    """True when the CPU computes bf16 natively (x86 avx512_bf16 / AMX, Arm bf16).

    ``torch.ops.mkldnn._is_mkldnn_bf16_supported`` also says yes for plain AVX-512, where bf16 is
    emulated and can be slower than fp32, so read the CPU flags instead.
    """
    try:
        with open("/proc/cpuinfo") as handle:
            text = handle.read()
    except OSError:
        return platform.machine() == "arm64" and platform.system() == "Darwin"  # Apple M2+ have bf16
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``precision`` on ``device`` (``auto`` falls back to fp32; ``int8``:
    ``torch.qint8``, the marker of the dynamically quantised copy, CPU only)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return torch.float32
    if precision == "int8":
        check_int8_device(device)
        return INT8_DTYPE
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        supported = cpu_bf16_native()
    else:
        supported = False
    if precision == "bf16" or supported:
        return torch.bfloat16
    return torch.float32


def check_precision(precision: str | None, device: torch.device | str) -> str | None:
    """``precision`` if it is valid for ``device`` (None passes through); ``ValueError`` otherwise."""
    if precision is None:
        return None
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == INT8:
        check_int8_device(device)
    return precision


def apply_precision(model, precision: str | None):
    """Set the scoring precision of a loaded model (``RewardModel.from_pretrained(precision=...)``).

    Models without the inference engine (classifier baselines, routed bundles) only accept None.
    """
    if precision is None:
        return model
    config = getattr(getattr(model, "engine", None), "config", None)
    if config is None or not hasattr(config, "precision"):
        raise ValueError(f"precision {precision!r} applies to cloze reward models; {type(model).__name__} "
                         "scores without the inference engine")
    config.precision = check_precision(precision, model.device)
    return model
