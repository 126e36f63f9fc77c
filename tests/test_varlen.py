"""Packed attention (``inference.varlen.varlen_attention``) against attention computed one sequence at a time
from its definition: any lengths (one token included, equal lengths on the view route), any window
(ModernBERT's local layers: keys with |i - j| <= window), forward and gradients. On the CPU its exact SDPA
route (the CPU's and fp32's route); on a GPU (the device run) torch's ``varlen_attn``, whose window a model
with random weights cannot show wrong in a benchmark's figures."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyrm.inference.varlen import (
    Packed,
    attention_route,
    flash_varlen_available,
    pack,
    varlen_attention,
    varlen_backward_available,
    varlen_window_supported,
)


class _Row:
    def __init__(self, n: int) -> None:
        self.input_ids = list(range(n))


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int], scale: float,
               window: int | None) -> torch.Tensor:
    """softmax(q k^T * scale, keys of the same sequence within the window) v, sequence by sequence."""
    out, start = [], 0
    for n in lengths:
        qs, ks, vs = (x[start:start + n].transpose(0, 1) for x in (q, k, v))  # [H, n, D]
        scores = torch.einsum("hid,hjd->hij", qs, ks) * scale
        if window is not None:
            pos = torch.arange(n, device=q.device)
            scores = scores.masked_fill((pos[:, None] - pos[None, :]).abs() > window, -math.inf)
        out.append(torch.einsum("hij,hjd->hid", scores.softmax(-1), vs).transpose(0, 1))
        start += n
    return torch.cat(out)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 24), min_size=1, max_size=5), equal=st.booleans(),
       heads=st.integers(1, 3), head_dim=st.sampled_from([2, 4, 8]),
       window=st.one_of(st.none(), st.integers(0, 12)), seed=st.integers(0, 2**16))
def test_sdpa_route_is_exact_attention(lengths: list[int], equal: bool, heads: int, head_dim: int,
                                       window: int | None, seed: int) -> None:
    if equal:
        lengths = [lengths[0]] * len(lengths)  # the view route: no gather
    packed: Packed = pack([_Row(n) for n in lengths])
    assert packed.equal_lengths == (len(set(lengths)) == 1)
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(sum(lengths), heads, head_dim, generator=generator, dtype=torch.float64,
                           requires_grad=True) for _ in range(3))
    scale = head_dim ** -0.5
    got = varlen_attention(q, k, v, packed, scale=scale, window=window, route="sdpa")
    want = _reference(q, k, v, lengths, scale, window)
    assert got.shape == q.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    weights = torch.randn(got.shape, generator=generator, dtype=torch.float64)  # a gradient through every row
    grads = torch.autograd.grad((got * weights).sum(), (q, k, v))
    expected = torch.autograd.grad((want * weights).sum(), (q, k, v))
    for name, a, b in zip("qkv", grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"d/d{name}")


@pytest.mark.skipif(not flash_varlen_available("cuda" if torch.cuda.is_available() else "cpu"),
                    reason="varlen_attn runs on CUDA only")
@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=6), heads=st.integers(1, 4),
       window=st.one_of(st.none(), st.integers(0, 160)), seed=st.integers(0, 2**16))
def test_cuda_flash_route_is_exact_attention(lengths: list[int], heads: int, window: int | None, seed: int) -> None:
    """On the device: ``varlen_attn`` in bf16 (head size 64 as ModernBERT's) against the definition in fp32 on the
    same bf16 inputs, within bf16's rounding; its backward too where it has one."""
    if window is not None and not varlen_window_supported():
        window = None  # such a layer takes the SDPA route, tested above
    packed = pack([_Row(n) for n in lengths], device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(sum(lengths), heads, 64, generator=generator, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    scale = 64 ** -0.5
    assert attention_route(q, window, 0.0, scale) == ("flash" if varlen_backward_available() else "sdpa")
    assert attention_route(q.detach(), window, 0.0, scale) == "flash"
    got = varlen_attention(q, k, v, packed, scale=scale, window=window, route="flash")
    want = _reference(*(x.float() for x in (q, k, v)), lengths, scale, window)
    torch.testing.assert_close(got.float(), want, rtol=0, atol=3e-2)
    if not varlen_backward_available():
        return
    weights = torch.randn(got.shape, generator=generator, device="cuda")
    grads = torch.autograd.grad((got.float() * weights).sum(), (q, k, v))
    expected = torch.autograd.grad((want * weights).sum(), (q, k, v))
    for name, a, b in zip("qkv", grads, expected):
        error = (a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-6)
        assert error < 3e-2, (name, float(error))


def test_a_layer_that_needs_a_backward_takes_the_sdpa_route_where_varlen_attn_has_none(monkeypatch) -> None:
    # As training's route choice says (inference.packed.use_packed): without a backward, no flash route under grad.
    import tinyrm.inference.varlen as varlen

    monkeypatch.setattr(varlen, "flash_varlen_available", lambda device: True)
    monkeypatch.setattr(varlen, "varlen_window_supported", lambda: True)
    q = torch.zeros(4, 2, 64, dtype=torch.bfloat16, requires_grad=True)
    for backward, route in ((True, "flash"), (False, "sdpa")):
        monkeypatch.setattr(varlen, "varlen_backward_available", lambda backward=backward: backward)
        assert attention_route(q, 8, 0.0, 64 ** -0.5) == route
        assert attention_route(q.detach(), 8, 0.0, 64 ** -0.5) == "flash"  # scoring needs none
        with torch.no_grad():
            assert attention_route(q, 8, 0.0, 64 ** -0.5) == "flash"


def test_flash_needs_an_ampere_or_newer_card(monkeypatch) -> None:
    # FlashAttention does not run on a T4 (7.5) or a V100 (7.0): 'auto' must not pick packed there.
    import tinyrm.inference.varlen as varlen

    monkeypatch.setattr(varlen, "_varlen_attn", lambda: object())
    for capability, runs in (((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(varlen, "_capability", lambda index, capability=capability: capability)
        assert varlen.flash_varlen_available("cuda:0") is runs
    assert not varlen.flash_varlen_available("cpu")
