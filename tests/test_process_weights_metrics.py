"""Process rewards: class-weighted step training (sklearn's balanced weights, the hand-computed weighted loss,
the saved weights, the CLI flag), the step metrics against sklearn and hand-made scores, the
``benchmarks/process_rewards.py`` run end to end, and a prefix model reading its verdict at [CLS] (data,
encoding and the train/eval flow: ``test_process.py``)."""

import json

import pytest

from tinyrm import ProcessRewardModel, RewardModel
from tinyrm.cli import main
from tinyrm.process.data import ProcessRow, load_rows, split_questions
from tinyrm.process.evaluation import auroc, binary_metrics, results_table, step_metrics
from tinyrm.process.scoring import spec
from tinyrm.process.train import (
    ProcessCollator,
    ProcessDataset,
    WeightedClozeScorer,
    class_weights,
    parse_class_weight,
)
from tinyrm.train import TrainConfig, train

from .process_helpers import GOOD, PROBLEM, rows_file


# ------------------------------------------------------------------ class weighting
def test_class_weights_are_sklearns_balanced_weights():
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    labels = [0, 0, 0, 0, 0, 0, 1, 1]  # 6 correct, 2 incorrect verdicts
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=np.array(labels))
    assert class_weights(labels, "balanced") == pytest.approx(list(expected))
    assert class_weights(labels, "balanced") == pytest.approx([8 / (2 * 6), 8 / (2 * 2)])
    assert class_weights(labels, "none") is None
    assert class_weights(labels, "3") == [1.0, 3.0] == class_weights(labels, 3.0)
    assert class_weights([0, 0, 0], "balanced") is None  # one class: nothing to rebalance
    assert parse_class_weight(" Balanced ") == "balanced"
    for bad in ("heavy", "0", "-1", "nan", "inf"):
        with pytest.raises(ValueError, match="step_class_weight"):
            parse_class_weight(bad)


