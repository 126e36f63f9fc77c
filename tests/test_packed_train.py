"""Packed training equals padded training on CPU, in fp32 (issue 26, part 2).

One step: the loss and every trainable parameter's gradient of the packed batch (``ClozeCollator(packed=True)``
/ ``PairCollator(packed=True)``: one token stream, no padding) equal the padded batch's, for full fine-tuning,
DoRA and frozen lower layers (frozen parameters get no gradient either way), on a 3-layer ModernBERT whose
local window (16) is far shorter than the sequences and on BERT; the same with the backbone's gradient
checkpointing on, and under bf16 autocast (loosely). Then whole ``tinyrm.train.train`` runs with
``attention="packed"`` end on the padded run's weights, and the option's resolution, CLI flag and record.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tinyrm.backbone import BackboneConfig, load_mlm, prepare_for_training
from tinyrm.inference.varlen import varlen_backward_available
from tinyrm.pairwise.data import ClozeCollator
from tinyrm.pairwise.model import ClozeScorer
from tinyrm.prompt import ClozeEncoder, get_template, resolve_answer_ids
from tinyrm.tools.synthetic import generate, write_jsonl
from tinyrm.train import TrainConfig, train

from .packed_helpers import baseline_scorer, mixed_items, randomize_adapters

WINDOW = 16  # the ModernBERT's local_attention: |i - j| <= 8 in its local layers
GRAD_TOL = 1e-5


def _save(directory: Path, kind: str, seed: int = 1) -> str:
    """A 3-layer masked LM with no dropout (the packed and padded steps must compute the same function)."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

    from tinyrm.backbone import default_model_path

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    common = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=2, max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id)
    if kind == "modernbert":  # global, local, local; dropout is 0 by default
        model = ModernBertForMaskedLM(ModernBertConfig(
            **common, local_attention=WINDOW, global_attn_every_n_layers=3, bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id, cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id))
    else:  # BERT's defaults are 0.1: off here
        model = BertForMaskedLM(BertConfig(**common, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, str]:
    return {kind: _save(tmp_path_factory.mktemp(f"packed-train-{kind}"), kind) for kind in ("modernbert", "bert")}


def _no_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _cloze_scorer(path: str, mode: str, read: str = "mask", loss: str = "pair"):
    tokenizer, mlm = load_mlm(path)
    config = BackboneConfig(dora_rank=4 if mode == "dora" else 0, freeze_layers=1 if mode in ("frozen", "dora") else 0)
    model = prepare_for_training(mlm, config)
    if mode == "dora":
        randomize_adapters(model)
    scorer = ClozeScorer(model, resolve_answer_ids(tokenizer, ("0", "1")), loss=loss, read=read)
    _no_dropout(scorer)
    return scorer.train(), tokenizer


def _cloze_features(tokenizer, items, max_length: int = 512) -> list[dict]:
    encoder = ClozeEncoder(tokenizer, get_template("flan"), max_length=max_length)
    features = []
    for prompt, a, b in items:
        for label, (x, y) in enumerate(((a, b), (b, a))):  # both orders, as ClozeDataset
            features.append({"encoding": encoder.encode(prompt, x, y), "labels": label})
    return features


def _step(scorer: torch.nn.Module, batch: dict) -> tuple[float, dict[str, torch.Tensor | None]]:
    scorer.zero_grad(set_to_none=True)
    out = scorer(**batch)
    out["loss"].backward()
    return out["loss"].item(), {n: None if p.grad is None else p.grad.clone() for n, p in scorer.named_parameters()}


def _assert_same_step(scorer, collate, features, atol: float = GRAD_TOL) -> dict[str, torch.Tensor | None]:
    padded_loss, padded = _step(scorer, collate(features, False))
    packed_loss, packed = _step(scorer, collate(features, True))
    assert packed_loss == pytest.approx(padded_loss, abs=1e-6)
    trainable = {n for n, p in scorer.named_parameters() if p.requires_grad}
    assert {n for n, g in padded.items() if g is not None} == trainable  # frozen: no grad; trainable: a grad
    assert {n for n, g in packed.items() if g is not None} == trainable
    for name in trainable:
        torch.testing.assert_close(packed[name], padded[name], atol=atol, rtol=1e-4, msg=name)
    assert any(padded[n].abs().sum() > 0 for n in trainable)
    return packed


def _cloze_collate(tokenizer):
    return lambda features, packed: ClozeCollator(tokenizer.pad_token_id or 0, packed=packed)(features)


# ----------------------------------------------------------------------------- one step
@pytest.mark.parametrize("kind", ["modernbert", "bert"])
@pytest.mark.parametrize("mode", ["full", "frozen", "dora"])
def test_cloze_step_packed_equals_padded(backbones, kind: str, mode: str) -> None:
    scorer, tokenizer = _cloze_scorer(backbones[kind], mode)
    features = _cloze_features(tokenizer, mixed_items(8))
    lengths = [len(f["encoding"].input_ids) for f in features]
    assert max(lengths) > 6 * WINDOW and min(lengths) < 3 * WINDOW
    grads = _assert_same_step(scorer, _cloze_collate(tokenizer), features)
    names = [n for n, g in grads.items() if g is not None]
    if mode == "dora":
        assert all("lora_" in n or "modules_to_save" in n for n in names) and names
    if mode in ("frozen", "dora"):  # embeddings and layer 0 frozen: not among the trained
        assert not any("embeddings" in n or ".layers.0." in n or ".layer.0." in n for n in names)


@pytest.mark.parametrize("read,loss", [("cls", "pair"), ("mask", "full-vocab")])
def test_cloze_step_reads_and_losses(backbones, read: str, loss: str) -> None:
    scorer, tokenizer = _cloze_scorer(backbones["modernbert"], "full", read=read, loss=loss)
    _assert_same_step(scorer, _cloze_collate(tokenizer), _cloze_features(tokenizer, mixed_items(5, seed=7)))


def test_packed_batch_layout(backbones) -> None:
    _, tokenizer = _cloze_scorer(backbones["bert"], "full")
    features = _cloze_features(tokenizer, mixed_items(3))
    batch = ClozeCollator(0, packed=True)(features)
    lengths = [len(f["encoding"].input_ids) for f in features]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    assert batch["input_ids"].shape == (sum(lengths),) and batch["seq_lengths"] == lengths
    assert batch["cu_seqlens"].dtype == torch.int32 and batch["cu_seqlens"].tolist() == [*starts, sum(lengths)]
    assert batch["position_ids"].tolist() == [i for n in lengths for i in range(n)]
    assert batch["mask_positions"].tolist() == [s + f["encoding"].mask_position for s, f in zip(starts, features)]
    assert batch["labels"].tolist() == [0, 1] * 3 and batch["max_seqlen"] == max(lengths)
    assert "attention_mask" not in batch and "token_type_ids" in batch  # BERT: token types, packed too


def test_gradient_checkpointing_runs_per_layer_packed(backbones) -> None:
    scorer, tokenizer = _cloze_scorer(backbones["modernbert"], "frozen")
    mlm = scorer.mlm
    if hasattr(mlm, "activation_checkpointing_enable"):  # transformers 5.24 (the lock); the old name warns there
        mlm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # e.g. the device image's transformers 5.17
        mlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    calls: list[int] = []
    for layer in mlm.model.layers:
        original = layer._gradient_checkpointing_func

        def spy(*args, _original=original, **kwargs):
            calls.append(1)
            return _original(*args, **kwargs)

        layer._gradient_checkpointing_func = spy
    features = _cloze_features(tokenizer, mixed_items(4))
    _, packed = _step(scorer, _cloze_collate(tokenizer)(features, True))
    assert len(calls) == 3  # every layer of the packed forward went through it, as in the HF forward
    _assert_same_step(scorer, _cloze_collate(tokenizer), features)


def test_bf16_autocast_step(backbones) -> None:
    """Under bf16 autocast (the Trainer's bf16 path) the packed step runs and stays near the padded one."""
    scorer, tokenizer = _cloze_scorer(backbones["modernbert"], "dora")
    features = _cloze_features(tokenizer, mixed_items(4))
    collate = _cloze_collate(tokenizer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded_loss, padded = _step(scorer, collate(features, False))
        packed_loss, packed = _step(scorer, collate(features, True))
    assert packed_loss == pytest.approx(padded_loss, abs=2e-2)
    for name, grad in padded.items():
        if grad is not None:
            assert torch.isfinite(packed[name]).all(), name
            assert torch.allclose(packed[name], grad, atol=5e-2, rtol=1e-1), name


# ----------------------------------------------------------------------------- baselines
def _baseline_scorer(tokenizer_path: str, kind: str, objective: str, pooling: str):
    scorer, tokenizer = baseline_scorer(tokenizer_path, kind, objective, pooling, window=WINDOW, freeze_layers=1)
    _no_dropout(scorer)
    return scorer.train(), tokenizer


@pytest.mark.parametrize("kind,objective,pooling", [
    ("modernbert", "classifier", "mean"), ("modernbert", "classifier", "cls"), ("bert", "classifier", "cls"),
    ("bert", "token", "cls")])
def test_baseline_step_packed_equals_padded(backbones, kind: str, objective: str, pooling: str) -> None:
    from tinyrm.pairwise.baselines.encoding import ResponseEncoder
    from tinyrm.pairwise.baselines.train import PairCollator

    scorer, tokenizer = _baseline_scorer(backbones["bert"], kind, objective, pooling)
    assert scorer.packable
    encoder = ResponseEncoder(tokenizer, 512)
    features = [{"chosen": encoder.encode(p, a), "rejected": encoder.encode(p, b), "labels": 0}
                for p, a, b in mixed_items(6)]
    _assert_same_step(scorer, lambda f, packed: PairCollator(tokenizer.pad_token_id or 0, packed=packed)(f),
                      features)


# ----------------------------------------------------------------------------- whole runs
@pytest.fixture(scope="module")
def mixed_pairs(tmp_path_factory) -> Path:
    """24 pairs of very mixed length (up to ~10x the local window); the longer response alternates
    between chosen and rejected, so --length-balance keeps them."""
    pairs = []
    for k, pair in enumerate(generate(24, seed=3)):
        pad = " with some more words" * (k % 7)
        chosen, rejected = (pair.chosen + pad, pair.rejected) if k % 2 else (pair.chosen, pair.rejected + pad)
        pairs.append(replace(pair, prompt=pair.prompt + pad, chosen=chosen, rejected=rejected))
    return write_jsonl(pairs, tmp_path_factory.mktemp("packed-train-data") / "pairs.jsonl")


def _run(model: str, data: Path, out: Path, attention: str, **kw):
    config = TrainConfig(model=model, data=[str(data)], output=str(out), batch_size=8, micro_batch_size=4,
                         max_steps=3, max_length=160, save_steps=0, lr=1e-3, precision="fp32", seed=7,
                         attention=attention, **kw)
    result = train(config)
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    return result, losses


def _weights(out: Path) -> dict[str, torch.Tensor]:
    files = [out / "model.safetensors", out / "adapter" / "adapter_model.safetensors"]
    return {f"{path.relative_to(out)}:{key}": value for path in files if path.is_file()
            for key, value in load_file(str(path)).items()}


@pytest.mark.parametrize("kind,kw", [("modernbert", {}), ("bert", {"dora_rank": 4, "freeze_layers": 1}),
                                     ("bert", {"objective": "classifier", "pooling": "mean"})])
def test_train_packed_equals_padded(backbones, mixed_pairs, tmp_path, capsys, kind: str, kw: dict) -> None:
    runs = {}
    for attention in ("padded", "packed"):
        runs[attention] = _run(backbones[kind], mixed_pairs, tmp_path / attention, attention, **kw)
        assert f"attention: {attention}" in capsys.readouterr().out
    (_, padded_losses), (result, packed_losses) = runs["padded"], runs["packed"]
    assert result.steps == 3 and len(packed_losses) == 3
    assert packed_losses == pytest.approx(padded_losses, abs=1e-5)
    padded, packed = _weights(tmp_path / "padded"), _weights(tmp_path / "packed")
    assert padded.keys() == packed.keys() and padded
    # Bradley-Terry sees only r(chosen) - r(rejected): a shift of every final state cancels, so the last
    # LayerNorm's bias has a true gradient of 0, and AdamW turns either run's float noise (~1e-9) into steps of
    # up to ~lr / 10. That one tensor is compared within what 3 such steps can move it.
    noise = {key for key in padded if kw.get("objective") == "classifier" and key.endswith("2.output.LayerNorm.bias")}
    for key in padded:
        atol = 3 * 1e-3 if key in noise else 2e-5
        torch.testing.assert_close(packed[key], padded[key], atol=atol, rtol=1e-4, msg=key)
    saved = json.loads((tmp_path / "packed" / "tinyrm.json").read_text())
    assert "attention" not in saved["extra"]["train"]  # a runtime choice, not a model property


# ----------------------------------------------------------------------------- selection
def test_attention_resolution(capsys) -> None:
    from tinyrm.training.packing import packed_training

    cpu = TrainConfig(attention="auto")
    assert packed_training(cpu, "cpu", True)  # measured faster on the CPU: the exact SDPA route
    assert "attention: packed (no padding in the linear layers; attention by the exact SDPA route" in \
        capsys.readouterr().out
    assert not packed_training(cpu, "meta", True)  # neither varlen_attn nor a measurement there
    assert "attention: padded (auto: packed on the CPU" in capsys.readouterr().out
    assert not packed_training(cpu, "cpu", False, name="unpackable-auto-test")
    assert "attention: padded (no packed forward for this model)" in capsys.readouterr().out
    assert packed_training(replace(cpu, attention="packed"), "cpu", True)
    assert "attention: packed" in capsys.readouterr().out
    assert not packed_training(replace(cpu, attention="packed"), "cpu", False, name="unpackable-test")
    assert "no packed forward" in capsys.readouterr().out
    assert not packed_training(replace(cpu, attention="padded"), "cpu", True)
    with pytest.raises(ValueError, match="attention"):
        packed_training(replace(cpu, attention="flash"), "cpu", True)
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        assert not varlen_backward_available()
    else:  # this lock's torch (2.13) registers varlen_attn's backward
        assert varlen_backward_available()


def test_cli_attention_flag() -> None:
    from tinyrm.cli import build_parser
    from tinyrm.cli.core import train_config_from_args

    args = build_parser().parse_args(["train", "--data", "x.jsonl", "--output", "o", "--attention", "packed"])
    assert train_config_from_args(args).attention == "packed"
    args = build_parser().parse_args(["train", "--data", "x.jsonl", "--output", "o"])
    assert train_config_from_args(args).attention == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "x.jsonl", "--output", "o", "--attention", "flash"])


