"""Classifier / token baselines (train, save, load, compare) and the length / random heuristics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import tinyrm
from tinyrm import RewardModel
from tinyrm.cli import main
from tinyrm.data import PreferencePair
from tinyrm.evaluation.heuristics import HeuristicScorer, heuristic_results, length_probs, random_probs
from tinyrm.pairwise.baselines import train as baseline_train
from tinyrm.pairwise.baselines.encoding import ResponseEncoder, pad_responses
from tinyrm.pairwise.baselines.model import BaselineRewardModel
from tinyrm.pairwise.baselines.token import BaselineScorer
from tinyrm.tools.synthetic import write_jsonl
from tinyrm.train import TrainConfig, train

from .packed_helpers import baseline_scorer, randomize_adapters

OBJECTIVES = [("classifier", "cls"), ("classifier", "mean"), ("token", "cls")]


def _train(model: str, data, out, objective: str, pooling: str = "cls", **kw):
    options = dict(batch_size=8, micro_batch_size=4, max_steps=2, max_length=96, save_steps=0)
    options.update(kw)
    return train(TrainConfig(model=model, data=[str(data)], output=str(out), objective=objective, pooling=pooling,
                             **options))


def _model_type(model: str) -> str:
    return json.loads((Path(model) / "config.json").read_text())["model_type"]


def _native(model: str, objective: str, pooling: str) -> bool:
    """Where the classifier is a standard AutoModelForSequenceClassification checkpoint."""
    return objective == "classifier" and (pooling == "cls" or _model_type(model) == "modernbert")


@pytest.mark.parametrize("objective,pooling", OBJECTIVES)
def test_train_save_load_compare(tiny_model, pairs_file, tmp_path, objective, pooling):
    out = tmp_path / "rm"
    result = _train(tiny_model, pairs_file, out, objective, pooling)
    assert result.steps == 2 and result.pairs == 16  # one example = one pair here
    saved = json.loads((out / "tinyrm.json").read_text())
    assert saved["objective"] == objective and saved["extra"]["pooling"] == pooling
    native = _native(tiny_model, objective, pooling)
    assert saved["extra"]["format"] == ("sequence-classification" if native else "tinyrm-head")
    assert (out / "head.safetensors").is_file() != native and (out / "metrics.jsonl").is_file()
    assert (out / "README.md").is_file()

    rm = RewardModel.from_pretrained(str(out), device="cpu")
    assert isinstance(rm, BaselineRewardModel) and rm.objective == objective
    prompt, a, b = "What is 2 + 2?", "It is 4.", "It is five, I think."
    p = rm.compare(prompt, a, b)
    assert 0.0 < p < 1.0
    # Each response is scored on its own, so swapping the two gives exactly the complement.
    assert rm.compare(prompt, b, a) == pytest.approx(1.0 - p, abs=1e-9)
    assert p == pytest.approx(1 / (1 + math.exp(-(rm.score(prompt, a) - rm.score(prompt, b)))), abs=1e-6)
    # Batched scoring (padding, length sorting, de-duplication) agrees with one-by-one scoring.
    items = [(prompt, a, b), ("Name a colour.", "Blue.", "I refuse to answer that question at all."), (prompt, b, a)]
    batched = rm.compare_batch(items, batch_size=2)
    assert batched == pytest.approx([rm.compare(*item) for item in items], abs=1e-5)
    assert rm.compare_batch(items, batch_size=None, max_batch_tokens=40) == pytest.approx(batched, abs=1e-5)
    ranking = rm.rank(prompt, [a, b, "4"])
    assert sorted(i for i, _ in ranking) == [0, 1, 2] and ranking[0][1] >= ranking[-1][1]

    # Saving the loaded model again gives a folder that scores identically.
    rm.save_pretrained(tmp_path / "again")
    assert RewardModel.from_pretrained(str(tmp_path / "again"), device="cpu").compare(prompt, a, b) == pytest.approx(p)


def _polite_pairs(topics: list[str], rude_wins: bool = False) -> list[PreferencePair]:
    """An easy rule a 2-layer random encoder can pick up in a few steps (courtesy vs rudeness)."""
    pairs = []
    for t in topics:
        polite, rude = f"Happy to help with {t}, thank you for asking.", f"{t}? Not my problem, go away."
        chosen, rejected = (rude, polite) if rude_wins else (polite, rude)
        pairs.append(PreferencePair(prompt=f"Can you help me with {t}?", chosen=chosen, rejected=rejected))
    return pairs


@pytest.mark.parametrize("rude_wins", [False, True], ids=["polite-wins", "rude-wins"])
@pytest.mark.parametrize("objective,pooling", [("classifier", "mean"), ("token", "cls")])
def test_objective_learns_an_easy_rule(tiny_bert, tmp_path, objective, pooling, rude_wins):
    """Ten steps must rank held-out pairs well above chance. Both directions of the rule are
    trained, so an untrained model's accidental preference cannot pass both."""
    from tinyrm.evaluation.evaluate import evaluate_pairs

    words = ["taxes", "cooking", "gardening", "python", "chess", "music", "travel", "history", "physics", "poetry",
             "running", "painting", "sailing", "baking", "knitting", "algebra", "biology", "finance", "movies", "maps"]
    data = write_jsonl(_polite_pairs(words[:14], rude_wins), tmp_path / "train.jsonl")
    _train(tiny_bert, data, tmp_path / "rm", objective, pooling, max_steps=10, lr=3e-3, batch_size=8,
           micro_batch_size=8, warmup_ratio=0.0, max_length=48,
           length_balance=False)  # the polite answer is always the longer: balancing would leave no pair
    rm = RewardModel.from_pretrained(str(tmp_path / "rm"), device="cpu")
    assert evaluate_pairs(rm, _polite_pairs(words[14:], rude_wins))["accuracy"] >= 5 / 6


