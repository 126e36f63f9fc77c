"""int8 scoring (tinyrm.inference.quantize): agreement with fp32, the CPU-only rule; speed: benchmarks/int8.py."""

from __future__ import annotations

import pytest
import torch

from tinyrm.auto import load
from tinyrm.backbone import encoder_of
from tinyrm.inference.engine import InferenceConfig
from tinyrm.inference.precision import resolve_dtype
from tinyrm.inference.quantize import PerTokenInt8Linear, quantized_linear_count
from tinyrm.pairwise.model import RewardModel

from .speed_helpers import opinionated_bert, varied_items


@pytest.mark.parametrize("scheme", ["dynamic", "per-token"])
def test_int8_agrees_with_fp32(tiny_bert: str, scheme: str) -> None:
    items = varied_items(48)
    rm = opinionated_bert(tiny_bert, items)
    p32 = rm.compare_batch(items, both_orders=False)
    assert min(p32) < 0.2 and max(p32) > 0.8  # a real spread of decisions
    assert sum(abs(p - 0.5) < 0.1 for p in p32) >= 3  # and near-ties that could flip
    rm.engine.config.precision = "int8"
    rm.engine.config.int8_scheme = scheme
    rm.engine.config.recheck_margin = 0.0  # the pure int8 path
    p8 = rm.compare_batch(items, both_orders=False)
    run = rm.engine.prepared().model
    linears = sum(isinstance(m, torch.nn.Linear) for m in encoder_of(rm.model).modules())
    assert quantized_linear_count(run) == linears > 0  # every encoder linear is int8 ...
    assert quantized_linear_count(rm.model) == 0 and next(rm.model.parameters()).dtype == torch.float32  # ... in a copy
    assert p8 != p32  # really computed in int8
    diffs = [abs(a - b) for a, b in zip(p32, p8)]
    assert max(diffs) < 0.01 and sum(diffs) / len(diffs) < 0.002  # measured: 8e-4, 2.4e-4
    same = sum((a > 0.5) == (b > 0.5) for a, b in zip(p32, p8))
    assert same / len(items) >= 0.95
    assert all((a > 0.5) == (b > 0.5) for a, b in zip(p32, p8) if abs(a - 0.5) > 0.02)
    # Both orders and the fp32 recheck guard work on the int8 copy too.
    rm.engine.config.recheck_margin = 0.05
    guarded = rm.compare_batch(items)
    rm.engine.config.precision = "fp32"
    both32 = rm.compare_batch(items)
    assert rm.engine.rechecked > 0
    assert all((a > 0.5) == (b > 0.5) for a, b in zip(both32, guarded))


def test_int8_is_cpu_only(tiny_bert: str) -> None:
    with pytest.raises(ValueError, match="CPU only"):
        resolve_dtype("int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="CPU only"):  # refused before any weights are loaded or moved
        RewardModel.from_pretrained(tiny_bert, device="cuda", precision="int8")
    assert resolve_dtype("int8", torch.device("cpu")) == torch.qint8
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu", precision="int8")
    assert rm.engine.config.precision == "int8"
    with pytest.raises(ValueError, match="precision"):
        RewardModel.from_pretrained(tiny_bert, device="cpu", precision="int4")
    # tinyrm.load takes the precision too, with the same check before loading.
    with pytest.raises(ValueError, match="CPU only"):
        load(tiny_bert, device="cuda", precision="int8")
    assert load(tiny_bert, device="cpu", precision="int8").engine.config.precision == "int8"


def _opinionated_modernbert(path: str, items, std: float = 1.0) -> RewardModel:
    """``opinionated_bert`` for ModernBERT: the one-order logit gap centred, then scaled to std ``std`` (head norm
    and decoder bias; the decoder weight is tied to the embeddings). P then spread over ~0.6, not tiny_modernbert's
    ~1e-3, where a constant answer agreed with fp32 to 0.01."""
    rm = RewardModel.from_pretrained(path, device="cpu")
    rm.engine.config.precision = "fp32"
    p = torch.tensor(rm.compare_batch(items, both_orders=False), dtype=torch.float64)
    gap = torch.log(p) - torch.log1p(-p)
    scale = std / float(gap.std())
    with torch.no_grad():
        rm.model.decoder.bias[rm.answer_ids[0]] -= float(gap.mean())
        rm.model.head.norm.weight *= scale
        rm.model.decoder.bias *= scale
    return rm


def test_int8_modernbert_runs(tiny_modernbert: str) -> None:
    items = varied_items(8)
    rm = _opinionated_modernbert(tiny_modernbert, items)
    p32 = rm.compare_batch(items, both_orders=False)
    assert max(p32) - min(p32) > 30 * 0.01  # the pairs far apart beyond the tolerance (measured: 0.59)
    rm.engine.config.precision = "int8"
    p8 = rm.compare_batch(items, both_orders=False)
    assert quantized_linear_count(rm.engine.prepared().model) > 0
    assert p8 == pytest.approx(p32, abs=0.01)  # measured: 0.0056


def test_per_token_linear_matches_float() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 40)
    x = torch.randn(3, 7, 48)
    x[1, 2] *= 50  # an outlier token only coarsens its own row
    q = PerTokenInt8Linear(linear)
    with torch.no_grad():
        ref, out = linear(x), q(x)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    rel = (out - ref).norm(dim=-1) / ref.norm(dim=-1)
    assert float(rel.max()) < 0.03
    assert q.weight_t.dtype == torch.int8


def test_int8_scheme_switch_rebuilds_the_copy(tiny_bert: str) -> None:
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu", precision="int8")
    rm.compare_batch(varied_items(2))
    dynamic = rm.engine.prepared().model
    rm.engine.config.int8_scheme = "per-token"
    rm.compare_batch(varied_items(2))
    per_token = rm.engine.prepared().model
    assert per_token is not dynamic
    assert any(isinstance(m, PerTokenInt8Linear) for m in per_token.modules())
    with pytest.raises(ValueError, match="int8_scheme"):
        InferenceConfig(int8_scheme="int4")