def test_weighted_loss_is_the_hand_computed_weighted_cross_entropy(tiny_bert, tmp_path):
    import math

    import torch

    from tinyrm.pairwise.model import ClozeScorer

    bert_rm = ProcessRewardModel.from_pretrained(tiny_bert, device="cpu")  # zero-shot: the untrained process prompt
    rows = load_rows([str(rows_file(tmp_path / "p.jsonl"))]).rows
    dataset = ProcessDataset(rows, spec(bert_rm).encoder, "process", "full")
    batch = ProcessCollator(bert_rm.tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    labels = batch["labels"].tolist()
    assert 0 in labels and 1 in labels
    weights = [0.25, 3.0]
    scorer = WeightedClozeScorer(bert_rm.model, bert_rm.answer_ids, weights)
    with torch.no_grad():
        out = scorer(**batch)
        plain = ClozeScorer(bert_rm.model, bert_rm.answer_ids)(**batch)
    logits = out["logits"].tolist()
    assert len(logits) == len(labels) and out["logits"] == pytest.approx(plain["logits"])
    numerator = denominator = 0.0
    for (a, b), y in zip(logits, labels):
        log_z = math.log(math.exp(a) + math.exp(b))
        numerator += weights[y] * (log_z - (a, b)[y])
        denominator += weights[y]
    assert out["loss"].item() == pytest.approx(numerator / denominator, rel=1e-5)
    assert out["loss"].item() != pytest.approx(plain["loss"].item(), rel=1e-3)
    # equal weights: exactly the unweighted loss, for both loss kinds
    for kind in ("pair", "full-vocab"):
        with torch.no_grad():
            even = WeightedClozeScorer(bert_rm.model, bert_rm.answer_ids, [1.0, 1.0], loss=kind)(**batch)
            base = ClozeScorer(bert_rm.model, bert_rm.answer_ids, loss=kind)(**batch)
        assert even["loss"].item() == pytest.approx(base["loss"].item(), rel=1e-5)
        assert even["logits"].shape == (len(labels), 2)


# ------------------------------------------------------------------ metrics
def test_auroc_matches_sklearn_and_needs_both_classes():
    import random

    from sklearn.metrics import roc_auc_score

    rng = random.Random(0)
    labels = [rng.random() < 0.3 for _ in range(50)]
    labels[0], labels[1] = True, False
    scores = [round(rng.random(), 1) for _ in range(50)]  # rounded: plenty of ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert auroc([0.1, 0.4, 0.4, 0.9], [False, True, False, True]) == pytest.approx(0.875)
    assert auroc([0.2, 0.8], [True, True]) is None
    assert auroc([0.2, 0.8], [False, False]) is None
    assert auroc([], []) is None


def test_first_error_accuracy_on_hand_made_scores():
    from rich.console import Console

    rows = [
        ProcessRow("w1", "q1", ["a", "b", "c"], [True, False, None], False),  # flagged at the error: hit
        ProcessRow("w2", "q2", ["a", "b"], [False, None], False),  # first flag one step late: miss
        ProcessRow("w3", "q3", ["a", "b"], [True, False], False),  # nothing flagged: miss
        ProcessRow("c1", "q1", ["a", "b"], [True, True], True, kind="reference"),  # no flag: hit
        ProcessRow("c2", "q2", ["a", "b", "c"], [True, True, True], True),  # a correct step flagged: miss
    ]
    scores = [[0.9, 0.2, 0.8], [0.7, 0.1], [0.9, 0.8], [0.9, 0.6], [0.9, 0.4, 0.9]]
    metrics = step_metrics(rows, scores)
    assert metrics["first_error_accuracy"] == pytest.approx(1 / 3) and metrics["first_error_n"] == 3
    assert metrics["no_error_accuracy"] == pytest.approx(1 / 2) and metrics["no_error_n"] == 2
    assert metrics["steps"]["n"] == 10 and metrics["steps"]["n_incorrect"] == 3
    # the threshold decides what "flagged" means: at 0.65, row c1's 0.6 is flagged too
    strict = step_metrics(rows, scores, threshold=0.65)
    assert strict["no_error_accuracy"] == 0.0 and strict["first_error_accuracy"] == pytest.approx(1 / 3)
    results = {"evaluation": "process", "model": "m", "model_objective": "process", "context": "prefix",
               "aggregate": "min", **metrics,
               "solutions": binary_metrics([min(s) for s in scores], [r.solution_correct for r in rows])}
    console = Console(record=True, width=200)
    console.print(results_table(results))
    text = console.export_text()
    assert "first-error-step accuracy" in text and "0.3333" in text and "no-error accuracy" in text


def test_metrics_without_labels_are_none_not_zero():
    # No labelled step (or solution): no figure, which the table shows as "-", never an accuracy of 0.
    empty = binary_metrics([], [])
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["balanced_accuracy"] is None
    assert empty["auroc"] is None and empty["calibration"]["ece"] is None


# ------------------------------------------------------------------ class-weighted training
def test_balanced_training_saves_its_weights(tiny_bert, tmp_path):
    data = rows_file(tmp_path / "p.jsonl")
    out = tmp_path / "prm"
    result = train(TrainConfig(model=tiny_bert, data=[str(data)], output=str(out), objective="process",
                               step_class_weight="balanced", batch_size=4, micro_batch_size=4, max_steps=2,
                               max_length=128, save_steps=0))
    assert result.steps == 2
    extra = json.loads((out / "tinyrm.json").read_text())["extra"]
    # 8 correct / 2 incorrect verdicts (test_dataset_trains_only_labelled_steps): 10 / (2 * n_class)
    assert extra["step_class_weight"]["setting"] == "balanced"
    assert extra["step_class_weight"]["weights"] == pytest.approx({"correct": 10 / 16, "incorrect": 10 / 4})
    assert extra["train"]["step_class_weight"] == "balanced"
    assert all(record.get("loss", 0.0) >= 0.0 for record in map(json.loads, (out / "metrics.jsonl").open()))


def test_cli_step_class_weight_flag(tiny_bert, tmp_path, capsys):
    data = str(rows_file(tmp_path / "p.jsonl"))
    common = ["train", "--objective", "process", "--model", tiny_bert, "--data", data, "--max-steps", "1",
              "--batch-size", "2", "--micro-batch-size", "2", "--max-length", "128", "--save-steps", "0"]
    assert main([*common, "--output", str(tmp_path / "w"), "--step-class-weight", "2.5"]) == 0
    saved = json.loads((tmp_path / "w" / "tinyrm.json").read_text())["extra"]["step_class_weight"]
    assert saved == {"setting": 2.5, "weights": {"correct": 1.0, "incorrect": 2.5}}
    assert main([*common, "--output", str(tmp_path / "bad"), "--step-class-weight", "heavy"]) == 2
    assert "step_class_weight" in capsys.readouterr().err


# ------------------------------------------------------------------ benchmarks/process_rewards.py
def synthetic_process_file(path, n_questions=8):
    """Per question: a wrong solution whose first error is step 2, and the reference solution."""
    rows = []
    for i in range(n_questions):
        a, b = 3 + i, 4 + 2 * i
        rows.append({"id": f"q{i}", "question": f"Ann has {a} pens and gets {b} more. How many pens does she have?",
                     "steps": [f"She starts with {a} pens.", f"She gets {b} more, so {a} * {b} = {a * b}.",
                               f"The answer is: {a * b}"],
                     "first_error_step": 2, "solution_correct": False,
                     "reference_solution": f"She starts with {a} pens.\n{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n"
                                           f"#### {a + b}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_process_rewards_benchmark_end_to_end(tiny_bert, tmp_path, capsys, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "process_rewards.py"
    module_spec = importlib.util.spec_from_file_location("process_rewards", script)
    bench = importlib.util.module_from_spec(module_spec)
    monkeypatch.setitem(sys.modules, "process_rewards", bench)  # dataclasses look their module up
    module_spec.loader.exec_module(bench)
    data = synthetic_process_file(tmp_path / "steps.jsonl")
    rows = load_rows([str(data)]).rows
    train_rows, test_rows = split_questions(rows, 0.5, seed=0)
    assert train_rows and test_rows  # the fixture splits into two non-empty sides
    out = tmp_path / "bench"
    code = bench.main(["--data", str(data), "--model", tiny_bert, "--test-fraction", "0.5", "--steps", "2",
                       "--pairs-per-step", "4", "--max-length", "128", "--max-rows", "4", "--freeze-layers", "0",
                       "--step-class-weight", "balanced", "--workdir", str(out), "--output", str(out / "r.json")])
    assert code == 0
    results = json.loads((out / "r.json").read_text())
    assert results["split"]["train_rows"] == 4 and results["split"]["train_rows_available"] == len(train_rows)
    assert sum(1 for _ in (out / "train.jsonl").open()) == 4
    assert results["split"]["test_rows"] == len(test_rows)
    assert results["train"]["steps"] == 2 and results["train"]["step_class_weight"]["setting"] == "balanced"
    ev = results["eval"]
    n_test_questions = len({r.question for r in test_rows})
    assert ev["first_error_n"] == ev["no_error_n"] == n_test_questions  # one wrong + one reference each
    assert ev["steps"]["n"] == sum(label is not None for r in test_rows for label in r.labels)
    assert ev["steps"]["auroc"] is None or 0.0 <= ev["steps"]["auroc"] <= 1.0
    methods = [row["method"] for row in results["selection"]]
    assert methods[:2] == ["random", "fewest steps"] and len(methods) == 2 + 6
    assert results["split"]["selection_questions"] == n_test_questions
    assert results["selection"][0]["accuracy"] == pytest.approx(0.5)
    printed = capsys.readouterr().out
    assert "first-error-step accuracy" in printed and "fewest steps" in printed


def test_prefix_process_model_can_read_its_verdict_at_cls(tiny_bert, tmp_path):
    """read=cls (the default for a head-less backbone) applies where each sequence holds one verdict."""
    import torch

    from tinyrm.backbone import mask_logits, unwrap_peft
    from tinyrm.process.prompt import collate
    from tinyrm.process.train import process_read

    data = rows_file(tmp_path / "p.jsonl")
    out = tmp_path / "cls"
    train(TrainConfig(model=tiny_bert, data=[str(data)], output=str(out), objective="process", read="cls",
                      batch_size=4, micro_batch_size=4, max_steps=2, max_length=128, save_steps=0, precision="fp32"))
    rm = RewardModel.from_pretrained(str(out), device="cpu")
    assert rm.config.read == "cls"
    scores = rm.score_steps(PROBLEM, GOOD)
    # the verdicts equal the answer logits read at position 0 of each prefix sequence
    encoder = spec(rm).encoder
    problem_ids, step_ids = encoder.tokenize(PROBLEM, GOOD)
    encodings = [encoder.encode_step(problem_ids, step_ids, k) for k in range(len(GOOD))]
    batch = collate(encodings, rm.tokenizer.pad_token_id or 0)
    def read_at(positions):
        with torch.no_grad():
            logits = mask_logits(unwrap_peft(rm.model).eval(), batch["input_ids"], batch["attention_mask"],
                                 positions, token_ids=spec(rm).answer_ids, mask_rows=batch["mask_rows"])
        return torch.softmax(logits.float(), -1)[:, 0]

    at_cls, at_mask = read_at(torch.zeros_like(batch["mask_positions"])), read_at(batch["mask_positions"])
    got = torch.tensor(scores)
    # scoring may run in bf16, so compare distances: the verdicts are the [CLS] reads, not the mask ones
    assert ((got - at_cls).abs() < (got - at_mask).abs()).all(), (got, at_cls, at_mask)
    with pytest.raises(ValueError, match="prefix"):
        rm.score_steps(PROBLEM, GOOD, context="full")
    full = TrainConfig(model=tiny_bert, objective="process", context="full", read="cls")
    assert process_read(full) == "mask"  # a full window reads several masks: [CLS] cannot hold them all
