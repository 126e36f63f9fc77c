"""Calibration's arithmetic and ``tinyrm calibrate``: the metrics of every evaluation, fitting and saving
the temperature, and the calibration benchmark (where the calibrated P flows: ``test_calibrated_probabilities.py``).

The metrics are checked against a computation written from the issue's definitions (plain Python loops over
``--predictions``, ``calibration_helpers``); the temperature against ``sigmoid(logit(P) / T)`` computed with
``math``. The tiny random models answer close to 0.5, so the flow tests save a small temperature (1e-3): it
spreads their probabilities over tenths, far from the raw ones, without changing a decision.
"""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest

from tinyrm.cli import main
from tinyrm.evaluation.calibrate import bound_warning
from tinyrm.evaluation.calibration import T_MAX, T_MIN, calibration, fit_temperature, log_loss, pair_calibration
from tinyrm.temperature import scale

from .calibration_helpers import (
    SMALL_T,
    assert_block,
    cpu,
    items_of,
    reference_block,
    reference_pairs,
    run_benchmark,
    sigmoid_logit,
    with_temperature,
)


# ------------------------------------------------------------------ the arithmetic
def test_pair_calibration_is_the_issues_definition():
    probs = [0.95, 0.3, 0.5, 1.0, 0.0, 0.1, 0.9, 0.62, 0.71, 0.05]  # 0.1 and 0.9 sit on bin edges
    assert_block(pair_calibration(probs), reference_pairs(probs))
    block = pair_calibration(probs)
    assert sum(b["count"] for b in block["bins"]) == 2 * len(probs)  # every pair twice
    # The last bin is closed: 0.95, 1.0, 0.9 and the mirrors of 0.0, 0.05, 0.1 (1 - 0.1 == 0.9); the first
    # holds 0.0, 0.05 and the mirrors of 1.0 and 0.95; 0.1 and the mirror of 0.9 (1 - 0.9, 0.09999999999999998
    # in floating point, binned as the 0.1 it is) are in the second.
    assert block["bins"][9]["count"] == 6 and block["bins"][0]["count"] == 4 and block["bins"][1]["count"] == 2
    # Round probabilities mirror exactly: (0.2, 0.8) gives two points at 0.2 and two at 0.8, ECE 0.3.
    assert pair_calibration([0.2, 0.8])["ece"] == pytest.approx(0.3)
    assert [b["count"] for b in pair_calibration([0.2, 0.8])["bins"]] == [0, 0, 2, 0, 0, 0, 0, 0, 2, 0]
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


def test_a_temperature_at_a_bound_of_the_search_comes_with_a_warning():
    # Separated dev data (every pair right) has no finite best T: the search stops at its bound, and says so.
    sharp, wrong = fit_temperature([0.55, 0.6, 0.9] * 10)[0], fit_temperature([0.4, 0.45] * 10)[0]
    assert sharp == pytest.approx(T_MIN) and "lower bound" in bound_warning(sharp)
    assert wrong == pytest.approx(T_MAX) and "upper bound" in bound_warning(wrong)
    assert bound_warning(fit_temperature([0.9, 0.8, 0.3, 0.7])[0]) is None


