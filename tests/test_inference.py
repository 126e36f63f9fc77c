"""Scoring path: token-budget batching, order restoration, token cache, bf16 vs fp32, both orders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinyrm.inference.engine import CachingClozeEncoder, InferenceConfig, plan_batches
from tinyrm.inference.precision import cpu_bf16_native, resolve_dtype
from tinyrm.pairwise.model import RewardModel
from tinyrm.prompt import ClozeEncoder, get_template
from tinyrm.tools.synthetic import generate


def _items(n: int, seed: int = 3) -> list[tuple[str, str, str]]:
    # Vary lengths a lot so that sorting actually reorders.
    out = []
    for k, pair in enumerate(generate(n, seed=seed)):
        pad = " and more detail" * (k % 7) * 5
        out.append((pair.prompt + pad, pair.chosen, pair.rejected + pad[: 40 * (k % 3)]))
    return out


def _rows_and_cost(batch) -> tuple[list[tuple[int, ...]], int]:
    """A forward pass: its rows as token ids, its cost (rows x width padded, real tokens packed)."""
    if batch.packed is not None:
        cu, ids = batch.packed.cu_seqlens.tolist(), batch.packed.input_ids.tolist()
        return [tuple(ids[a:b]) for a, b in zip(cu, cu[1:])], cu[-1]
    ids, mask = batch.padded["input_ids"], batch.padded["attention_mask"].bool()
    return [tuple(row[keep].tolist()) for row, keep in zip(ids, mask)], ids.numel()


def _record_batches(rm: RewardModel) -> list[tuple[list[tuple[int, ...]], int]]:
    """Capture every forward pass the engine runs (``_rows_and_cost``). Undo with ``del rm.engine.run_batches``."""
    seen: list[tuple[list[tuple[int, ...]], int]] = []
    original = rm.engine.run_batches

    def spy(prepared, batches, n):
        batches = list(batches)
        seen.extend(map(_rows_and_cost, batches))
        return original(prepared, batches, n)

    rm.engine.run_batches = spy
    return seen


@pytest.fixture(scope="module")
def spread_modernbert(tmp_path_factory) -> str:
    """tiny_modernbert initialised 10x wider, as conftest's ``spread_bert``: one-order P spread over ~0.35."""
    from .conftest import _save_tiny

    return _save_tiny("modernbert", tmp_path_factory.mktemp("spread-modernbert"), seed=2, initializer_range=0.2)


@pytest.fixture(params=["modernbert", "bert"])
def spread_model(request, spread_modernbert, spread_bert) -> str:
    """tiny_model initialised wide: its pairs' P differ by far more than the tolerances below (tiny_model's lie
    within 1e-3 of each other and of 0.5, so a constant or permuted answer passed)."""
    return spread_modernbert if request.param == "modernbert" else spread_bert


def test_plan_batches_budget_rows_and_coverage() -> None:
    widths = [5, 300, 17, 17, 120, 64, 64, 1, 900, 33]
    batches = plan_batches(widths, rows_per_unit=2, max_batch_tokens=1024, max_rows=6)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(widths)))  # every unit exactly once
    for batch in batches:
        rows = 2 * len(batch)
        assert rows <= 6
        if len(batch) > 1:  # a lone unit may exceed the budget (it cannot be split)
            assert rows * max(widths[i] for i in batch) <= 1024
    # Longest first, so padding within a batch stays small.
    firsts = [max(widths[i] for i in b) for b in batches]
    assert firsts == sorted(firsts, reverse=True)
    assert [900] == [widths[i] for i in batches[0]]  # 2 x 900 > 1024: alone


def test_plan_batches_no_limits_is_one_batch() -> None:
    assert plan_batches([3, 1, 2]) == [[0, 2, 1]]


@pytest.mark.parametrize("attention", ["padded", "packed"])
def test_order_restored_and_budget_respected(spread_model: str, attention: str) -> None:
    rm = RewardModel.from_pretrained(spread_model, device="cpu")
    rm.engine.config.precision = "fp32"
    rm.engine.config.attention = attention
    items = _items(20)
    one_by_one = [rm.compare(*item) for item in items]
    assert max(one_by_one) - min(one_by_one) > 100 * 1e-5  # a batch left in another order cannot pass
    seen = _record_batches(rm)
    try:
        batched = rm.compare_batch(items, batch_size=None, max_batch_tokens=600)
    finally:
        del rm.engine.run_batches
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    assert len(seen) > 1
    for rows, cost in seen:  # padded: rows x width; packed: real tokens
        assert cost <= 600 or len(rows) == 2  # a lone pair (2 rows) may exceed it


