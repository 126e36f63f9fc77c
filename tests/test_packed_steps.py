"""Process verdicts through the scoring engine (``InferenceEngine.read_probs``): packed == padded == each
sequence alone through the HF forward, in fp32 (P within 1e-4), for prefix and full contexts (several read
masks per sequence), sequences many times ModernBERT's local window, BERT with token types, an unmerged DoRA
model, a model reading [CLS]; bf16 near-ties re-read in fp32; any batching gives the same verdicts; `tinyrm
eval --objective process` with --precision / --attention. Then packed process training: one step's loss and
gradients (class-weighted, full context, DoRA, [CLS]) and whole runs equal the padded ones."""

from __future__ import annotations

import pytest
import torch

from tinyrm import ProcessRewardModel
from tinyrm.backbone import BackboneConfig, apply_dora, encoder_of, mask_logits, unwrap_peft
from tinyrm.process.scoring import encode_many, spec, verdicts

from .packed_helpers import randomize_adapters
from .process_helpers import BAD, GOOD, PROBLEM
from .test_packed import windowed_modernbert  # noqa: F401 (fixture: local window 16)
from .test_packed_train import _assert_same_step, backbones  # noqa: F401 (fixture: no dropout)

TOL = 1e-4


def _items() -> list[tuple[str, list[str]]]:
    """Solutions from one short step to steps of ~60 tokens: many times the 16-token window, mixed lengths."""
    long = [step + " and so on, carefully" * (6 * k + 2) for k, step in enumerate(GOOD)]
    return [(PROBLEM, GOOD), (PROBLEM, BAD[:1]), ("What is 2 * 5?", long), (PROBLEM + " Explain." * 4, BAD)]


def _encodings(rm, context: str) -> list:
    """What ``score_many`` scores: one sequence per step (prefix) or windows reading every step (full)."""
    return encode_many(rm, _items(), context).encodings


def _alone(rm, encodings) -> list[list[float]]:
    """Each sequence on its own, no padding, through the model as it is (adapters unmerged): the reference."""
    backbone, ids = unwrap_peft(rm.model), spec(rm).answer_ids
    out = []
    with torch.no_grad():
        for e in encodings:
            reads = [0] if rm.config.read == "cls" else e.mask_positions
            types = None if e.token_type_ids is None else torch.tensor([e.token_type_ids])
            logits = mask_logits(backbone, torch.tensor([e.input_ids]), torch.ones(1, len(e.input_ids)),
                                 torch.tensor(reads), token_ids=ids, token_type_ids=types,
                                 mask_rows=torch.zeros(len(reads), dtype=torch.long))
            out.append(torch.softmax(logits.float(), -1)[:, 0].tolist())
    return out


def _both_ways(rm, encodings, **kw) -> tuple[list[list[float]], list[list[float]]]:
    """(padded, packed) verdicts; checks which forward ran (the packed one never calls the HF encoder)."""
    seen: list[int] = []
    handle = encoder_of(rm.engine.prepared().model).register_forward_pre_hook(lambda *_: seen.append(1))
    try:
        rm.engine.config.attention = "padded"
        padded = verdicts(rm, encodings, **kw)
        assert seen and not rm.engine.uses_packed()
        seen.clear()
        rm.engine.config.attention = "packed"
        packed = verdicts(rm, encodings, **kw)
        assert not seen and rm.engine.uses_packed()
    finally:
        handle.remove()
    return padded, packed


def _flat(rows: list[list[float]]) -> list[float]:
    return [p for row in rows for p in row]


@pytest.fixture(params=["modernbert", "bert"])
def step_model(request, windowed_modernbert, spread_bert) -> str:  # noqa: F811
    return windowed_modernbert if request.param == "modernbert" else spread_bert