# ----------------------------------------------------------------------------- on a GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="varlen_attn runs on CUDA only")
@pytest.mark.parametrize("mode", ["full", "dora"])
def test_cuda_varlen_backward_matches_sdpa(backbones, monkeypatch, mode: str) -> None:
    """On the device: the packed step through varlen_attn's forward and backward (global and windowed
    layers, bf16 autocast) against the same packed step through the exact SDPA route, and the padded step."""
    import tinyrm.inference.varlen as varlen

    if not (varlen.flash_varlen_available("cuda") and varlen_backward_available()):
        pytest.skip("this torch's varlen_attn has no backward: training runs padded under auto")
    scorer, tokenizer = _cloze_scorer(backbones["modernbert"], mode)
    scorer.cuda()
    features = _cloze_features(tokenizer, mixed_items(8))
    collate = _cloze_collate(tokenizer)
    routes: list[str] = []
    chooser = varlen.attention_route

    def spy(*args, **kwargs):
        routes.append(chooser(*args, **kwargs))
        return routes[-1]

    def run(packed: bool, route: str | None = None):
        monkeypatch.setattr(varlen, "attention_route", (lambda *a, **k: route) if route else spy)
        batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in collate(features, packed).items()}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return _step(scorer, batch)

    flash_loss, flash = run(True)
    windowed = varlen.varlen_window_supported()
    assert "flash" in routes and (windowed or "sdpa" in routes)  # local layers: sdpa where no window_size
    sdpa_loss, sdpa = run(True, "sdpa")
    padded_loss, _ = run(False)
    assert flash_loss == pytest.approx(sdpa_loss, abs=2e-2) and flash_loss == pytest.approx(padded_loss, abs=2e-2)
    for name, grad in sdpa.items():
        if grad is None:
            assert flash[name] is None, name
            continue
        error = (flash[name].float() - grad.float()).norm() / grad.float().norm().clamp(min=1e-6)
        assert error < 5e-2, (name, float(error))