def test_dora_baseline_roundtrip(tiny_modernbert, pairs_file, tmp_path, monkeypatch):
    """A DoRA classifier is saved merged: a plain checkpoint, no adapter folder, the trained scorer's scores."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    trained, fit = [], baseline_train.fit  # the scorer, adapters randomised (peft's zero ones hide a dropped merge)
    monkeypatch.setattr(baseline_train, "fit", lambda scorer, *args, **kwargs: fit(
        trained.append(randomize_adapters(scorer.backbone)) or scorer, *args, **kwargs))
    out = tmp_path / "rm"
    result = _train(tiny_modernbert, pairs_file, out, "classifier", dora_rank=2, max_steps=1)
    assert result.trainable_parameters < result.total_parameters / 2
    assert not (out / "adapter").exists() and json.loads((out / "tinyrm.json").read_text())["adapter"] is None
    rm = RewardModel.from_pretrained(str(out), device="cpu")
    assert 0.0 < rm.compare("q", "a", "b") < 1.0
    tokenizer, model = AutoTokenizer.from_pretrained(out), AutoModelForSequenceClassification.from_pretrained(out)
    inputs, live = tokenizer("q", "a", return_tensors="pt"), trained[0].eval()
    with torch.no_grad():
        logit, score = model.eval()(**inputs).logits[0, 0].item(), live(**inputs).logits[0, 0].item()
        with live.disable_adapter():
            assert abs(score - live(**inputs).logits[0, 0].item()) > 1e-3  # the adapters matter (100x the tolerance)
    assert logit == pytest.approx(rm.score("q", "a"), abs=1e-5) and logit == pytest.approx(score, abs=1e-5)


def test_dora_classifier_trains_its_head_in_full(tiny_bert, pairs_file, tmp_path):
    """Under DoRA the classification head and BERT's (fresh) pooler are trained in full, not frozen."""
    from tinyrm.defaults import resolve_defaults

    config = resolve_defaults(TrainConfig(model=tiny_bert, data=[str(pairs_file)], output=str(tmp_path / "x"),
                                          objective="classifier", pooling="cls", dora_rank=2, max_length=64),
                              announce=False)
    scorer, _, _ = baseline_train.build_scorer(config)
    full = {n for n, p in scorer.named_parameters() if p.requires_grad and "lora_" not in n}
    assert any(".classifier." in n for n in full) and any(".pooler." in n for n in full)
    assert not any(".layer." in n for n in full)  # the encoder itself: adapters only