@pytest.mark.parametrize("attention", ["padded", "packed"])
def test_both_orders_share_a_batch(tiny_bert: str, attention: str) -> None:
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu")
    rm.engine.config.attention = attention
    items = _items(12)
    seen = _record_batches(rm)
    try:
        rm.compare_batch(items, batch_size=4, max_batch_tokens=10_000)
    finally:
        del rm.engine.run_batches
    batches = [set(rows) for rows, _ in seen]
    for prompt, a, b in items:
        forward = tuple(rm.encode(prompt, a, b).input_ids)
        swapped = tuple(rm.encode(prompt, b, a).input_ids)
        assert any(forward in batch and swapped in batch for batch in batches)
    assert max(len(rows) for rows, _ in seen) <= 4


def test_single_order_and_choice_probs_order(spread_modernbert: str) -> None:
    rm = RewardModel.from_pretrained(spread_modernbert, device="cpu")
    rm.engine.config.precision = "fp32"
    items = _items(9)
    encodings = [rm.encode(*item) for item in items]
    probs = rm.choice_probs(encodings, batch_size=3)
    one = [rm.choice_probs([e])[0] for e in encodings]
    assert max(one) - min(one) > 1000 * 1e-5  # the pairs' P far apart: a permuted batch cannot pass
    assert probs == pytest.approx(rm.compare_batch(items, both_orders=False), abs=1e-5)
    assert probs == pytest.approx(one, abs=1e-5)


def test_cache_matches_plain_encoder(tiny_bert: str) -> None:
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu")
    template = get_template(rm.config.template)
    plain = ClozeEncoder(rm.tokenizer, template, prefix=rm.config.prefix, max_length=96)
    cached = CachingClozeEncoder(rm.tokenizer, template, prefix=rm.config.prefix, max_length=96)
    items = _items(15) + [("same prompt", "x " * 200, "y"), ("same prompt", "y", "x " * 200)]
    cached.prefetch(items)
    misses_after_prefetch = cached.misses
    for prompt, a, b in items:
        for args in ((prompt, a, b), (prompt, b, a)):
            assert cached.encode(*args) == plain.encode(*args)
    assert cached.misses == misses_after_prefetch  # every text was tokenised once, up front
    assert cached.hits >= 4 * len(items)


def test_cache_is_bounded(tiny_bert: str) -> None:
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu")
    small = CachingClozeEncoder(rm.tokenizer, get_template("flan"), cache_size=5)
    for k in range(20):
        small.encode(f"prompt {k}", f"a {k}", f"b {k}")
        assert len(small._cache) <= 5


def test_resolve_dtype() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("fp32", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if cpu_bf16_native() else torch.float32)
    with pytest.raises(ValueError, match="precision"):
        InferenceConfig(precision="fp8")


def test_bf16_agrees_with_fp32(spread_model: str) -> None:
    rm = RewardModel.from_pretrained(spread_model, device="cpu")
    items = _items(24)
    rm.engine.config.precision = "fp32"
    p32 = rm.compare_batch(items, both_orders=False)
    assert max(p32) - min(p32) > 10 * 0.02  # pairs far apart beyond the tolerance below (measured: 0.38, 0.51)
    rm.engine.config.precision = "bf16"
    p16 = rm.compare_batch(items, both_orders=False)
    assert rm.engine.prepared().dtype == torch.bfloat16
    assert next(rm.model.parameters()).dtype == torch.float32  # the user's model is untouched
    assert p16 != p32  # really computed in bf16
    assert p16 == pytest.approx(p32, abs=0.02)
    clear = [(a, b) for a, b in zip(p32, p16) if abs(a - 0.5) > 0.02]
    assert all((a > 0.5) == (b > 0.5) for a, b in clear)


