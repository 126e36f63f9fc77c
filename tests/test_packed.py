"""The packed (unpadded) forward equals the padded one: P(a better) within 1e-4 in fp32 on CPU.

Mixed lengths, both orders and one, ``diff`` truncation, a ModernBERT whose sequences are longer than
its local window, BERT, a DoRA model, the classifier and token baselines; then the selection
(``attention`` auto | packed | padded) and the CLI flag.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tinyrm.backbone import BackboneConfig, apply_dora, encoder_of, load_mlm, mask_logits
from tinyrm.config import RewardConfig
from tinyrm.inference.batches import collate, host_batches, pair_units, plan_batches
from tinyrm.inference.engine import InferenceConfig
from tinyrm.inference.packed import apply_attention, packed_family, packed_mask_logits, use_packed
from tinyrm.inference.varlen import pack
from tinyrm.pairwise.model import RewardModel

from .packed_helpers import baseline_scorer, mixed_items, randomize_adapters

TOL = 1e-4
WINDOW = 16  # local_attention of the windowed ModernBERT: |i - j| <= 8 in its local layers
SPREAD = 0.2  # initializer_range: P spread from 0.5, so agreeing to TOL means something (conftest's spread_bert)


@pytest.fixture(scope="module")
def windowed_modernbert(tmp_path_factory) -> str:
    """3 layers: global, local, local (window 16), with the MiniLM tokenizer."""
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertForMaskedLM

    from tinyrm.backbone import default_model_path

    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    config = ModernBertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, max_position_embeddings=1024, local_attention=WINDOW, global_attn_every_n_layers=3,
        initializer_range=SPREAD,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id)
    directory = tmp_path_factory.mktemp("windowed-modernbert")
    ModernBertForMaskedLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(params=["modernbert", "bert"])
def packable_model(request, windowed_modernbert, spread_bert) -> str:
    return windowed_modernbert if request.param == "modernbert" else spread_bert


def _both_ways(rm, items, **kw) -> tuple[list[float], list[float]]:
    """(padded, packed) P(a better); checks which forward actually ran."""
    seen: list[int] = []
    handle = encoder_of(rm.engine.prepared().model).register_forward_pre_hook(lambda *_: seen.append(1))
    try:
        rm.engine.config.attention = "padded"
        padded = rm.compare_batch(items, **kw)
        assert seen and not rm.engine.uses_packed()
        seen.clear()
        rm.engine.config.attention = "packed"
        packed = rm.compare_batch(items, **kw)
        assert not seen and rm.engine.uses_packed()  # the packed forward never calls the HF encoder
    finally:
        handle.remove()
    assert max(abs(p - 0.5) for p in padded) > 10 * TOL  # P spread enough for "within TOL" to mean something
    return padded, packed


# ----------------------------------------------------------------------------- packing and planning
def test_pack_layout() -> None:
    class E:
        def __init__(self, n: int, mask: int) -> None:
            self.input_ids, self.token_type_ids, self.mask_position = list(range(10, 10 + n)), [0] * n, mask

    packed = pack([E(3, 1), E(5, 4), E(1, 0)])
    assert packed.cu_seqlens.dtype == torch.int32 and packed.cu_seqlens.tolist() == [0, 3, 8, 9]
    assert packed.position_ids.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0]
    assert packed.input_ids.tolist() == [10, 11, 12, 10, 11, 12, 13, 14, 10]
    assert packed.mask_index.tolist() == [1, 7, 8] and packed.starts.tolist() == [0, 3, 8]
    assert packed.max_seqlen == 5 and packed.token_type_ids.shape == (9,)
    assert packed.segment_sum(torch.ones(9)).tolist() == [3, 5, 1]


def test_plan_batches_by_real_tokens() -> None:
    widths = [100, 40, 30, 20, 10]
    padded = plan_batches(widths, 1, max_batch_tokens=200)
    packed = plan_batches(widths, 1, max_batch_tokens=200, tokens=widths)
    assert len(padded) == 2 and packed == [[0, 1, 2, 3, 4]]  # 200 real tokens fit; 5 rows x 100 padded do not
    for batch in packed:
        assert sum(widths[i] for i in batch) <= 200


def test_packed_batches_on_the_sdpa_route_are_planned_as_padded_ones(windowed_modernbert: str) -> None:
    # Off varlen_attn attention runs on a block padded to the longest row: there the plan is padded's.
    rm = RewardModel.from_pretrained(windowed_modernbert, device="cpu", precision="fp32")
    rm.engine.config.attention = "packed"
    assert rm.engine.uses_packed() and not rm.engine.plans_by_tokens(rm.engine.prepared())
    items = [("q " * 150, "a long answer " * 20, "b")] + [("q", f"a{i}", f"b{i}") for i in range(40)]
    encodings, units = rm.engine._encode_chunk(items, True), pair_units(len(items), True)

    def rows(packed: bool, by_tokens: bool | None = None) -> list[list[int]]:
        return [b.rows for b in host_batches(encodings, units, 0, packed, None, 2048, by_tokens=by_tokens)]

    def widest_block(plan: list[list[int]]) -> int:  # what SDPA attends over: rows x the longest row
        return max(len(b) * max(len(encodings[j].input_ids) for j in b) for b in plan)

    assert rows(True, by_tokens=False) == rows(False) and widest_block(rows(False)) <= 2048
    assert widest_block(rows(True, by_tokens=True)) > 2 * 2048  # by real tokens: the long pair's block takes many
    padded, packed = _both_ways(rm, items, batch_size=None, max_batch_tokens=2048)
    assert packed == pytest.approx(padded, abs=TOL)


# ----------------------------------------------------------------------------- packed == padded
@pytest.mark.parametrize("both_orders", [True, False])
def test_packed_equals_padded(packable_model: str, both_orders: bool) -> None:
    rm = RewardModel.from_pretrained(packable_model, device="cpu", precision="fp32")
    items = mixed_items(14)
    lengths = [len(rm.encode(*item).input_ids) for item in items]
    assert max(lengths) > 4 * WINDOW and min(lengths) < WINDOW * 3  # beyond the local window, and mixed
    padded, packed = _both_ways(rm, items, both_orders=both_orders, max_batch_tokens=1500)
    assert packed == pytest.approx(padded, abs=TOL)


@pytest.mark.parametrize("truncation,read", [("diff", "mask"), ("ends", "cls")])
def test_packed_equals_padded_truncated(windowed_modernbert: str, truncation: str, read: str) -> None:
    rm = RewardModel.from_pretrained(windowed_modernbert, device="cpu", precision="fp32", max_length=72,
                                     truncation=truncation, read=read)
    items = mixed_items(10, seed=2)
    assert any(rm.encode(*item).truncated for item in items)
    padded, packed = _both_ways(rm, items, batch_size=6)
    assert packed == pytest.approx(padded, abs=TOL)


def test_packed_mask_logits_directly(windowed_modernbert: str) -> None:
    """Each sequence alone, unpadded, through the HF forward: the packed batch gives the same logits."""
    rm = RewardModel.from_pretrained(windowed_modernbert, device="cpu")
    encodings = [rm.encode(*item) for item in mixed_items(6)]
    with torch.no_grad():
        packed = packed_mask_logits(rm.model, pack(encodings))
        for row, e in zip(packed, encodings):
            alone = mask_logits(rm.model, torch.tensor([e.input_ids]), torch.ones(1, len(e.input_ids)),
                                torch.tensor([e.mask_position]))
            assert row.tolist() == pytest.approx(alone[0].tolist(), abs=1e-5)


def test_equal_lengths_take_the_view_route(windowed_modernbert: str, monkeypatch) -> None:
    """A batch whose sequences all have one length (long inputs cut to max_length) needs no gather: the sdpa
    route views the stream as the block, and gives the logits of each sequence run alone."""
    from tinyrm.inference import varlen

    rm = RewardModel.from_pretrained(windowed_modernbert, device="cpu", max_length=96)
    words = " ".join(f"w{i}" for i in range(200))
    encodings = [rm.encode(words + str(k), "a " * (30 + k), "b " * 40) for k in range(3)]
    assert {len(e.input_ids) for e in encodings} == {96} and 96 > 4 * WINDOW
    gathered = []
    original = varlen.Packed.padded_maps
    monkeypatch.setattr(varlen.Packed, "padded_maps", lambda self: gathered.append(1) or original(self))
    with torch.no_grad():
        viewed = packed_mask_logits(rm.model, pack(encodings))
        alone = [mask_logits(rm.model, torch.tensor([e.input_ids]), torch.ones(1, len(e.input_ids)),
                             torch.tensor([e.mask_position]))[0] for e in encodings]
    assert not gathered
    assert viewed.flatten().tolist() == pytest.approx(torch.stack(alone).flatten().tolist(), abs=1e-5)


def _dora_model(path: str) -> tuple[RewardModel, torch.nn.Module]:
    tokenizer, mlm = load_mlm(path)
    peft = randomize_adapters(apply_dora(mlm, BackboneConfig(dora_rank=4, freeze_layers=1)))
    return RewardModel(peft, tokenizer, RewardConfig(base_model=path), device="cpu"), peft


def test_dora_packed_equals_padded(packable_model: str) -> None:
    rm, _ = _dora_model(packable_model)
    rm.engine.config.precision = "fp32"
    padded, packed = _both_ways(rm, mixed_items(8))  # the engine's merged copy
    assert packed == pytest.approx(padded, abs=TOL)


def test_packed_forward_is_differentiable_under_peft(tiny_bert: str) -> None:
    """Unmerged DoRA adapters: same logits and same adapter gradients as the padded forward (for training)."""
    rm, peft = _dora_model(tiny_bert)
    peft.train()
    for module in peft.modules():  # no dropout: the two forwards must see the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    encodings = [rm.encode(*item) for item in mixed_items(5)]
    batch = collate(encodings, rm.tokenizer.pad_token_id or 0)
    answer = torch.tensor(rm.answer_ids)
    grads = []
    for run in ("padded", "packed"):
        peft.zero_grad()
        if run == "padded":
            logits = mask_logits(peft, batch["input_ids"], batch["attention_mask"], batch["mask_positions"],
                                 token_ids=answer, token_type_ids=batch["token_type_ids"])
        else:
            logits = packed_mask_logits(peft, pack(encodings), answer)
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1, 1])).backward()
        grads.append({n: p.grad.clone() for n, p in peft.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("lora_" in n for n in grads[0])
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name


# ----------------------------------------------------------------------------- baselines
def _baseline(kind: str, objective: str, pooling: str, tokenizer_path: str):
    from tinyrm.pairwise.baselines.model import BaselineRewardModel

    scorer, tokenizer = baseline_scorer(tokenizer_path, kind, objective, pooling, window=WINDOW)
    config = RewardConfig(objective=objective, extra={"pooling": pooling})
    return BaselineRewardModel(scorer, tokenizer, config, device="cpu")


@pytest.mark.parametrize("kind,objective,pooling", [
    ("modernbert", "classifier", "cls"), ("modernbert", "classifier", "mean"), ("bert", "classifier", "cls"),
    ("bert", "classifier", "mean"), ("bert", "token", "cls")])
def test_baselines_packed_equal_padded(tiny_bert: str, kind: str, objective: str, pooling: str) -> None:
    rm = _baseline(kind, objective, pooling, tiny_bert)
    assert rm.model.packable
    items = mixed_items(8)
    responses = [(p, r) for p, a, b in items for r in (a, b)]
    rm.attention = "padded"
    padded, padded_rewards = rm.compare_batch(items, batch_size=5), rm.score_batch(responses, batch_size=5)
    apply_attention(rm, "packed")
    assert rm.uses_packed()
    packed, packed_rewards = rm.compare_batch(items, batch_size=5), rm.score_batch(responses, batch_size=5)
    assert packed == pytest.approx(padded, abs=TOL)
    assert packed_rewards == pytest.approx(padded_rewards, abs=TOL)  # the rewards too, not only P near 0.5
    assert len(set(padded_rewards)) > 1


def test_compiled_packed_equals_eager(packable_model: str) -> None:
    """``compile=True``: the layers' regions through torch.compile give the eager packed P (fp32), and
    every layer and batch size shares the region graphs: a static and a dynamic graph per region and layer
    kind (ModernBERT's first layer has no attention norm), and none for new sizes once dynamic (a graph per
    layer or per batch would recompile for minutes on a 28-layer model)."""
    from torch._dynamo.utils import counters

    rm = RewardModel.from_pretrained(packable_model, device="cpu", precision="fp32")
    rm.engine.config.attention = "packed"
    items = mixed_items(12)
    eager = rm.compare_batch(items, max_batch_tokens=1500)
    rm.engine.config.compile = True
    graphs = counters["stats"]["unique_graphs"]
    compiled = rm.compare_batch(items, max_batch_tokens=1500)  # several batches of different token counts
    assert rm.engine.uses_packed()
    made = counters["stats"]["unique_graphs"] - graphs
    assert 2 <= made <= 6
    assert compiled == pytest.approx(eager, abs=1e-5)
    again = rm.compare_batch(items[:5], max_batch_tokens=700)
    assert counters["stats"]["unique_graphs"] - graphs == made  # no recompiles for new sizes
    assert again == pytest.approx(eager[:5], abs=1e-5)


# ----------------------------------------------------------------------------- selection
def test_attention_validates_and_auto_is_packed_on_cpu(tiny_bert: str) -> None:
    with pytest.raises(ValueError, match="attention"):
        InferenceConfig(attention="flash")
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu")
    assert rm.engine.config.attention == "auto" and rm.engine.uses_packed()  # measured faster on the CPU
    assert use_packed("auto", "cpu", True, training=True)  # training too: measured faster (docs/training.md)
    assert not use_packed("auto", "meta", True, training=True)
    assert not use_packed("auto", "meta", True)  # neither varlen_attn nor a measurement there
    rm.engine.config.attention = "padded"
    assert not rm.engine.uses_packed()
    rm.engine.config.attention = "auto"
    assert "attention" not in json.dumps(rm.config.to_dict() if hasattr(rm.config, "to_dict") else vars(rm.config))
    with pytest.raises(ValueError, match="attention"):
        apply_attention(rm, "flash")
    assert apply_attention(rm, None).engine.config.attention == "auto"
    assert apply_attention(rm, "packed").engine.config.attention == "packed" and rm.engine.uses_packed()


def test_unsupported_architecture_scores_padded(caplog) -> None:
    from transformers import AlbertConfig, AlbertForMaskedLM

    model = AlbertForMaskedLM(AlbertConfig(vocab_size=50, hidden_size=16, num_attention_heads=2,
                                           intermediate_size=32, num_hidden_layers=1, embedding_size=8))
    assert packed_family(model) is None
    with caplog.at_level("WARNING"):
        assert not use_packed("packed", "cpu", supported=False, name="albert-test")
    assert "padded" in caplog.text
    assert not use_packed("auto", "cpu", supported=False) and use_packed("packed", "cpu", supported=True)


def _record_attention(monkeypatch) -> list[str]:
    from tinyrm.inference.engine import InferenceEngine

    seen: list[str] = []
    original = InferenceEngine.uses_packed

    def spy(self, prepared=None):
        seen.append(self.config.attention)
        return original(self, prepared)

    monkeypatch.setattr(InferenceEngine, "uses_packed", spy)
    return seen


def test_cli_attention_reaches_the_engine(tiny_bert: str, pairs_file: Path, tmp_path: Path, monkeypatch) -> None:
    from tinyrm.cli import build_parser, main

    seen = _record_attention(monkeypatch)
    outputs = {}
    for attention in ("padded", "packed"):
        out = tmp_path / f"{attention}.json"
        assert main(["eval", "--model", tiny_bert, "--data", str(pairs_file), "--precision", "fp32",
                     "--attention", attention, "--output", str(out)]) == 0
        outputs[attention] = json.loads(out.read_text())
        assert set(seen) == {attention}
        seen.clear()
    assert outputs["packed"]["accuracy"] == outputs["padded"]["accuracy"]

    rank_in = tmp_path / "rank.jsonl"
    rank_in.write_text(json.dumps({"prompt": "2 + 2?", "candidates": ["4", "5", "four"]}) + "\n")
    assert main(["rank", "--model", tiny_bert, "--input", str(rank_in), "--output", str(tmp_path / "r.jsonl"),
                 "--attention", "packed"]) == 0
    assert seen and set(seen) == {"packed"}
    seen.clear()
    assert main(["score", "--model", tiny_bert, "--data", str(pairs_file), "--output", str(tmp_path / "s.jsonl"),
                 "--attention", "packed", "--no-progress"]) == 0
    assert seen and set(seen) == {"packed"}
    with pytest.raises(SystemExit):  # argparse choices
        main(["eval", "--model", tiny_bert, "--data", str(pairs_file), "--attention", "bogus"])
    assert main(["eval", "--baseline", "length", "--data", str(pairs_file), "--attention", "packed"]) == 2
    args = build_parser().parse_args(["serve", "--model", tiny_bert, "--attention", "packed"])
    assert args.attention == "packed"


def test_flash_route_wiring(windowed_modernbert: str, monkeypatch) -> None:
    """The ``varlen_attn`` call (cu_seqlens, max lengths, scale, window_size = (w, w)), checked on CPU against a
    per-sequence reference standing in for the CUDA kernel."""
    import tinyrm.inference.varlen as varlen

    calls: list[dict] = []

    def fake(q, k, v, cu_q, cu_k, max_q, max_k, *, scale, window_size=(-1, -1)):
        calls.append({"cu": cu_q.dtype, "max": (max_q, max_k), "window": window_size})
        out = []
        for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            qs, ks, vs = (x[start:end].transpose(0, 1) for x in (q, k, v))
            pos = torch.arange(end - start)
            left, right = window_size
            allowed = torch.ones(end - start, end - start, dtype=torch.bool)
            if left >= 0:
                allowed &= (pos[:, None] - pos[None, :] <= left) & (pos[None, :] - pos[:, None] <= right)
            out.append(torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=allowed, scale=scale))
        return torch.cat([o.transpose(0, 1) for o in out])

    monkeypatch.setattr(varlen, "_varlen_attn", lambda: fake)
    rm = RewardModel.from_pretrained(windowed_modernbert, device="cpu")
    packed = pack([rm.encode(*item) for item in mixed_items(6)])
    with torch.no_grad():
        reference = packed_mask_logits(rm.model, packed)
        monkeypatch.setattr(varlen, "attention_route", lambda *a: "flash")
        flash = packed_mask_logits(rm.model, packed)
    assert torch.allclose(flash, reference, atol=1e-5)
    assert {c["window"] for c in calls} == {(-1, -1), (WINDOW // 2, WINDOW // 2)}
    assert calls[0]["cu"] == torch.int32 and calls[0]["max"] == (packed.max_seqlen,) * 2
    # The real route: sdpa on CPU and for fp32 (FlashAttention has no fp32 kernel).
    monkeypatch.undo()
    q = torch.zeros(4, 2, 8)
    assert varlen.attention_route(q, None, 0.0) == "sdpa" == varlen.attention_route(q.bfloat16(), 8, 0.0)


def test_auto_keeps_int8_padded(tiny_bert: str) -> None:
    """int8 was validated padded: its dynamic activation scales are taken over the batch tensor."""
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu", precision="int8")
    assert not rm.engine.uses_packed()
    rm.engine.config.attention = "packed"
    assert rm.engine.uses_packed()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_equals_transformers(dtype: torch.dtype) -> None:
    """The packed forward's rotary embedding (fewer kernels, no fp32 copies) computes transformers' own:
    the same bits in bf16, within an fp32 rounding in fp32."""
    from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

    from tinyrm.inference.packed import _rope_tables, _rotary

    torch.manual_seed(0)
    tokens, heads, dim = 300, 4, 16
    q, k, _ = torch.randn(tokens, 3, heads, dim).to(dtype).unbind(1)  # strided views, as from Wqkv
    angles = (torch.arange(tokens) % 37)[:, None].float() * (1e4 ** (-torch.arange(0, dim, 2).float() / dim))
    cos, sin = torch.cat((angles, angles), -1).cos().to(dtype), torch.cat((angles, angles), -1).sin().to(dtype)
    expected = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None])
    got = _rotary(q, k, *_rope_tables(cos, sin))
    for want, have in zip(expected, got):
        want = want[0].transpose(0, 1)
        assert have.dtype == dtype and have.shape == want.shape
        if dtype == torch.bfloat16:
            assert torch.equal(have, want)
        else:
            torch.testing.assert_close(have, want, atol=1e-6, rtol=1e-6)