@pytest.mark.parametrize("context", ["prefix", "full"])
def test_step_verdicts_packed_equal_padded_and_each_alone(step_model: str, context: str) -> None:
    rm = ProcessRewardModel.from_pretrained(step_model, device="cpu", max_length=160)
    rm.engine.config.precision = "fp32"
    batch = encode_many(rm, _items(), context)
    encodings, owners = batch.encodings, batch.owners
    lengths = [len(e.input_ids) for e in encodings]
    assert max(lengths) > 6 * 16 and min(lengths) < 3 * 16  # beyond the local window, and mixed
    if context == "full":
        assert max(len(e.mask_positions) for e in encodings) >= 3  # several reads in one sequence
    padded, packed = _both_ways(rm, encodings, batch_size=3)  # several passes, mixed widths
    alone = _alone(rm, encodings)
    assert [len(r) for r in padded] == [len(r) for r in packed] == [len(e.mask_positions) for e in encodings]
    assert _flat(padded) == pytest.approx(_flat(alone), abs=TOL)
    assert _flat(packed) == pytest.approx(_flat(alone), abs=TOL)
    # the public API: every step's score is its verdict, wherever it was read
    scores = rm.score_many(_items(), context=context)
    assert [len(s) for s in scores] == [len(steps) for _, steps in _items()]
    read = {(owner, t): p for owner, e, row in zip(owners, encodings, alone) for t, p in zip(e.targets, row)}
    assert sorted(read) == [(i, k) for i, (_, steps) in enumerate(_items()) for k in range(len(steps))]
    assert [scores[i][k] for i, k in sorted(read)] == pytest.approx([read[key] for key in sorted(read)], abs=TOL)


def test_step_verdicts_of_an_unmerged_dora_model(windowed_modernbert: str) -> None:  # noqa: F811
    """The engine scores a merged copy; the reference runs the adapters unmerged."""
    rm = ProcessRewardModel.from_pretrained(windowed_modernbert, device="cpu", max_length=160)
    rm.model = randomize_adapters(apply_dora(rm.model, BackboneConfig(dora_rank=4, freeze_layers=1)))
    rm.engine.config.precision = "fp32"
    encodings = _encodings(rm, "full")
    alone = _alone(rm, encodings)
    base = ProcessRewardModel.from_pretrained(windowed_modernbert, device="cpu", max_length=160)
    assert _flat(alone) != pytest.approx(_flat(_alone(base, encodings)), abs=1e-3)  # the adapters matter
    padded, packed = _both_ways(rm, encodings)
    assert _flat(padded) == pytest.approx(_flat(alone), abs=TOL)
    assert _flat(packed) == pytest.approx(_flat(alone), abs=TOL)


def test_step_verdicts_read_at_cls(windowed_modernbert: str) -> None:  # noqa: F811
    rm = ProcessRewardModel.from_pretrained(windowed_modernbert, device="cpu", max_length=160)
    rm.engine.config.precision = "fp32"
    rm.config.read = "cls"
    encodings = _encodings(rm, "prefix")
    padded, packed = _both_ways(rm, encodings)
    alone = _alone(rm, encodings)
    assert _flat(padded) == pytest.approx(_flat(alone), abs=TOL)
    assert _flat(packed) == pytest.approx(_flat(alone), abs=TOL)
    with pytest.raises(ValueError, match="CLS"):  # several reads in one sequence cannot all be [CLS]
        rm.engine.read_probs(_encodings(rm, "full"), spec(rm).answer_ids)


def test_reduced_precision_reads_are_rechecked_in_fp32(windowed_modernbert: str) -> None:  # noqa: F811
    rm = ProcessRewardModel.from_pretrained(windowed_modernbert, device="cpu", max_length=160)
    if rm.engine.dtype == torch.float32:
        pytest.skip("this CPU has no native bf16: scoring runs in fp32 already")
    encodings = _encodings(rm, "full")
    exact_rm = ProcessRewardModel.from_pretrained(windowed_modernbert, device="cpu", max_length=160, precision="fp32")
    assert exact_rm.engine.config.precision == "fp32"
    exact = _flat(verdicts(exact_rm, encodings))
    with pytest.raises(ValueError, match="precision"):
        ProcessRewardModel.from_pretrained(windowed_modernbert, device="cpu", precision="fp16")
    rm.engine.config.precision = "auto"
    rm.engine.config.recheck_margin = 0.0
    reduced = _flat(verdicts(rm, encodings))
    assert reduced != exact and reduced == pytest.approx(exact, abs=2e-2)
    rm.engine.config.recheck_margin = 1.0  # every read is a near-tie: every encoding re-read in fp32
    rechecked = _flat(verdicts(rm, encodings))
    assert rm.engine.rechecked == len(encodings)
    assert rechecked == pytest.approx(exact, abs=1e-6)


