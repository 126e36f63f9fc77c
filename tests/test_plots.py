"""Pictures of results (``tinyrm eval --plot``, ``tinyrm report``) and ``tinyrm eval``'s progress bar."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from tinyrm.cli import main
from tinyrm.data import load_pairs
from tinyrm.evaluation.heuristics import LENGTH_REFERENCE, heuristic_results, length_reference
from tinyrm.evaluation.plots import find_calibration, plot_results, wilson_interval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def open_png(path) -> tuple[int, int]:
    """A real PNG that Pillow decodes whole: its (width, height)."""
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # decodes every pixel: a truncated file fails here
        return image.size


def test_wilson_interval_matches_the_textbook_values():
    # Wilson (1927); 8 of 10 at 95%: (0.4902, 0.9433); 0 of 10: (0, 0.2775); 10 of 10: (0.7225, 1).
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)  # narrower than Wald's 0.098
    # The bounds never cross the estimate (rounding left 0/100's low bound at 3.5e-18: a negative error bar).
    for n in range(1, 1001):
        for correct in (0, n):
            low, high = wilson_interval(correct, n)
            assert low <= correct / n <= high


def test_a_subset_all_right_or_all_wrong_is_drawn(tmp_path):
    results = _results_with_everything()
    results["subsets"] = {"a": {"accuracy": 0.0, "n": 100}, "b": {"accuracy": 1.0, "n": 10}}
    results["length_bias"]["chosen_longer"] = {"n": 10, "accuracy": 1.0}
    results["length_bias"]["chosen_shorter"] = {"n": 5, "accuracy": 0.0}
    report = plot_results(results, tmp_path / "edges.png")
    assert report.panels == ["reliability", "length_bias", "subsets"]
    open_png(tmp_path / "edges.png")


def test_eval_plot_writes_a_png_and_the_length_heuristic_goes_in_the_results(tiny_bert, pairs_file, tmp_path, capsys):
    out, picture = tmp_path / "results.json", tmp_path / "eval.png"
    assert main(["eval", "--model", tiny_bert, "--data", str(pairs_file), "--output", str(out), "--plot",
                 str(picture), "--max-length", "96", "--no-progress"]) == 0
    assert f"wrote {picture}" in capsys.readouterr().out
    width, height = open_png(picture)
    assert width >= 1000 and height >= 600
    results = json.loads(out.read_text())
    pairs = load_pairs([str(pairs_file)]).pairs
    # The length heuristic's figures are those of `tinyrm eval --baseline length` on the same pairs.
    heuristic = heuristic_results("length", pairs)
    reference = results[LENGTH_REFERENCE]
    assert reference == length_reference(pairs)
    assert reference["accuracy"] == heuristic["accuracy"] and reference["n"] == len(pairs)
    for group in ("subsets", "domains"):
        assert set(reference[group]) == set(results[group])
        for name, row in reference[group].items():
            assert row == {"accuracy": heuristic[group][name]["accuracy"], "n": heuristic[group][name]["n"]}


def test_plot_in_json_mode_keeps_stdout_for_the_document(tiny_bert, pairs_file, tmp_path, capsys):
    picture = tmp_path / "p.png"
    assert main(["eval", "--model", tiny_bert, "--data", str(pairs_file), "--json", "--plot", str(picture),
                 "--max-length", "96", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["n"] == 24 and f"wrote {picture}" in captured.err
    open_png(picture)


def _results_with_everything() -> dict:
    bins = [{"count": 0, "mean_predicted": None, "observed": None} for _ in range(10)]
    bins[2] = {"count": 30, "mean_predicted": 0.25, "observed": 0.4}
    bins[7] = {"count": 30, "mean_predicted": 0.75, "observed": 0.6}
    return {
        "model": "m", "accuracy": 0.6, "n": 30,
        "length_bias": {"chosen_longer": {"n": 12, "accuracy": 0.75}, "chosen_shorter": {"n": 10, "accuracy": 0.4},
                        "equal_length": {"n": 8}, "agrees_with_longer": 0.68},
        "calibration": {"ece": 0.15, "brier": 0.24, "log_loss": 0.68, "bins": bins},
        "subsets": {"a": {"accuracy": 0.5, "n": 10}, "b": {"accuracy": 0.65, "n": 20}},
        "domains": {"chat": {"accuracy": 0.6, "n": 30}},
        LENGTH_REFERENCE: {"accuracy": 0.4, "n": 30, "subsets": {"a": {"accuracy": 0.3, "n": 10},
                                                                 "b": {"accuracy": 0.45, "n": 20}}, "domains": {}},
    }


def test_report_draws_a_saved_results_json_with_and_without_calibration(tmp_path, capsys):
    full = _results_with_everything()
    (tmp_path / "full.json").write_text(json.dumps(full))
    assert main(["report", str(tmp_path / "full.json"), "--output", str(tmp_path / "full.png")]) == 0
    text = capsys.readouterr().out
    assert "(reliability, length_bias, subsets)" in text and "skipped" not in text
    size = open_png(tmp_path / "full.png")

    old = {k: v for k, v in full.items() if k not in ("calibration", LENGTH_REFERENCE)}  # an older tinyrm's file
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert main(["report", str(tmp_path / "old.json"), "--output", str(tmp_path / "sub" / "old.png")]) == 0
    text = capsys.readouterr().out
    assert "reliability diagram skipped: no calibration block" in text and f"no {LENGTH_REFERENCE}" in text
    assert "(length_bias, subsets)" in text
    assert open_png(tmp_path / "sub" / "old.png")[0] == size[0]  # same layout; the panel holds a note instead
    assert (tmp_path / "full.png").read_bytes() != (tmp_path / "sub" / "old.png").read_bytes()


def test_report_of_a_process_evaluation_draws_its_step_calibration(tmp_path):
    block = _results_with_everything()["calibration"]
    report = plot_results({"model": "prm", "evaluation": "process", "steps": {"auroc": 0.7, "calibration": block}},
                          tmp_path / "steps.png")
    assert report.panels == ["reliability"] and len(report.notes) == 2
    assert find_calibration({"steps": {"calibration": block}}) == {**block, "what": "steps"}
    assert find_calibration({"calibration": block, "steps": {"calibration": block}})["what"] == "pairs"
    open_png(tmp_path / "steps.png")


def test_report_refuses_what_it_cannot_draw(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["report", str(tmp_path / "bad.json"), "--output", str(tmp_path / "x.png")]) == 2
    assert "not a JSON file" in capsys.readouterr().err
    (tmp_path / "empty.json").write_text(json.dumps({"model": "m"}))
    assert main(["report", str(tmp_path / "empty.json"), "--output", str(tmp_path / "x.png")]) == 2
    assert "nothing to draw" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    assert main(["report", str(tmp_path / "missing.json"), "--output", str(tmp_path / "x.png")]) == 2


def test_plot_is_refused_for_process_evaluations(pairs_file, tmp_path, capsys):
    assert main(["eval", "--objective", "process", "--data", str(pairs_file), "--plot", str(tmp_path / "p.png")]) == 2
    assert "--plot draws pairwise results" in capsys.readouterr().err


def test_heuristic_eval_plots_too(pairs_file, tmp_path):
    assert main(["eval", "--baseline", "length", "--data", str(pairs_file), "--plot", str(tmp_path / "h.png")]) == 0
    open_png(tmp_path / "h.png")


def test_eval_shows_the_progress_bar_on_stderr_unless_told_not_to(tiny_bert, pairs_file, monkeypatch, capsys):
    monkeypatch.setattr("tinyrm.evaluation.evaluate.CHUNK_PAIRS", 10)  # 24 pairs: three pieces
    args = ["eval", "--model", tiny_bert, "--data", str(pairs_file), "--max-length", "64", "--json"]
    assert main(args) == 0
    shown = capsys.readouterr()
    assert "eval" in shown.err and "24/24" in shown.err and "pairs/s" in shown.err
    assert main([*args, "--no-progress"]) == 0
    silent = capsys.readouterr()
    assert "pairs/s" not in silent.err and "24/24" not in silent.err
    # The bar changes nothing in the results, and stdout holds the JSON document alone either way.
    with_bar, without = json.loads(shown.out), json.loads(silent.out)
    assert with_bar == without and with_bar["n"] == 24


def test_scoring_in_pieces_gives_the_probabilities_of_one_call(tiny_bert, pairs_file, monkeypatch):
    from tinyrm import RewardModel
    from tinyrm.evaluation.evaluate import pair_probs

    monkeypatch.setattr("tinyrm.evaluation.evaluate.CHUNK_PAIRS", 7)
    pairs = load_pairs([str(pairs_file)]).pairs
    rm = RewardModel.from_pretrained(tiny_bert, device="cpu", max_length=64)
    whole = rm.compare_batch([(p.prompt, p.chosen, p.rejected) for p in pairs])
    pieces = pair_probs(rm, pairs, progress=False)
    assert len(pieces) == len(whole) and all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(pieces, whole))
