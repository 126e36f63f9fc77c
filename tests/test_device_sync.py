"""Scoring never makes the host wait for the device between passes.

On a GPU the host queues pass after pass and reads a chunk's results back once (``InferenceEngine.run_batches``);
an op that needs a device value on the host (``.item()``, ``bool(t)``, ``nonzero``, a boolean index, a tensor made
from Python data inside the forward) would drain the queue at every pass, and the GPU would wait on the host.
Such ops are the same aten calls on the CPU, so a dispatch mode that records them shows them here; a host read
that skips the dispatcher on the CPU (``.tolist()``, ``.numpy()``, ``.cpu()``: each a device-to-host copy on CUDA)
is counted by wrapping those methods. Both are checked on the routes
CUDA takes: the packed forward with ``varlen_attn`` (a stand-in of the same signature on the CPU) and with its
exact SDPA route, a packed training step, and the padded forward. On a GPU (the device run's pytest step),
``torch.cuda.set_sync_debug_mode("error")`` checks the packed passes with the real kernels.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tinyrm.inference.varlen as varlen
from tinyrm.inference.batches import host_batches, pair_units
from tinyrm.pairwise.model import RewardModel

from .packed_helpers import mixed_items
from .test_packed import windowed_modernbert  # noqa: F401 (fixture)
from .test_packed_train import _cloze_collate, _cloze_features, _cloze_scorer, backbones  # noqa: F401 (fixture)

# aten ops whose CUDA kernels hand a device value to the host (or, for lift_fresh, copy Python data to the device
# from pageable memory): each waits for everything queued before it.
SYNCING = frozenset({
    "aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.equal.default", "aten.nonzero.default",
    "aten.nonzero_numpy.default", "aten.argwhere.default", "aten.masked_select.default", "aten._unique2.default",
    "aten.unique_dim.default", "aten.unique_consecutive.default", "aten.repeat_interleave.Tensor",
    "aten.repeat_interleave.self_Tensor",
    "aten.lift_fresh.default",
})


HOST_READS = ("tolist", "numpy", "cpu", "item")  # on a CPU tensor the first three never reach the dispatcher


class SyncRecorder(TorchDispatchMode):
    """Counts the syncing ops dispatched inside the block (boolean indexing included: it runs ``nonzero``), and
    lists in ``reads`` each host read of a tensor's values, as (method, number of elements)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.reads: list[tuple[str, int]] = []

    def __enter__(self):
        self._own = {name: torch.Tensor.__dict__.get(name) for name in HOST_READS}
        for name in HOST_READS:
            def read(t, *args, _real=getattr(torch.Tensor, name), _name=name, **kwargs):
                self.reads.append((_name, t.numel()))
                return _real(t, *args, **kwargs)
            setattr(torch.Tensor, name, read)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, own in self._own.items():
            if own is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, own)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        indices = args[1] if name.startswith("aten.index") and len(args) > 1 else ()
        if name in SYNCING or any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()):
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def flash_route(monkeypatch) -> list[int]:
    """The packed forward routes attention as on CUDA: ``varlen_attn`` for every bf16 layer it computes exactly,
    here a stand-in of its signature, shape and dtype (the values do not matter; test_packed checks them).
    Returns the list its calls are counted in."""
    calls: list[int] = []

    def stand_in(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), **_):
        calls.append(1)
        return v * 1.0

    monkeypatch.setattr(varlen, "_varlen_attn", lambda: stand_in)
    monkeypatch.setattr(varlen, "flash_varlen_available", lambda device: True)
    monkeypatch.setattr(varlen, "varlen_backward_available", lambda: True)  # autograd through the stand-in
    return calls


def _syncs_per_pass(path: str, attention: str, precision: str, items, budget: int = 400) -> tuple[Counter, int]:
    rm = RewardModel.from_pretrained(path, device="cpu")
    rm.engine.config.attention, rm.engine.config.precision = attention, precision
    prepared = rm.engine.prepared()
    encodings = rm.engine._encode_chunk(items, True)
    batches = list(host_batches(encodings, pair_units(len(items), True), rm.engine.pad_id,
                                attention == "packed", None, budget))
    assert len(batches) > 1
    rm.engine.run_batches(prepared, batches, len(encodings))  # first calls: caches, lazy buffers
    with SyncRecorder() as recorder:
        rm.engine.run_batches(prepared, batches, len(encodings))
    # The one read the chunk is meant to make: all its probabilities, after the last pass. Any other is a sync.
    assert ("tolist", len(encodings)) in recorder.reads, recorder.reads  # (and the recorder sees host reads)
    recorder.reads.remove(("tolist", len(encodings)))
    return recorder.ops + Counter(f"Tensor.{name}" for name, _ in recorder.reads), len(batches)