@pytest.mark.parametrize("limits", [{"batch_size": 1}, {"max_batch_tokens": 100}, {"batch_size": 64}])
def test_any_batching_gives_the_same_verdicts(windowed_modernbert: str, limits: dict) -> None:  # noqa: F811
    rm = ProcessRewardModel.from_pretrained(windowed_modernbert, device="cpu", max_length=160)
    rm.engine.config.precision = "fp32"
    encodings = _encodings(rm, "prefix")
    reference = _flat(_alone(rm, encodings))
    for attention in ("padded", "packed"):
        rm.engine.config.attention = attention
        assert _flat(rm.engine.read_probs(encodings, spec(rm).answer_ids, **limits)) == pytest.approx(reference,
                                                                                                      abs=TOL)


def test_eval_process_takes_precision_and_attention_and_scores_once(windowed_modernbert: str, tmp_path,  # noqa: F811
                                                                    monkeypatch, capsys) -> None:
    """``tinyrm eval --objective process``: --precision and --attention reach the engine (packed == padded),
    every step is scored once (the solution figures aggregate the same scores), --orders auto is refused."""
    import json

    from tinyrm.cli import main
    from tinyrm.inference.engine import InferenceEngine

    from .process_helpers import rows_file

    calls: list[str] = []
    read_probs = InferenceEngine.read_probs

    def counted(engine, *args, **kwargs):
        calls.append(engine.config.attention)
        assert engine.config.precision == "fp32"
        return read_probs(engine, *args, **kwargs)

    monkeypatch.setattr(InferenceEngine, "read_probs", counted)
    data = rows_file(tmp_path / "steps.jsonl")
    base = ["eval", "--objective", "process", "--model", windowed_modernbert, "--data", str(data),
            "--precision", "fp32", "--aggregate", "mean"]
    results = {}
    for attention in ("padded", "packed"):
        out = tmp_path / f"{attention}.json"
        assert main([*base, "--attention", attention, "--output", str(out)]) == 0
        results[attention] = json.loads(out.read_text())
    assert calls == ["padded", "packed"]  # one scoring of the steps per evaluation
    for level in ("steps", "solutions"):
        padded, packed = (results[a][level]["calibration"] for a in ("padded", "packed"))
        assert packed["brier"] == pytest.approx(padded["brier"], abs=TOL)
        assert packed["log_loss"] == pytest.approx(padded["log_loss"], abs=TOL)
    capsys.readouterr()
    assert main([*base, "--orders", "auto"]) == 2
    assert "--orders auto" in capsys.readouterr().err


def test_eval_process_of_an_outcome_model_reads_its_verdict_once(windowed_modernbert: str, tmp_path,  # noqa: F811
                                                                   monkeypatch) -> None:
    """An outcome model evaluated step by step: its solution figures are the last step's verdicts (the sequence
    ``outcome_scores`` reads), equal to ``--objective outcome``'s, from the one scoring of the steps."""
    import json

    from tinyrm.cli import main
    from tinyrm.inference.engine import InferenceEngine
    from tinyrm.train import TrainConfig, train

    from .process_helpers import rows_file

    reads: list[int] = []
    read_probs = InferenceEngine.read_probs
    monkeypatch.setattr(InferenceEngine, "read_probs", lambda engine, encodings, *a, **k: reads.append(
        len(encodings)) or read_probs(engine, encodings, *a, **k))
    data, model = rows_file(tmp_path / "steps.jsonl"), tmp_path / "orm"
    train(TrainConfig(model=windowed_modernbert, data=[str(data)], output=str(model), objective="outcome",
                      batch_size=4, micro_batch_size=4, max_steps=1, max_length=128, save_steps=0))
    results = {}
    for objective in ("process", "outcome"):
        out = tmp_path / f"{objective}.json"
        assert main(["eval", "--objective", objective, "--model", str(model), "--data", str(data),
                     "--precision", "fp32", "--output", str(out)]) == 0
        results[objective] = json.loads(out.read_text())["solutions"]
    assert results["process"]["n"] == results["outcome"]["n"] == 5
    assert len(reads) == 2  # one engine read per evaluation: the steps (process), the solutions (outcome)
    for key in ("brier", "log_loss"):
        assert results["process"]["calibration"][key] == pytest.approx(results["outcome"]["calibration"][key], abs=TOL)