# ------------------------------------------------------------------ every evaluation reports it
def test_eval_block_matches_an_independent_computation_from_predictions(cal_dir, calibration_data, tmp_path, capsys):
    out, predictions = tmp_path / "results.json", tmp_path / "predictions.jsonl"
    assert main(["eval", "--model", str(cal_dir), "--data", str(calibration_data["test"]), "--output", str(out),
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
    entry = record_eval(folder, results, data=[str(calibration_data["test"])])
    assert entry["calibration"] == {k: results["calibration"][k] for k in ("ece", "brier", "log_loss")}
    card = (folder / "README.md").read_text()
    assert "| ECE | Brier | log loss |" in card and f"{results['calibration']['log_loss']:.4f}" in card
    assert "## Calibration" in card and "temperature 0.001" in card


def test_a_heuristic_and_rewardbench_results_carry_the_block(calibration_data, tmp_path, capsys):
    assert main(["eval", "--baseline", "length", "--data", str(calibration_data["test"]), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    pairs = items_of(calibration_data["test"])
    probs = [1.0 if len(a) > len(b) else 0.0 if len(a) < len(b) else 0.5 for _, a, b in pairs]
    assert_block(results["calibration"], reference_pairs(probs))
    assert "temperature" not in results


# ------------------------------------------------------------------ tinyrm calibrate and its invariants
def test_calibrate_fits_saves_and_keeps_every_decision(cloze_dir, calibration_data, tmp_path, capsys):
    out = tmp_path / "calibrated"
    assert main(["calibrate", "--model", str(cloze_dir), "--data", str(calibration_data["dev"]), "--output", str(out),
                 "--json", "--no-progress", "--precision", "fp32"]) == 0
    report = json.loads(capsys.readouterr().out)
    t = report["temperature"]
    assert report["output"] == str(out) and not report["in_place"] and report["n"] == 24 and report["unit"] == "pairs"
    block = json.loads((out / "tinyrm.json").read_text())["calibration"]
    assert block["method"] == "temperature" and block["temperature"] == t and block["n"] == 24
    assert block["data"] == [str(calibration_data["dev"])]
    assert "calibration" not in json.loads((cloze_dir / "tinyrm.json").read_text())
    assert "## Calibration" in (out / "README.md").read_text()

    raw_model, calibrated_model = cpu(cloze_dir), cpu(out)
    dev, test = items_of(calibration_data["dev"]), items_of(calibration_data["test"])
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
        assert main(["eval", "--model", str(folder), "--data", str(calibration_data["test"]), "--json",
                     "--no-progress"]) == 0
        results[name] = json.loads(capsys.readouterr().out)
    assert results["raw"]["accuracy"] == results["cal"]["accuracy"]
    assert results["raw"]["length_bias"] == results["cal"]["length_bias"]
    assert {k: v["accuracy"] for k, v in results["raw"]["subsets"].items()} == \
           {k: v["accuracy"] for k, v in results["cal"]["subsets"].items()}
    # The calibrated folder round-trips through load and save_pretrained.
    calibrated_model.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "tinyrm.json").read_text())["calibration"] == block
    assert cpu(tmp_path / "again").compare_batch(dev) == cal_dev


def test_calibrate_in_place_and_its_errors(cloze_dir, calibration_data, tmp_path, capsys):
    folder = tmp_path / "rm"
    shutil.copytree(cloze_dir, folder)
    assert main(["calibrate", "--model", str(folder), "--data", str(calibration_data["dev"]), "--no-progress"]) == 0
    assert "in place" in capsys.readouterr().out
    assert json.loads((folder / "tinyrm.json").read_text())["calibration"]["n"] == 24
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    assert main(["calibrate", "--model", str(folder), "--data", str(calibration_data["dev"]), "--output",
                 str(tmp_path / "taken")]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_the_benchmark_reports_before_and_after_from_one_scoring_pass(cloze_dir, calibration_data, tmp_path):
    out = tmp_path / "bench.json"
    assert run_benchmark(["--model", str(cloze_dir), "--dev", str(calibration_data["dev"]),
                          "--test", str(calibration_data["test"]), "--precision", "fp32", "--output", str(out)]) == 0
    bench = json.loads(out.read_text())
    before, after = bench["before"], bench["after"]
    assert before["accuracy"] == after["accuracy"] and before["n"] == 24
    rm = cpu(cloze_dir)
    raw = rm.compare_batch(items_of(calibration_data["test"]))
    assert before["log_loss"] == pytest.approx(pair_calibration(raw)["log_loss"], abs=1e-9)
    assert after["ece"] == pytest.approx(pair_calibration(scale(raw, bench["temperature"]))["ece"], abs=1e-6)


def test_no_temperature_and_a_temperature_of_one_change_nothing(cloze_dir, calibration_data, tmp_path):
    assert "calibration" not in json.loads((cloze_dir / "tinyrm.json").read_text())
    one = with_temperature(cloze_dir, tmp_path / "one", 1.0)
    items = items_of(calibration_data["test"])
    plain, unit = cpu(cloze_dir), cpu(one)
    raw = plain.compare_batch(items)
    assert plain.compare_batch(items, calibrated=True) == raw == unit.compare_batch(items)
    assert unit.rank(items[0][0], ["x", "yy", "zzz"], method="round_robin") == \
           plain.rank(items[0][0], ["x", "yy", "zzz"], method="round_robin")
