"""Every place a probability flows to uses the saved temperature: compare, rank, the TRL reward, ``tinyrm
score --min-prob``, the HTTP service, the CLI's ``--no-calibration``, process rewards, classifiers and routed
bundles (the arithmetic and ``tinyrm calibrate``: ``test_calibration.py``).

Each is checked against ``sigmoid(logit(P) / T)`` computed with ``math`` (``calibration_helpers``) from the
same model's raw P; a small temperature (1e-3) spreads the tiny random models' near-0.5 answers over tenths.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tinyrm import ProcessRewardModel, load
from tinyrm.cli import main
from tinyrm.config import RewardConfig
from tinyrm.pairwise.groups import Answers
from tinyrm.pairwise.rank import rank_candidates

from .calibration_helpers import (
    SMALL_T,
    assert_block,
    cpu,
    items_of,
    reference_block,
    run_benchmark,
    sigmoid_logit,
    with_temperature,
)


# ------------------------------------------------------------------ every place probabilities flow to
def test_compare_rank_and_rewards_get_calibrated_probabilities(cal_dir, calibration_data):
    from tinyrm.integrations.trl import PairwiseReward

    rm = cpu(cal_dir)
    items = items_of(calibration_data["test"])[:8]
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


def test_score_min_prob_filters_on_calibrated_probabilities(cal_dir, calibration_data, tmp_path):
    from tinyrm.scoring import ScoreConfig, score

    rm = cpu(cal_dir)
    items = items_of(calibration_data["test"])
    raw = rm.compare_batch(items, calibrated=False)
    calibrated = [sigmoid_logit(p, SMALL_T) for p in raw]
    # A threshold between a pair's raw and calibrated P: kept with calibration, dropped without.
    above = [(r, c) for r, c in zip(raw, calibrated) if c > r > 0.5]
    assert above
    threshold = (above[0][0] + above[0][1]) / 2
    kept = {}
    for calibrated_flag in (True, False):
        out = tmp_path / f"scored-{calibrated_flag}.jsonl"
        score(ScoreConfig(model=str(cal_dir), data=[str(calibration_data["test"])], output=str(out), min_prob=threshold,
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


def test_cli_no_calibration_gives_the_raw_probability(cal_dir, calibration_data, tmp_path, capsys):
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
        assert main(["eval", "--model", str(cal_dir), "--data", str(calibration_data["test"]),
                     "--predictions", str(predictions), "--json", "--no-progress", "--precision", "fp32", *flag]) == 0
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

    from .process_helpers import BAD, GOOD, PROBLEM, rows_file

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
    from .process_helpers import GOOD, PROBLEM

    rm = ProcessRewardModel.from_pretrained(str(cal_dir), device="cpu")
    assert rm.score_steps(PROBLEM, GOOD) == rm.score_steps(PROBLEM, GOOD, calibrated=False)


def test_classifier_and_route_apply_their_temperature(tiny_bert, cloze_dir, calibration_data, tmp_path):
    from tinyrm.pairwise.route import DomainRouter, RoutedRewardModel, route_text
    from tinyrm.train import TrainConfig, train

    out = tmp_path / "classifier"
    train(TrainConfig(model=tiny_bert, data=[str(calibration_data["dev"])], output=str(out), objective="classifier",
                      batch_size=8, micro_batch_size=4, max_steps=1, max_length=96, save_steps=0, precision="fp32"))
    cal = with_temperature(out, tmp_path / "classifier-cal", 0.05)
    items = items_of(calibration_data["test"])[:6]
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