# ----------------------------------------------------------------------------- packed process training
def _step_scorer(path: str, mode: str, weights, read: str = "mask"):
    from tinyrm.backbone import load_mlm, prepare_for_training
    from tinyrm.pairwise.model import ClozeScorer
    from tinyrm.process.prompt import ANSWER_TOKENS
    from tinyrm.process.train import WeightedClozeScorer
    from tinyrm.prompt import resolve_answer_ids

    tokenizer, mlm = load_mlm(path)
    model = prepare_for_training(mlm, BackboneConfig(dora_rank=4 if mode == "dora" else 0,
                                                     freeze_layers=1 if mode == "dora" else 0))
    if mode == "dora":
        randomize_adapters(model)
    answers = resolve_answer_ids(tokenizer, ANSWER_TOKENS)
    scorer = (ClozeScorer(model, answers, read=read) if weights is None
              else WeightedClozeScorer(model, answers, weights, read=read))
    return scorer.train(), tokenizer


def _step_features(tokenizer, context: str) -> list[dict]:
    """ProcessDataset's items for ``_items()``, labels alternating (index 0 = correct)."""
    from tinyrm.process.prompt import PREFIXES, STEP_TEMPLATES, StepEncoder

    encoder = StepEncoder(tokenizer, STEP_TEMPLATES["process"], PREFIXES["process"], 160)
    return [{"input_ids": e.input_ids, "encoding": e, "labels": [t % 2 for t in e.targets]}
            for problem, steps in _items() for e in encoder.encode_solution(*encoder.tokenize(problem, steps), context)]


@pytest.mark.parametrize("kind", ["modernbert", "bert"])
@pytest.mark.parametrize("context,mode,weights,read", [
    ("prefix", "full", [1.0, 3.0], "mask"), ("full", "full", [1.0, 3.0], "mask"), ("full", "dora", None, "mask"),
    ("prefix", "full", None, "cls")])
def test_process_step_packed_equals_padded(backbones, kind: str, context: str, mode: str, weights,  # noqa: F811
                                           read: str) -> None:
    """One training step of the process objective: the loss and every trainable gradient of the packed batch
    (``ProcessCollator(packed=True)``: every read mask in one stream) equal the padded batch's."""
    from tinyrm.process.train import ProcessCollator

    scorer, tokenizer = _step_scorer(backbones[kind], mode, weights, read)
    features = _step_features(tokenizer, context)
    if context == "full":
        assert max(len(f["labels"]) for f in features) >= 3
    collate = lambda features, packed: ProcessCollator(tokenizer.pad_token_id or 0, packed=packed)(features)  # noqa: E731
    _assert_same_step(scorer, collate, features)


@pytest.mark.parametrize("context", ["prefix", "full"])
def test_train_process_packed_equals_padded(backbones, tmp_path, capsys, context: str) -> None:  # noqa: F811
    import json

    from safetensors.torch import load_file

    from tinyrm.train import TrainConfig, train

    from .process_helpers import rows_file

    data = rows_file(tmp_path / "steps.jsonl")
    losses, weights = {}, {}
    for attention in ("padded", "packed"):
        out = tmp_path / attention
        train(TrainConfig(model=backbones["modernbert"], data=[str(data)], output=str(out), objective="process",
                          context=context, batch_size=4, micro_batch_size=4, max_steps=3, max_length=96,
                          save_steps=0, lr=1e-3, precision="fp32", seed=7, attention=attention))
        assert f"attention: {attention}" in capsys.readouterr().out
        losses[attention] = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                             if "loss" in r]
        weights[attention] = load_file(str(out / "model.safetensors"))
    assert len(losses["packed"]) == 3 and losses["packed"] == pytest.approx(losses["padded"], abs=1e-5)
    for key in weights["padded"]:
        torch.testing.assert_close(weights["packed"][key], weights["padded"][key], atol=2e-5, rtol=1e-4, msg=key)