# ----------------------------------------------------------------------------------------- HF-native classifier
ITEMS = [("What is 2 + 2?", "It is 4."), ("Name a colour.", "Blue, I think, or maybe a deep green."),
         ("Say hi.", "Hello there!")]


@pytest.mark.parametrize("kind,pooling", [("bert", "cls"), ("modernbert", "cls"), ("modernbert", "mean")])
def test_classifier_is_a_standard_sequence_classification_checkpoint(request, pairs_file, tmp_path, kind, pooling):
    """transformers alone loads the folder (model, pipeline, RewardBench's chat-template strings) and gives
    tinyrm's scores to 1e-5."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model_path = request.getfixturevalue(f"tiny_{kind}")
    out = tmp_path / "rm"
    _train(model_path, pairs_file, out, "classifier", pooling, precision="fp32")
    assert not (out / "head.safetensors").exists()
    config = AutoConfig.from_pretrained(out)
    assert config.architectures[0].endswith("ForSequenceClassification") and config.num_labels == 1
    assert config.id2label == {0: "reward"} and config.problem_type == "regression"
    if kind == "modernbert":
        assert config.classifier_pooling == pooling

    rm = RewardModel.from_pretrained(str(out), device="cpu")
    ours = rm.score_batch(ITEMS)
    assert len(set(ours)) == len(ours)  # distinct scores: the comparison below means something

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        one_by_one = [model(**tokenizer(p, r, return_tensors="pt")).logits[0, 0].item() for p, r in ITEMS]
        batch = tokenizer([p for p, _ in ITEMS], [r for _, r in ITEMS], padding=True, return_tensors="pt")
        batched = model(**batch).logits[:, 0].tolist()
    assert one_by_one == pytest.approx(ours, abs=1e-5) and batched == pytest.approx(ours, abs=1e-5)

    scorer = pipeline("text-classification", model=str(out), device="cpu")
    piped = scorer([{"text": p, "text_pair": r} for p, r in ITEMS])
    assert [row["label"] for row in piped] == ["reward"] * 3  # raw logit by default (regression)
    assert [row["score"] for row in piped] == pytest.approx(ours, abs=1e-5)
    # RewardBench's run_rm.py: the chat template's string, no token type ids, raw logits, batched + padded.
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                           tokenize=False) for p, r in ITEMS]
    assert chats[0] == "What is 2 + 2?[SEP]It is 4."
    bench = scorer(chats, batch_size=2, truncation=True, padding=True, max_length=96, function_to_apply="none",
                   return_token_type_ids=False)
    assert [row["score"] for row in bench] == pytest.approx(ours, abs=1e-5)
    # The other way round: a one-label classifier saved by transformers alone (no tinyrm.json, as TRL's
    # RewardTrainer writes one) loads as that reward model, not as a masked LM with a random head.
    plain = tmp_path / "plain"
    model.save_pretrained(plain)
    tokenizer.save_pretrained(plain)
    for loaded in (tinyrm.load(str(plain), device="cpu"), RewardModel.from_pretrained(str(plain), device="cpu")):
        assert isinstance(loaded, BaselineRewardModel) and loaded.score_batch(ITEMS) == pytest.approx(ours, abs=1e-5)

    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "pipeline_tag: text-classification" in card
    assert "AutoModelForSequenceClassification.from_pretrained" in card and '"text_pair"' in card
    assert f"- pooling: `{pooling}`" in card and str(pairs_file) in card and "2 steps" in card


def test_bert_mean_classifier_keeps_the_tinyrm_head_format(tiny_bert, pairs_file, tmp_path, caplog):
    """BERT has no mean-pooling head in transformers: the folder keeps head.safetensors (and says so);
    folders saved before the format key existed still load."""
    out = tmp_path / "rm"
    with caplog.at_level("WARNING", logger="tinyrm.pairwise.baselines"):
        _train(tiny_bert, pairs_file, out, "classifier", "mean")
    assert "tinyrm's head format" in caplog.text and "--pooling cls" in caplog.text
    assert (out / "head.safetensors").is_file()
    assert "head.safetensors" in (out / "README.md").read_text()
    score = RewardModel.from_pretrained(str(out), device="cpu").score("q", "a")
    saved = json.loads((out / "tinyrm.json").read_text())
    del saved["extra"]["format"]  # an older folder
    (out / "tinyrm.json").write_text(json.dumps(saved))
    assert RewardModel.from_pretrained(str(out), device="cpu").score("q", "a") == pytest.approx(score, abs=1e-6)


def test_losses_match_their_definitions(tiny_bert):
    from tinyrm.backbone import load_mlm

    tokenizer, mlm = load_mlm(tiny_bert)
    encoder = ResponseEncoder(tokenizer, max_length=64)
    rows = [encoder.encode("Say hi.", "Hello there, friend."), encoder.encode("Say hi.", "No.")]
    batch = pad_responses(rows, tokenizer.pad_token_id)
    labels = torch.zeros(1, dtype=torch.long)

    clf = BaselineScorer(mlm, "classifier", "cls").eval()
    out = clf(**batch, labels=labels)
    r = clf.rewards(**batch)
    assert out["logits"].shape == (1, 2) and out["logits"][0].tolist() == pytest.approx(r.tolist())
    assert out["loss"].item() == pytest.approx(-torch.nn.functional.logsigmoid(r[0] - r[1]).item(), abs=1e-6)

    tok = BaselineScorer(mlm, "token").eval()
    out = tok(**batch, labels=labels)
    hidden = tok.hidden_states(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    logits = tok.head(hidden).squeeze(-1)
    expected_scores, expected_loss = [], 0.0
    for row, target in ((0, 1.0), (1, 0.0)):
        idx = batch["response_mask"][row].nonzero().squeeze(-1)
        expected_scores.append(logits[row, idx].mean().item())  # score = mean per-token logit of "chosen"
        expected_loss += torch.nn.functional.binary_cross_entropy_with_logits(
            logits[row, idx], torch.full((len(idx),), target)).item() / 2
    assert out["logits"][0].tolist() == pytest.approx(expected_scores, abs=1e-5)
    assert out["loss"].item() == pytest.approx(expected_loss, abs=1e-5)


def test_response_encoder_truncates_safely(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    encoder = ResponseEncoder(tokenizer, max_length=32)
    prompt = " ".join(f"p{i}" for i in range(100))
    response = "start " + " ".join(["middle"] * 100) + " final answer"
    enc = encoder.encode(prompt, response)
    assert enc.truncated and len(enc.input_ids) == 32
    assert enc.input_ids[0] == tokenizer.cls_token_id and enc.input_ids[-1] == tokenizer.sep_token_id
    kept = [t for t, m in zip(enc.input_ids, enc.response_mask) if m]
    text = tokenizer.decode(kept)
    assert text.startswith("start") and text.endswith("final answer")  # head and tail of the response
    assert enc.token_type_ids[-1] == 1 and enc.token_type_ids[1] == 0
    short = encoder.encode("Hi?", "Yes.")
    assert not short.truncated and sum(short.response_mask) == len(tokenizer("Yes.", add_special_tokens=False)[
        "input_ids"])
    with pytest.raises(ValueError, match="max_length"):
        ResponseEncoder(tokenizer, max_length=3)
    with pytest.raises(ValueError, match="lone surrogate"):
        encoder.encode("Hi?", "Yes\ud800.")


def test_eval_cli_on_a_baseline_model(tiny_bert, pairs_file, tmp_path, capsys):
    out = tmp_path / "rm"
    assert main(["train", "--model", tiny_bert, "--data", str(pairs_file), "--output", str(out), "--objective", "token",
                 "--batch-size", "4", "--micro-batch-size", "4", "--max-steps", "1", "--max-length", "64",
                 "--save-steps", "0"]) == 0
    assert json.loads((out / "tinyrm.json").read_text())["objective"] == "token"
    results_path = tmp_path / "results.json"
    assert main(["eval", "--model", str(out), "--data", str(pairs_file), "--output", str(results_path)]) == 0
    results = json.loads(results_path.read_text())
    assert results["n"] == 24 and 0.0 <= results["accuracy"] <= 1.0
    assert main(["compare", "--model", str(out), "--prompt", "q", "--a", "yes", "--b", "no"]) == 0
    assert 0.0 < json.loads(capsys.readouterr().out.strip().splitlines()[-1])["prob_a"] < 1.0
    # tinyrm rank sorts by the reward, as rm.rank does: no tournament for a reward per response
    rm = BaselineRewardModel.from_pretrained(out, device="cpu")
    candidates = ["4", "5", "four", "twenty-two", "4."]
    (tmp_path / "rank.jsonl").write_text(json.dumps({"prompt": "2 + 2?", "candidates": candidates}) + "\n")
    assert main(["rank", "--model", str(out), "--input", str(tmp_path / "rank.jsonl"),
                 "--output", str(tmp_path / "ranked.jsonl")]) == 0
    assert "each candidate scored once" in capsys.readouterr().out
    ranked = json.loads((tmp_path / "ranked.jsonl").read_text())
    assert ranked["ranking"] == [i for i, _ in rm.rank("2 + 2?", candidates)]
    assert ranked["scores"] == pytest.approx(rm.score_batch([("2 + 2?", c) for c in candidates]), abs=1e-6)
    # bad input is named as the cloze model names it, before any work
    with pytest.raises(TypeError, match="item 0: b is NoneType, not str"):
        rm.compare("p", "a", None)
    with pytest.raises(TypeError, match="item 0: expected \\(prompt, response\\)"):
        rm.score_batch([("p",)])
    with pytest.raises(ValueError, match=r"candidates\[1\] must be a string"):
        rm.rank("p", ["a", None])
    with pytest.raises(ValueError, match="candidates must not be empty"):
        rm.best_of_n("p", [])


def test_head_lr_scale_finds_the_head_of_every_baseline(tiny_bert):
    # tinyrm's own head (token objective, BERT mean pooling) is new too: --head-lr-scale must reach it.
    from tinyrm.training.trainer import fresh_parameter_names

    for objective, pooling in (("token", "cls"), ("classifier", "mean")):
        scorer, _ = baseline_scorer(tiny_bert, "bert", objective, pooling, window=16)
        assert fresh_parameter_names(scorer) == {"head.weight", "head.bias"}, (objective, pooling)


def test_bad_objective_options(tiny_bert, pairs_file, tmp_path):
    with pytest.raises(ValueError, match="pooling"):
        _train(tiny_bert, pairs_file, tmp_path / "x", "classifier", "max")


# ----------------------------------------------------------------------------------------- heuristics
def _pair(chosen: str, rejected: str, subset: str = "s") -> PreferencePair:
    return PreferencePair(prompt="p", chosen=chosen, rejected=rejected, subset=subset, domain="chat")


def test_length_heuristic_and_ties():
    assert length_probs([("p", "long answer", "short"), ("p", "a", "bbb"), ("p", "same", "size")]) == [1.0, 0.0, 0.5]
    pairs = [_pair("longer one", "short"), _pair("x", "yy"), _pair("abc", "xyz", subset="t")]
    results = heuristic_results("length", pairs)
    assert results["accuracy"] == pytest.approx(1 / 3)  # the equal-length pair is a tie, counted wrong
    assert {k: (v["accuracy"], v["n"]) for k, v in results["subsets"].items()} == {"s": (0.5, 2), "t": (0.0, 1)}
    assert results["model"] == "baseline:length"


def test_random_heuristic_is_seeded():
    assert random_probs(50, seed=1) == random_probs(50, seed=1)
    assert random_probs(50, seed=1) != random_probs(50, seed=2)
    assert set(random_probs(50, seed=1)) == {0.0, 1.0}
    pairs = [_pair(f"c{i}", f"r{i}") for i in range(2000)]
    accuracy = heuristic_results("random", pairs, seed=7)["accuracy"]
    assert 0.45 < accuracy < 0.55
    assert HeuristicScorer("random", seed=7).name == "baseline:random(seed=7)"
    with pytest.raises(ValueError, match="unknown baseline"):
        HeuristicScorer("oracle")


def test_heuristic_cli(pairs_file, tmp_path):
    from tinyrm.data import read_jsonl

    out = tmp_path / "length.json"
    assert main(["eval", "--baseline", "length", "--data", str(pairs_file), "--output", str(out)]) == 0
    pairs = read_jsonl(pairs_file).pairs
    expected = sum(len(p.chosen) > len(p.rejected) for p in pairs) / len(pairs)
    assert json.loads(out.read_text())["accuracy"] == pytest.approx(expected)
    assert main(["eval", "--baseline", "random", "--seed", "3", "--data", str(pairs_file), "--output", str(out)]) == 0
    first = json.loads(out.read_text())
    assert main(["eval", "--baseline", "random", "--seed", "3", "--data", str(pairs_file), "--output", str(out)]) == 0
    assert json.loads(out.read_text()) == first
    assert main(["eval", "--baseline", "length"]) == 2  # --data is required


def test_paradigms_benchmark_end_to_end(tiny_bert, pairs_file, tmp_path, capsys, monkeypatch):
    """benchmarks/paradigms.py on a tiny model: three objectives, same steps, one table with the heuristics."""
    import importlib.util
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "paradigms.py"
    spec = importlib.util.spec_from_file_location("paradigms", script)
    paradigms = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "paradigms", paradigms)  # dataclasses look their module up
    spec.loader.exec_module(paradigms)
    out = tmp_path / "paradigms"
    code = paradigms.main(["--model", tiny_bert, "--train", str(pairs_file), "--eval", str(pairs_file), "--steps", "1",
                           "--pairs-per-step", "2", "--micro-pairs", "2", "--max-length", "64", "--output", str(out)])
    assert code == 0
    summary = json.loads((out / "paradigms.json").read_text())
    rows = {row["objective"]: row for row in summary["rows"]}
    trained = ("cloze", "classifier-cls", "classifier-mean", "token")
    assert list(rows) == [*trained, "length", "random"]
    assert all(rows[o]["steps"] == 1 and rows[o]["train_pairs"] == 2 for o in trained)
    assert all(rows[o]["results"]["n"] == 24 for o in rows)
    for row in rows.values():  # a 95% interval around every accuracy
        low, high = row["results"]["ci95"]
        assert 0 <= low <= row["results"]["accuracy"] <= high <= 1
    assert sum(1 for _ in (out / "train.jsonl").open()) == 2  # steps x pairs-per-step, shared by all
    assert "heuristic: length" in capsys.readouterr().out


def test_paradigms_sample_is_stratified_over_domains(monkeypatch, tmp_path):
    """Equal shares per domain while every domain has rows; a small domain gives all it has."""
    import importlib.util
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "paradigms.py"
    spec = importlib.util.spec_from_file_location("paradigms", script)
    paradigms = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "paradigms", paradigms)
    spec.loader.exec_module(paradigms)
    sizes = {"chat": 500, "reasoning": 400, "safety": 20}
    pairs = [PreferencePair(prompt=f"{d}{i}", chosen="a", rejected="b", domain=d)
             for d, n in sizes.items() for i in range(n)]
    path = write_jsonl(pairs, tmp_path / "mix.jsonl")
    config = paradigms.ParadigmsConfig(train=[str(path)], steps=30, pairs_per_step=10)
    chosen, available = paradigms.sample_train_pairs(config)
    counts = {d: sum(p.domain == d for p in chosen) for d in sizes}
    assert available == 920 and len(chosen) == 300 and len({p.prompt for p in chosen}) == 300
    assert counts["safety"] == 20 and counts["chat"] == counts["reasoning"] == 140