@pytest.mark.parametrize("route", ["flash", "sdpa"])
@pytest.mark.parametrize("family", ["modernbert", "bert"])
def test_packed_scoring_never_syncs(family: str, route: str, windowed_modernbert: str, tiny_bert: str,  # noqa: F811
                                    request) -> None:
    calls = request.getfixturevalue("flash_route") if route == "flash" else None
    path = windowed_modernbert if family == "modernbert" else tiny_bert
    ops, passes = _syncs_per_pass(path, "packed", "bf16", mixed_items(8))
    assert not ops, f"{passes} packed passes made the host wait for the device: {dict(ops)}"
    assert calls is None or calls, "the flash route was not taken"


@pytest.mark.parametrize("mode", ["full", "dora"])
@pytest.mark.parametrize("family", ["modernbert", "bert"])
def test_packed_training_step_never_syncs(backbones: dict, family: str, mode: str, flash_route) -> None:  # noqa: F811
    """A packed training step, forward and backward, bf16 autocast as on a GPU (the Trainer's own per-step
    bookkeeping aside): DoRA's weight norms and the frozen layers included."""
    scorer, tokenizer = _cloze_scorer(backbones[family], mode)
    batch = _cloze_collate(tokenizer)(_cloze_features(tokenizer, mixed_items(8)), True)
    for _ in range(2):  # the second step is the one recorded: lazy state built by the first
        with SyncRecorder() as recorder:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = scorer(**batch)
            out["loss"].backward()
    assert not recorder.ops and not recorder.reads, (dict(recorder.ops), recorder.reads)
    assert flash_route, "the flash route was not taken"


def test_padded_scoring_syncs_only_where_rows_are_padded(windowed_modernbert: str) -> None:  # noqa: F811
    """Rows of one length get no mask (transformers' on-device ``mask.all()`` skipped); padded rows still pay it,
    inside transformers, once per mask it builds (``attention="padded"`` is the fallback where packed cannot run)."""
    one_length = [("word " * 40, "yes", "no")] * 6  # every encoding the same length
    ops, _ = _syncs_per_pass(windowed_modernbert, "padded", "fp32", one_length, budget=200)
    assert not ops, dict(ops)
    ops, passes = _syncs_per_pass(windowed_modernbert, "padded", "fp32", mixed_items(8))
    assert 0 < sum(ops.values()) <= 2 * passes, dict(ops)  # the global and the sliding-window mask


def test_padded_without_mask_equals_with_it(windowed_modernbert: str) -> None:  # noqa: F811
    rm = RewardModel.from_pretrained(windowed_modernbert, device="cpu")
    rm.engine.config.attention, rm.engine.config.precision = "padded", "fp32"
    prepared = rm.engine.prepared()
    encodings = [rm.encode("word " * 40, "yes", "no"), rm.encode("word " * 40, "no", "yes")]
    (batch,) = host_batches(encodings, [[0, 1]], rm.engine.pad_id, False, None, None)
    assert not batch.padding
    t = batch.padded
    with torch.inference_mode():
        masked = prepared.forward(t["input_ids"], t["attention_mask"], t["mask_positions"])
        unmasked = prepared.forward(t["input_ids"], None, t["mask_positions"])
    assert torch.equal(masked, unmasked)


# ----------------------------------------------------------------------------- on a GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_packed_passes_never_sync(windowed_modernbert: str) -> None:  # noqa: F811
    """On the device, with the real kernels: every packed pass (pinned batch, non-blocking copy, forward,
    softmax) under ``torch.cuda.set_sync_debug_mode("error")``, which raises at any synchronising call; the
    read-back after the last pass is the only wait."""
    rm = RewardModel.from_pretrained(windowed_modernbert, device="cuda")
    rm.engine.config.attention, rm.engine.config.precision = "packed", "bf16"
    prepared = rm.engine.prepared()
    encodings = rm.engine._encode_chunk(mixed_items(16), True)
    batches = list(host_batches(encodings, pair_units(16, True), rm.engine.pad_id, True, None, 600, pin=True))
    assert len(batches) > 1
    for checked in (False, True):  # the first round builds lazy state (caches, kernel choice) unchecked
        results = []
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if checked else 0)
        try:
            with torch.inference_mode():
                for batch in batches:
                    logits = prepared.packed(batch.packed.to("cuda", non_blocking=True))
                    results.append(torch.softmax(logits.float(), dim=-1)[:, 0])
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert torch.cat(results).isfinite().all()
