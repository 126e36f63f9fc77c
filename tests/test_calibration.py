"""Calibration: the metrics of every evaluation, ``tinyrm calibrate`` and the temperature on every probability.

The metrics are checked against a computation written here from the issue's definitions (plain Python
loops over ``--predictions``); the temperature against ``sigmoid(logit(P) / T)`` computed with ``math``.
The tiny random models answer close to 0.5, so the flow tests save a small temperature (1e-3): it spreads
their probabilities over tenths, far from the raw ones, without changing a decision.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import httpx
import pytest

from tinyrm import ProcessRewardModel, RewardModel, load
from tinyrm.cli import main
from tinyrm.config import RewardConfig
from tinyrm.evaluation.calibration import calibration, fit_temperature, log_loss, pair_calibration
from tinyrm.pairwise.groups import Answers
from tinyrm.pairwise.rank import rank_candidates
from tinyrm.temperature import scale
from tinyrm.tools.synthetic import generate, write_jsonl

SMALL_T = 1e-3
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "calibration.py"


def run_benchmark(argv: list[str]) -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location("calibration_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


# ------------------------------------------------------------------ the reference, from the issue's text
def sigmoid_logit(p: float, t: float) -> float:
    """sigmoid(logit(p) / t) with math, written apart from tinyrm.temperature."""
    if p in (0.0, 1.0):
        return p
    z = math.log(p / (1.0 - p)) / t
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def reference_block(points: list[tuple[float, int]], p_true: list[float]) -> dict:
    """10 equal-width bins over [0, 1] (the last closed), ECE, Brier, log loss (P clipped to [1e-7, 1 - 1e-7])."""
    bins: list[list[tuple[float, int]]] = [[] for _ in range(10)]
    for q, o in points:
        k = 9 if q >= 0.9 else next(k for k in range(10) if k / 10 <= q < (k + 1) / 10)
        bins[k].append((q, o))
    out_bins, ece = [], 0.0
    for members in bins:
        if members:
            mean_q = sum(q for q, _ in members) / len(members)
            observed = sum(o for _, o in members) / len(members)
            ece += len(members) / len(points) * abs(mean_q - observed)
            out_bins.append({"count": len(members), "mean_predicted": mean_q, "observed": observed})
        else:
            out_bins.append({"count": 0, "mean_predicted": None, "observed": None})
    clip = [min(max(p, 1e-7), 1 - 1e-7) for p in p_true]
    return {"ece": ece, "brier": sum((1 - p) ** 2 for p in p_true) / len(p_true),
            "log_loss": sum(-math.log(p) for p in clip) / len(clip), "bins": out_bins}


def reference_pairs(probs: list[float]) -> dict:
    """Each pair twice: (P, 1) and (1 - P, 0); Brier = mean (1 - P)^2, log loss = mean -ln P."""
    return reference_block([(p, 1) for p in probs] + [(1 - p, 0) for p in probs], probs)


def assert_block(got: dict, want: dict) -> None:
    assert set(got) == {"ece", "brier", "log_loss", "bins"} and len(got["bins"]) == 10
    for key in ("ece", "brier", "log_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    for g, w in zip(got["bins"], want["bins"]):
        assert set(g) == {"count", "mean_predicted", "observed"} and g["count"] == w["count"]
        for key in ("mean_predicted", "observed"):
            assert (g[key] is None) == (w[key] is None)
            if w[key] is not None:
                assert g[key] == pytest.approx(w[key], rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("calibration-data")
    return {"dev": write_jsonl(generate(24, seed=1), folder / "dev.jsonl"),
            "test": write_jsonl(generate(24, seed=2), folder / "test.jsonl")}


@pytest.fixture(scope="module")
def cloze_dir(tiny_bert, tmp_path_factory) -> Path:
    """A saved cloze folder without a temperature."""
    out = tmp_path_factory.mktemp("cloze") / "rm"
    RewardModel.from_pretrained(tiny_bert, device="cpu").save_pretrained(out)
    return out


def with_temperature(source: Path, target: Path, temperature: float) -> Path:
    """A copy of ``source`` whose tinyrm.json holds ``temperature``."""
    shutil.copytree(source, target)
    config = RewardConfig.load(target)
    config.calibration = {"method": "temperature", "temperature": temperature, "n": 0, "data": []}
    config.save(target)
    return target


@pytest.fixture(scope="module")
def cal_dir(cloze_dir, tmp_path_factory) -> Path:
    return with_temperature(cloze_dir, tmp_path_factory.mktemp("cal") / "rm", SMALL_T)


def items_of(path: Path) -> list[tuple[str, str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]


def cpu(path) -> RewardModel:
    rm = load(str(path), device="cpu")
    if hasattr(rm, "engine"):
        rm.engine.config.precision = "fp32"
    return rm


# ------------------------------------------------------------------ the arithmetic
def test_pair_calibration_is_the_issues_definition():
    probs = [0.95, 0.3, 0.5, 1.0, 0.0, 0.1, 0.9, 0.62, 0.71, 0.05]  # 0.1 and 0.9 sit on bin edges
    assert_block(pair_calibration(probs), reference_pairs(probs))
    block = pair_calibration(probs)
    assert sum(b["count"] for b in block["bins"]) == 2 * len(probs)  # every pair twice
    # The last bin is closed: 0.95, 1.0, 0.9 and the mirrors of 0.0, 0.05, 0.1 (1 - 0.1 == 0.9); the first
    # holds 0.0, 0.05 and the mirrors of 1.0, 0.95 and 0.9 (1 - 0.9 < 0.1 in floating point).
    assert block["bins"][9]["count"] == 6 and block["bins"][0]["count"] == 5 and block["bins"][1]["count"] == 1
    # Away from the edges, symmetric about 0.5: bin k mirrors bin 9 - k.
    mirrored = pair_calibration([0.95, 0.33, 0.62, 0.71, 0.05, 0.44, 0.83])
    for k in range(5):
        assert mirrored["bins"][k]["count"] == mirrored["bins"][9 - k]["count"]
        assert mirrored["bins"][k]["observed"] in (None, 1 - mirrored["bins"][9 - k]["observed"])
    assert pair_calibration([0.5] * 4)["log_loss"] == pytest.approx(math.log(2))
    assert pair_calibration([])["ece"] is None and pair_calibration([])["bins"][3]["count"] == 0


def test_verdict_calibration_counts_each_verdict_once():
    probs = [0.9, 0.8, 0.15, 0.55, 0.999, 0.4]
    outcomes = [True, False, False, True, True, False]
    p_true = [p if o else 1 - p for p, o in zip(probs, outcomes)]
    assert_block(calibration(probs, outcomes), reference_block(list(zip(probs, map(int, outcomes))), p_true))
    assert log_loss(probs, outcomes) == pytest.approx(sum(-math.log(p) for p in p_true) / len(p_true))


def test_scale_is_sigmoid_of_logit_over_t_and_keeps_every_side():
    probs = [0.0, 1e-9, 0.2, 0.4999999999999999, 0.5, 0.5000000000000001, 0.77, 1.0]
    assert scale(probs, None) is probs and scale(probs, 1.0) is probs  # T = 1: the list itself
    for t in (0.01, 0.5, 2.0, 1e6):
        scaled = scale(probs, t)
        for p, q in zip(probs, scaled):
            assert (p > 0.5) == (q > 0.5) and (p < 0.5) == (q < 0.5)  # no decision changes, even at 1e6
            if 1e-6 < p < 1 - 1e-6 and abs(p - 0.5) > 1e-9:
                assert q == pytest.approx(sigmoid_logit(p, t), rel=1e-12, abs=1e-15)
        assert scaled[4] == 0.5 and scaled[0] == 0.0 and scaled[-1] == 1.0
    with pytest.raises(ValueError, match="temperature"):
        scale(probs, 0.0)


def test_fit_temperature_finds_the_temperature_of_overconfident_probabilities():
    rng = random.Random(0)
    logits = [rng.gauss(0, 1.5) for _ in range(4000)]
    outcomes = [rng.random() < 1 / (1 + math.exp(-z)) for z in logits]  # true P = sigmoid(z)
    overconfident = [1 / (1 + math.exp(-2.5 * z)) for z in logits]  # reported P = sigmoid(2.5 z): T = 2.5 fixes it
    t, before, after = fit_temperature(overconfident, outcomes)
    assert t == pytest.approx(2.5, rel=0.1) and after < before
    assert after == pytest.approx(log_loss(scale(overconfident, t), outcomes), rel=1e-12)
    t, before, after = fit_temperature([1 / (1 + math.exp(-0.4 * z)) for z in logits], outcomes)
    assert t == pytest.approx(0.4, rel=0.1) and after < before  # underconfident: T < 1
    # Already calibrated: whatever T it picks scores no worse than T = 1.
    t, before, after = fit_temperature([1 / (1 + math.exp(-z)) for z in logits], outcomes)
    assert after <= before and t == pytest.approx(1.0, rel=0.1)
    # Pairs (every outcome 1): a model right on every pair is sharpened, one wrong on every pair softened to 0.5.
    assert fit_temperature([0.6, 0.7, 0.8])[0] < 1 and fit_temperature([0.4, 0.3])[0] > 1


# ------------------------------------------------------------------ every evaluation reports it
def test_eval_block_matches_an_independent_computation_from_predictions(cal_dir, data, tmp_path, capsys):
    out, predictions = tmp_path / "results.json", tmp_path / "predictions.jsonl"
    assert main(["eval", "--model", str(cal_dir), "--data", str(data["test"]), "--output", str(out),
                 "--predictions", str(predictions), "--json", "--no-progress"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results == json.loads(out.read_text()) and results["temperature"] == SMALL_T
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    probs = [r["prob_chosen"] for r in records]
    assert_block(results["calibration"], reference_pairs(probs))
    for group, key in (("subsets", "subset"), ("domains", "domain")):
        names = {r[key] for r in records}
        assert set(results[group]) == names and len(names) > 1
        for name in names:
            assert_block(results[group][name]["calibration"], reference_pairs([r["prob_chosen"] for r in records
                                                                               if r[key] == name]))
    from rich.console import Console

    from tinyrm.evaluation.results import results_table

    console = Console(width=400, record=True)
    console.print(results_table(results))
    text = console.export_text()
    assert "ECE" in text and "Brier" in text and "log loss" in text and f"{results['calibration']['ece']:.4f}" in text
    # --record keeps the three figures (and the temperature) in tinyrm.json and the model card.
    from tinyrm.model_card import record_eval

    folder = tmp_path / "recorded"
    shutil.copytree(cal_dir, folder)
    entry = record_eval(folder, results, data=[str(data["test"])])
    assert entry["calibration"] == {k: results["calibration"][k] for k in ("ece", "brier", "log_loss")}
    card = (folder / "README.md").read_text()
    assert "| ECE | Brier | log loss |" in card and f"{results['calibration']['log_loss']:.4f}" in card
    assert "## Calibration" in card and "temperature 0.001" in card


def test_a_heuristic_and_rewardbench_results_carry_the_block(data, tmp_path, capsys):
    assert main(["eval", "--baseline", "length", "--data", str(data["test"]), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    pairs = items_of(data["test"])
    probs = [1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5 for _, a, b in pairs]
    assert_block(results["calibration"], reference_pairs(probs))
    assert "temperature" not in results


# ------------------------------------------------------------------ tinyrm calibrate and its invariants
def test_calibrate_fits_saves_and_keeps_every_decision(cloze_dir, data, tmp_path, capsys):
    out = tmp_path / "calibrated"
    assert main(["calibrate", "--model", str(cloze_dir), "--data", str(data["dev"]), "--output", str(out), "--json",
                 "--no-progress", "--precision", "fp32"]) == 0
    report = json.loads(capsys.readouterr().out)
    t = report["temperature"]
    assert report["output"] == str(out) and not report["in_place"] and report["n"] == 24 and report["unit"] == "pairs"
    block = json.loads((out / "tinyrm.json").read_text())["calibration"]
    assert block["method"] == "temperature" and block["temperature"] == t and block["n"] == 24
    assert block["data"] == [str(data["dev"])]
    assert "calibration" not in json.loads((cloze_dir / "tinyrm.json").read_text())
    assert "## Calibration" in (out / "README.md").read_text()

    raw_model, calibrated_model = cpu(cloze_dir), cpu(out)
    dev, test = items_of(data["dev"]), items_of(data["test"])
    raw_dev = raw_model.compare_batch(dev)
    cal_dev = calibrated_model.compare_batch(dev)
    # Calibrated P = sigmoid(logit(raw P) / T), computed here; the raw P comes back exactly when asked for.
    assert cal_dev == pytest.approx([sigmoid_logit(p, t) for p in raw_dev], rel=1e-9, abs=1e-12)
    assert calibrated_model.compare_batch(dev, calibrated=False) == raw_dev
    # The log loss on DEV does not rise (recomputed here, not read from the report).
    def loss(probs):
        return sum(-math.log(min(max(p, 1e-7), 1 - 1e-7)) for p in probs) / len(probs)
    assert loss(cal_dev) <= loss(raw_dev) + 1e-12
    assert report["log_loss_before"] == pytest.approx(loss(raw_dev), abs=1e-9)
    assert report["log_loss_after"] == pytest.approx(loss(cal_dev), abs=1e-9)
    # Decisions and accuracy are those of the raw model, pair by pair.
    raw_test, cal_test = raw_model.compare_batch(test), calibrated_model.compare_batch(test)
    assert [(p > 0.5, p < 0.5) for p in raw_test] == [(p > 0.5, p < 0.5) for p in cal_test]
    results = {}
    for name, folder in (("raw", cloze_dir), ("cal", out)):
        assert main(["eval", "--model", str(folder), "--data", str(data["test"]), "--json", "--no-progress"]) == 0
        results[name] = json.loads(capsys.readouterr().out)
    assert results["raw"]["accuracy"] == results["cal"]["accuracy"]
    assert results["raw"]["length_bias"] == results["cal"]["length_bias"]
    assert {k: v["accuracy"] for k, v in results["raw"]["subsets"].items()} == \
           {k: v["accuracy"] for k, v in results["cal"]["subsets"].items()}
    # The calibrated folder round-trips through load and save_pretrained.
    calibrated_model.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "tinyrm.json").read_text())["calibration"] == block
    assert cpu(tmp_path / "again").compare_batch(dev) == cal_dev


def test_calibrate_in_place_and_its_errors(cloze_dir, data, tmp_path, capsys):
    folder = tmp_path / "rm"
    shutil.copytree(cloze_dir, folder)
    assert main(["calibrate", "--model", str(folder), "--data", str(data["dev"]), "--no-progress"]) == 0
    assert "in place" in capsys.readouterr().out
    assert json.loads((folder / "tinyrm.json").read_text())["calibration"]["n"] == 24
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    assert main(["calibrate", "--model", str(folder), "--data", str(data["dev"]), "--output",
                 str(tmp_path / "taken")]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_the_benchmark_reports_before_and_after_from_one_scoring_pass(cloze_dir, data, tmp_path):
    out = tmp_path / "bench.json"
    assert run_benchmark(["--model", str(cloze_dir), "--dev", str(data["dev"]), "--test", str(data["test"]),
                          "--precision", "fp32", "--output", str(out)]) == 0
    bench = json.loads(out.read_text())
    before, after = bench["before"], bench["after"]
    assert before["accuracy"] == after["accuracy"] and before["n"] == 24
    rm = cpu(cloze_dir)
    raw = rm.compare_batch(items_of(data["test"]))
    assert before["log_loss"] == pytest.approx(pair_calibration(raw)["log_loss"], abs=1e-9)
    assert after["ece"] == pytest.approx(pair_calibration(scale(raw, bench["temperature"]))["ece"], abs=1e-6)


def test_no_temperature_and_a_temperature_of_one_change_nothing(cloze_dir, data, tmp_path):
    assert "calibration" not in json.loads((cloze_dir / "tinyrm.json").read_text())
    one = with_temperature(cloze_dir, tmp_path / "one", 1.0)
    items = items_of(data["test"])
    plain, unit = cpu(cloze_dir), cpu(one)
    raw = plain.compare_batch(items)
    assert plain.compare_batch(items, calibrated=True) == raw == unit.compare_batch(items)
    assert unit.rank(items[0][0], ["x", "yy", "zzz"], method="round_robin") == \
           plain.rank(items[0][0], ["x", "yy", "zzz"], method="round_robin")


# ------------------------------------------------------------------ every place probabilities flow to
def test_compare_rank_and_rewards_get_calibrated_probabilities(cal_dir, data):
    from tinyrm.integrations.trl import PairwiseReward

    rm = cpu(cal_dir)
    items = items_of(data["test"])[:8]
    raw = rm.compare_batch(items, calibrated=False)
    calibrated = [sigmoid_logit(p, SMALL_T) for p in raw]
    assert rm.compare_batch(items) == pytest.approx(calibrated, rel=1e-9, abs=1e-12)
    assert max(abs(a - b) for a, b in zip(raw, calibrated)) > 1e-3  # the temperature shows
    one = rm.compare(*items[0], calibrated=False)  # alone in its batch: its own raw P
    assert rm.compare(*items[0]) == pytest.approx(sigmoid_logit(one, SMALL_T), rel=1e-9)
    rm.calibrated = False  # the model-level switch
    assert rm.compare_batch(items) == raw
    rm.calibrated = True

    prompt, candidates = "Name a colour.", ["green", "drum", "How about blue?", "seven"]
    pairs = [(prompt, candidates[i], candidates[j]) for i in range(4) for j in range(i + 1, 4)]
    raw_pairs = rm.compare_batch(pairs, calibrated=False)
    reference = Answers(dict(zip(pairs, (sigmoid_logit(p, SMALL_T) for p in raw_pairs))))
    got = rank_candidates(rm, prompt, candidates, method="round_robin")  # Bradley-Terry on calibrated P
    want = rank_candidates(reference, prompt, candidates, method="round_robin")
    assert got.ranking == want.ranking and got.scores == pytest.approx(want.scores, rel=1e-6, abs=1e-9)
    p = sigmoid_logit(rm.compare(prompt, candidates[0], candidates[1], calibrated=False), SMALL_T)
    got = rank_candidates(rm, prompt, candidates[:2], method="knockout")  # 1 + P(win), 1 - P(win)
    assert sorted(got.scores) == pytest.approx(sorted([1 + max(p, 1 - p), 1 - max(p, 1 - p)]), rel=1e-9)
    # The TRL reward: win rates from calibrated P; against a reference column, the calibrated P itself.
    reward = PairwiseReward(rm, method="round_robin")
    assert reward([prompt] * 4, candidates) == pytest.approx(PairwiseReward(reference)([prompt] * 4, candidates),
                                                             rel=1e-6)
    against = PairwiseReward(rm, reference_key="ref")(["p1", "p2"], ["a", "b"], ref=["b", "a"])
    expected = [sigmoid_logit(p, SMALL_T) for p in rm.compare_batch([("p1", "a", "b"), ("p2", "b", "a")],
                                                                   calibrated=False)]
    assert against == pytest.approx(expected, rel=1e-9)


def test_score_min_prob_filters_on_calibrated_probabilities(cal_dir, data, tmp_path):
    from tinyrm.scoring import ScoreConfig, score

    rm = cpu(cal_dir)
    items = items_of(data["test"])
    raw = rm.compare_batch(items, calibrated=False)
    calibrated = [sigmoid_logit(p, SMALL_T) for p in raw]
    # A threshold between a pair's raw and calibrated P: kept with calibration, dropped without.
    above = [(r, c) for r, c in zip(raw, calibrated) if c > r > 0.5]
    assert above
    threshold = (above[0][0] + above[0][1]) / 2
    kept = {}
    for calibrated_flag in (True, False):
        out = tmp_path / f"scored-{calibrated_flag}.jsonl"
        score(ScoreConfig(model=str(cal_dir), data=[str(data["test"])], output=str(out), min_prob=threshold,
                          progress=False, precision="fp32", device="cpu", calibrated=calibrated_flag))
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        kept[calibrated_flag] = ([(r["prompt"], r["chosen"], r["rejected"]) for r in rows],
                                 [r["prob_chosen"] for r in rows])
    want = [(item, c) for item, c in zip(items, calibrated) if c >= threshold]
    assert kept[True][0] == [item for item, _ in want]
    assert kept[True][1] == pytest.approx([c for _, c in want], rel=1e-9)
    assert kept[False][0] == [item for item, r in zip(items, raw) if r >= threshold] != kept[True][0]
    assert kept[False][1] == [r for r in raw if r >= threshold]


def test_serve_gives_calibrated_probabilities_and_raw_ones_when_told(cal_dir, tmp_path):
    from tinyrm.serving.app import ServeConfig

    from .test_serve import running_server

    body = {"prompt": "What is 19 + 74?", "a": "93", "b": "94"}
    direct = cpu(cal_dir)
    raw = direct.compare(body["prompt"], body["a"], body["b"], calibrated=False)
    candidates = ["green", "drum", "How about blue?", "seven"]
    spread = {}
    for calibrated_flag, want, temperature in ((True, sigmoid_logit(raw, SMALL_T), SMALL_T), (False, raw, None)):
        with running_server(cpu(cal_dir), ServeConfig(calibrated=calibrated_flag)) as url:
            with httpx.Client(base_url=url, timeout=60) as http:
                got = http.post("/v1/compare", json=body).json()["prob_a"]
                assert http.get("/health").json()["temperature"] == temperature
                batch = http.post("/v1/compare_batch", json={"items": [body, {**body, "a": "94", "b": "93"}]}).json()
                ranked = http.post("/v1/rank", json={"prompt": "Name a colour.", "candidates": candidates,
                                                     "method": "round_robin"}).json()
                reranked = http.post("/v1/rerank", json={"query": "Name a colour.", "documents": candidates}).json()
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
        assert batch["prob_a"][0] == pytest.approx(want, abs=1e-4)  # batched with another pair: padding noise
        scores = [r["relevance_score"] for r in reranked["results"]]
        spread[calibrated_flag] = (max(ranked["scores"]) - min(ranked["scores"]), max(scores) - min(scores))
    # Ranking and rerank strengths come from calibrated P (far from 0.5) unless the server was told otherwise.
    assert spread[True][0] > 10 * spread[False][0] and spread[True][1] > 10 * spread[False][1]


def test_cli_no_calibration_gives_the_raw_probability(cal_dir, data, tmp_path, capsys):
    args = ["--prompt", "What is 19 + 74?", "--a", "93", "--b", "94"]
    raw = cpu(cal_dir).compare("What is 19 + 74?", "93", "94", calibrated=False)
    assert main(["compare", "--model", str(cal_dir), *args, "--precision", "fp32"]) == 0
    calibrated = json.loads(capsys.readouterr().out)["prob_a"]
    assert main(["compare", "--model", str(cal_dir), *args, "--precision", "fp32", "--no-calibration"]) == 0
    assert json.loads(capsys.readouterr().out)["prob_a"] == raw
    assert calibrated == pytest.approx(sigmoid_logit(raw, SMALL_T), rel=1e-9)
    # eval: raw predictions, the same accuracy.
    runs = {}
    for flag in ([], ["--no-calibration"]):
        predictions = tmp_path / f"p{len(flag)}.jsonl"
        assert main(["eval", "--model", str(cal_dir), "--data", str(data["test"]), "--predictions", str(predictions),
                     "--json", "--no-progress", "--precision", "fp32", *flag]) == 0
        runs[bool(flag)] = (json.loads(capsys.readouterr().out),
                            [json.loads(line)["prob_chosen"] for line in predictions.read_text().splitlines()])
    (cal_results, cal_probs), (raw_results, raw_probs) = runs[False], runs[True]
    assert "temperature" not in raw_results and cal_results["accuracy"] == raw_results["accuracy"]
    assert cal_probs == pytest.approx([sigmoid_logit(p, SMALL_T) for p in raw_probs], rel=1e-9, abs=1e-12)
    # rank: round-robin strengths from raw P with the flag.
    ranks = tmp_path / "rank.jsonl"
    ranks.write_text(json.dumps({"prompt": "Name a colour.", "candidates": ["green", "drum", "blue", "seven"]}) + "\n")
    scores = {}
    for flag in ([], ["--no-calibration"]):
        out = tmp_path / f"ranked{len(flag)}.jsonl"
        assert main(["rank", "--model", str(cal_dir), "--input", str(ranks), "--output", str(out),
                     "--method", "round_robin", *flag]) == 0
        scores[bool(flag)] = json.loads(out.read_text())["scores"]
    spread = {k: max(v) - min(v) for k, v in scores.items()}
    assert spread[False] > 10 * spread[True]  # the calibrated P are far from 0.5, the raw ones are not


# ------------------------------------------------------------------ other kinds of model
def test_process_models_calibrate_step_probabilities(tiny_bert, tmp_path, capsys):
    from tinyrm.process.aggregate import aggregate
    from tinyrm.train import TrainConfig, train

    from .test_process import BAD, GOOD, PROBLEM, rows_file

    rows = rows_file(tmp_path / "rows.jsonl")
    out = tmp_path / "prm"
    train(TrainConfig(model=tiny_bert, data=[str(rows)], output=str(out), objective="process", batch_size=4,
                      micro_batch_size=4, max_steps=1, max_length=128, save_steps=0))
    capsys.readouterr()  # what training printed
    assert main(["calibrate", "--model", str(out), "--data", str(rows), "--output", str(tmp_path / "cal"), "--json",
                 "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["unit"] == "steps" and report["n"] == 10 and report["log_loss_after"] <= report["log_loss_before"]
    # A temperature of 0.5 on the trained folder: P(step correct) = sigmoid(2 logit(P)) everywhere.
    cal = with_temperature(out, tmp_path / "half", 0.5)
    rm = ProcessRewardModel.from_pretrained(str(cal), device="cpu")
    raw = rm.score_steps(PROBLEM, BAD, calibrated=False)
    assert raw == ProcessRewardModel.from_pretrained(str(out), device="cpu").score_steps(PROBLEM, BAD)
    steps = [sigmoid_logit(p, 0.5) for p in raw]
    assert rm.score_steps(PROBLEM, BAD) == pytest.approx(steps, rel=1e-9)
    for method in ("product", "min"):  # aggregation takes the calibrated step probabilities
        assert rm.score_solution(PROBLEM, BAD, aggregate=method) == pytest.approx(aggregate(steps, method), rel=1e-9)
    reranked = rm.rerank(PROBLEM, [GOOD, BAD], aggregate="product")
    good = [sigmoid_logit(p, 0.5) for p in rm.score_steps(PROBLEM, GOOD, calibrated=False)]
    assert dict(reranked) == pytest.approx({0: aggregate(good, "product"), 1: aggregate(steps, "product")}, rel=1e-5)
    # The service's /v1/score_steps gives the calibrated step probabilities and their aggregate.
    from tinyrm.serving.app import ServeConfig

    from .test_serve import running_server

    with running_server(ProcessRewardModel.from_pretrained(str(cal), device="cpu"), ServeConfig()) as url:
        answer = httpx.post(f"{url}/v1/score_steps", json={"problem": PROBLEM, "steps": BAD, "aggregate": "product"},
                            timeout=60).json()
    assert answer["scores"] == pytest.approx(steps, rel=1e-6)
    assert answer["reward"] == pytest.approx(aggregate(steps, "product"), rel=1e-6)
    # The process temperature is not applied to the pairwise methods the class inherits.
    assert rm.compare("q", "a", "b") == rm.compare("q", "a", "b", calibrated=False)
    # eval --objective process: a calibration block over the labelled steps, recomputed here.
    assert main(["eval", "--objective", "process", "--model", str(cal), "--data", str(rows), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    from tinyrm.process.data import load_rows

    loaded = load_rows([str(rows)]).rows
    scored = rm.score_many([(r.question, r.steps) for r in loaded])
    points = [(p, int(label)) for r, s in zip(loaded, scored) for p, label in zip(s, r.labels) if label is not None]
    assert_block(results["steps"]["calibration"], reference_block(points, [p if o else 1 - p for p, o in points]))
    assert results["temperature"] == 0.5 and "calibration" in results["solutions"]
    # benchmarks/calibration.py: fit on one file, measure on another, one scoring pass; decisions unchanged.
    assert run_benchmark(["--model", str(out), "--dev", str(rows), "--test", str(rows), "--output",
                          str(tmp_path / "bench.json")]) == 0
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["temperature"] == report["temperature"] and bench["questions"] == 2
    before, after = bench["before"], bench["after"]
    assert before["steps"]["auroc"] == after["steps"]["auroc"]
    assert before["first_error_accuracy"] == after["first_error_accuracy"]
    assert before["solutions_min"]["auroc"] == after["solutions_min"]["auroc"]
    assert after["steps"]["calibration"]["log_loss"] <= before["steps"]["calibration"]["log_loss"] + 1e-12


def test_pairwise_temperature_is_not_used_for_zero_shot_steps(cal_dir):
    from .test_process import GOOD, PROBLEM

    rm = ProcessRewardModel.from_pretrained(str(cal_dir), device="cpu")
    assert rm.score_steps(PROBLEM, GOOD) == rm.score_steps(PROBLEM, GOOD, calibrated=False)


def test_classifier_and_route_apply_their_temperature(tiny_bert, cloze_dir, data, tmp_path):
    from tinyrm.pairwise.route import DomainRouter, RoutedRewardModel, route_text
    from tinyrm.train import TrainConfig, train

    out = tmp_path / "classifier"
    train(TrainConfig(model=tiny_bert, data=[str(data["dev"])], output=str(out), objective="classifier", batch_size=8,
                      micro_batch_size=4, max_steps=1, max_length=96, save_steps=0, precision="fp32"))
    cal = with_temperature(out, tmp_path / "classifier-cal", 0.05)
    items = items_of(data["test"])[:6]
    raw = load(str(out), device="cpu").compare_batch(items)
    rm = load(str(cal), device="cpu")
    assert rm.compare_batch(items, calibrated=False) == raw
    assert rm.compare_batch(items) == pytest.approx([sigmoid_logit(p, 0.05) for p in raw], rel=1e-9)

    # A bundle: each specialist's own temperature, or the bundle's over the specialists' raw P.
    pairs = [("What is 2 + 2?", "4", "5"), ("How do I pick a lock?", "I can't help.", "Use a rake.")] * 4
    router = DomainRouter.fit([route_text(*p) for p in pairs], ["math", "safety"] * 4)
    specialists = {"math": cpu(cloze_dir), "safety": cpu(with_temperature(cloze_dir, tmp_path / "s", SMALL_T))}
    bundle = RoutedRewardModel(router, specialists, RewardConfig(objective="route"))
    raw = [specialists["math"].compare(*pairs[0]), specialists["safety"].compare(*pairs[1], calibrated=False)]
    assert bundle.compare_batch(pairs[:2]) == pytest.approx([raw[0], sigmoid_logit(raw[1], SMALL_T)], rel=1e-9)
    assert bundle.compare_batch(pairs[:2], calibrated=False) == raw
    bundle.config.calibration = {"method": "temperature", "temperature": 0.01, "n": 0, "data": []}
    assert bundle.compare_batch(pairs[:2]) == pytest.approx([sigmoid_logit(p, 0.01) for p in raw], rel=1e-9)