def test_recheck_margin_gives_fp32_decisions(tiny_bert: str) -> None:
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu")
    items = _items(12)
    rm.engine.config.precision = "fp32"
    p32 = rm.compare_batch(items)
    rm.engine.config.precision = "bf16"
    rm.engine.config.recheck_margin = 0.0
    p16 = rm.compare_batch(items)  # pure bf16
    assert rm.engine.rechecked == 0
    gaps = sorted({abs(p - 0.5) for p in p16})
    margin = gaps[len(gaps) // 2]  # some pairs are "near-ties" (below it), some are not
    rm.engine.config.recheck_margin = margin
    guarded = rm.compare_batch(items)
    close = [abs(p - 0.5) < margin for p in p16]
    assert rm.engine.rechecked == sum(close) > 0
    for is_close, g, x32, x16 in zip(close, guarded, p32, p16):
        assert g == pytest.approx(x32 if is_close else x16, abs=1e-6)


def test_bf16_copy_follows_weight_updates(tiny_bert: str) -> None:
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu")
    rm.engine.config.precision = "bf16"
    items = _items(4)
    before = rm.compare_batch(items, both_orders=False)  # both orders would cancel a choice bias
    first_copy = rm.engine.prepared().model
    with torch.no_grad():  # what an optimizer step does: in-place update
        rm.model.cls.predictions.decoder.bias[rm.answer_ids[0]] += 3.0
    after = rm.compare_batch(items, both_orders=False)
    assert rm.engine.prepared().model is not first_copy
    assert all(y > x for x, y in zip(before, after))


def test_private_copy_is_the_same_kind_whoever_asks_first(tiny_bert: str) -> None:
    """The bf16 copy is made of ordinary, frozen tensors whether the first caller is in inference mode
    (scoring) or not (a benchmark's profile, a user's own loop): usable in both, with nothing recorded for a
    backward."""
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu")
    rm.engine.config.precision = "bf16"
    with torch.inference_mode():
        weights = list(rm.engine.prepared().model.parameters())
    assert weights and not any(w.is_inference() or w.requires_grad for w in weights)
    assert all(w.requires_grad for w in rm.model.parameters() if w.dtype.is_floating_point)  # the live model untouched
    prepared = rm.engine.prepared()
    ids = torch.tensor([[101, 1000, 1001, 102]])
    logits = prepared.forward(ids, torch.ones_like(ids), torch.tensor([2]))  # outside inference mode
    assert logits.shape == (1, len(rm.answer_ids)) and not logits.requires_grad


def test_invalid_budget(tiny_bert: str) -> None:
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu")
    with pytest.raises(ValueError, match="max_batch_tokens"):
        rm.compare_batch(_items(2), max_batch_tokens=0)


def test_an_item_that_is_not_text_is_named_before_any_work(tiny_bert: str) -> None:
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu")
    good = _items(2)
    with pytest.raises(TypeError, match="item 2: b is NoneType, not str"):
        rm.compare_batch([*good, ("p", "a", None)])
    with pytest.raises(TypeError, match=r"item 0: expected \(prompt, a, b\)"):
        rm.compare_batch([("p", "a")])
    with pytest.raises(ValueError, match="lone surrogate"):
        rm.compare("p", "a\udfff", "b")
    assert rm.compare_batch([list(good[0])]) == rm.compare_batch(good[:1])  # a list is a pair too


def test_eval_cli_max_batch_tokens(spread_bert: str, pairs_file, tmp_path, monkeypatch) -> None:
    from tinyrm.cli import main
    from tinyrm.inference.engine import InferenceEngine

    passes: list[tuple[list[tuple[int, ...]], int]] = []
    real = InferenceEngine.run_batches

    def spy(self, prepared, batches, n):
        batches = list(batches)
        passes.extend(map(_rows_and_cost, batches))
        return real(self, prepared, batches, n)

    monkeypatch.setattr(InferenceEngine, "run_batches", spy)
    runs = {}
    base = ["eval", "--model", spread_bert, "--data", str(pairs_file), "--precision", "fp32"]  # exact enough
    for budget in (256, 100000):
        out, predictions = tmp_path / f"{budget}.json", tmp_path / f"{budget}.jsonl"
        passes.clear()
        assert main([*base, "--max-batch-tokens", str(budget), "--output", str(out),
                     "--predictions", str(predictions)]) == 0
        probs = [json.loads(line)["prob_chosen"] for line in predictions.read_text().splitlines()]
        runs[budget] = json.loads(out.read_text()), probs, list(passes)
    (small, p_small, passes_small), (big, p_big, passes_big) = runs[256], runs[100000]
    assert small["n"] == big["n"] == 24 and small["accuracy"] == big["accuracy"]
    assert max(p_big) - min(p_big) > 1e-3  # the pairs' P far apart: same scores means each pair's own
    assert p_small == pytest.approx(p_big, abs=1e-6)
    assert len(passes_small) > len(passes_big)  # the budget reached the engine ...
    assert all(cost <= 256 or len(rows) == 2 for rows, cost in passes_small)  # ... and bounded every pass
    assert main([*base, "--max-batch-tokens", "0"]) == 2


def test_onnx_export_matches_torch(spread_model: str, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from tinyrm.cli import main
    from tinyrm.inference.export import OnnxRewardModel

    out = tmp_path / "onnx"
    assert main(["export", "--onnx", str(out), "--model", spread_model, "--max-length", "256"]) == 0
    onnx_rm = OnnxRewardModel.load(out)
    rm = RewardModel.from_pretrained(spread_model, device="cpu", max_length=256)
    rm.engine.config.precision = "fp32"
    items = _items(10) + [("long " * 150, "x " * 90, "y")]  # past ModernBERT's local window
    expected = rm.compare_batch(items)
    assert min(max(abs(p - 0.5) for p in expected), max(expected) - min(expected)) > 1e-3  # 100x the tolerance
    assert onnx_rm.compare_batch(items, max_batch_tokens=700) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(FileNotFoundError, match="tinyrm export"):
        OnnxRewardModel.load(tmp_path / "missing")


def test_onnx_export_of_a_model_reading_cls(tiny_bert: str, tmp_path) -> None:
    """``read="cls"`` (what ``--read auto`` picks for a backbone without MLM-head weights, the embedded default):
    the exported graph reads [CLS] as the engine does (it read the mask slot: |dP| 0.09 on the demo model)."""
    pytest.importorskip("onnxruntime")
    import onnxruntime

    from tinyrm.inference.export import ExportConfig, OnnxRewardModel, export_onnx

    rm = RewardModel.from_pretrained(tiny_bert, device="cpu", read="cls")
    rm.engine.config.precision = "fp32"
    path = export_onnx(ExportConfig(model=tiny_bert, output=str(tmp_path / "onnx")), rm=rm)
    items = _items(6)
    expected = rm.compare_batch(items)
    assert OnnxRewardModel.load(path.parent).compare_batch(items) == pytest.approx(expected, abs=1e-5)
    # The graph alone (another runtime's view): fed the mask slot, it reads [CLS] all the same.
    enc = rm.encode(*items[0])
    session = onnxruntime.InferenceSession(str(path))
    inputs = {i.name for i in session.get_inputs()}
    feed = {"input_ids": [enc.input_ids], "attention_mask": [[1] * len(enc.input_ids)],
            "mask_positions": [enc.mask_position], "token_type_ids": [enc.token_type_ids or [0] * len(enc.input_ids)]}
    logits = session.run(["logits"], {k: np.array(v, dtype=np.int64) for k, v in feed.items() if k in inputs})[0]
    p_first = float(np.exp(logits[0, 0]) / np.exp(logits[0]).sum())
    assert p_first == pytest.approx(rm.choice_probs([enc])[0], abs=1e-5)


def test_engine_settings_changed_on_a_loaded_model_are_checked_and_applied(tiny_bert) -> None:
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu")
    items = _items(120)
    rm.engine.config.cache_size = 10  # the token cache's bound: what the encoder keeps, not its own default
    rm.compare_batch(items)
    assert rm.encoder.cache_size == 10 and len(rm.encoder._cache) <= 10
    rm.engine.config.precision = "float32"  # a typo for fp32 meant auto (bf16 here) without a word
    with pytest.raises(ValueError, match="precision must be one of"):
        rm.compare_batch(items[:2])
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_dtype("float32", torch.device("cpu"))


def test_the_template_text_cache_is_bounded(tiny_bert) -> None:
    # Its keys carry the whitespace a user text ends with: a server fed varied whitespace must not grow it.
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu")
    for n in range(1100):
        rm.encoder.encode("question" + " " * n, "a", "b")
    assert len(rm.encoder._literal_cache) <= 1024
