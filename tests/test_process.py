import json

import pytest

from tinyrm import ProcessRewardModel, RewardModel
from tinyrm.cli import main
from tinyrm.data import DataError
from tinyrm.process.data import ProcessRow, load_rows, parse_row, split_questions, step_labels
from tinyrm.process.evaluation import auroc, binary_metrics, results_table, step_metrics
from tinyrm.process.prompt import STEP_TEMPLATES, StepEncoder
from tinyrm.process.scoring import spec
from tinyrm.process.train import (
    ProcessCollator,
    ProcessDataset,
    WeightedClozeScorer,
    class_weights,
    parse_class_weight,
)
from tinyrm.train import TrainConfig, train

from .conftest import require_shared_data

PROBLEM = "Tom has 3 apples and buys 4 more. How many apples does he have?"
GOOD = ["He starts with 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "The answer is: 7"]
BAD = ["He starts with 3 apples.", "He buys 4 more, so 3 * 4 = 12.", "The answer is: 12"]


def rows_file(path):
    rows = [
        {"id": "a", "question": PROBLEM, "steps": [f"Step {i + 1}: {s}" for i, s in enumerate(BAD)],
         "first_error_step": 2, "solution_correct": False, "reference_solution": "\n".join(GOOD)},
        {"id": "b", "question": "What is 10 - 4?", "steps": ["10 - 4 = 5.", "The answer is: 5"],
         "first_error_step": 1, "solution_correct": False, "reference_solution": "10 - 4 = <<10-4=6>>6\n#### 6"},
        {"id": "c", "question": "What is 2 * 5?", "steps": ["2 * 5 = 10.", "The answer is: 10"],
         "first_error_step": None, "solution_correct": True},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------ labelling rule and loading
def test_labelling_rule():
    assert step_labels(5, 3, False) == [True, True, False, None, None]
    assert step_labels(2, 1, False) == [False, None]
    assert step_labels(3, None, True) == [True, True, True]
    assert step_labels(3, None, False) == [None, None, None]  # wrong, error not located


def test_parse_row_cleans_steps_and_carries_labels():
    row = parse_row({"question": "q", "steps": ["Step 1: Let's think step by step.", "Step 2: a = <<1+1=2>>2",
                                                "Step 3: #### 2", "Step 4: The answer is: 2"],
                     "first_error_step": 3, "solution_correct": False})
    # filler dropped, calculator marks removed, the repeated answer line kept once
    assert row.steps == ["a = 2", "The answer is: 2"]
    assert row.labels == [True, False]
    assert row.first_error == 1


@pytest.mark.parametrize(("row", "message"), [
    ({"question": "q", "steps": ["a"], "first_error_step": 2, "solution_correct": False}, "first_error_step"),
    ({"question": "q", "steps": ["a"], "first_error_step": 1, "solution_correct": True}, "solution_correct"),
    ({"question": "q", "steps": [], "first_error_step": None, "solution_correct": True}, "steps"),
    ({"question": "", "steps": ["a"], "first_error_step": None, "solution_correct": True}, "question"),
])
def test_bad_rows_name_the_problem(row, message):
    with pytest.raises(ValueError, match=message):
        parse_row(row)


def test_load_rows_adds_references_and_reports_file_line(tmp_path):
    rows = load_rows([str(rows_file(tmp_path / "p.jsonl"))]).rows
    references = [r for r in rows if r.kind == "reference"]
    assert len(rows) == 5 and len(references) == 2
    assert references[1].steps == ["10 - 4 = 6", "The answer is: 6"]
    assert all(label is True for r in references for label in r.labels)
    bad = tmp_path / "bad.jsonl"
    bad.write_text((tmp_path / "p.jsonl").read_text() + '{"question": "q", "steps": "oops"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:4: 'steps'"):
        load_rows([str(bad)])
    assert load_rows([str(bad)], skip_bad_rows=True).skipped == 1


def test_split_holds_out_questions(tmp_path):
    rows = load_rows([str(rows_file(tmp_path / "p.jsonl"))]).rows * 20
    for seed in range(5):
        train_rows, test_rows = split_questions(rows, 0.5, seed=seed)
        assert not {r.question for r in train_rows} & {r.question for r in test_rows}
        assert len(train_rows) + len(test_rows) == len(rows)


# ------------------------------------------------------------------ encoding and truncation
@pytest.fixture(scope="module")
def bert_rm(tiny_bert):
    return ProcessRewardModel.from_pretrained(tiny_bert, device="cpu")  # zero-shot: the untrained process prompt


def encoder_for(rm, max_length, template="process"):
    return StepEncoder(rm.tokenizer, STEP_TEMPLATES[template], "Check the solution.", max_length)


def decode(rm, ids):
    return rm.tokenizer.decode(ids)


def test_truncation_keeps_the_judged_step_and_drops_oldest_steps(bert_rm):
    steps = [f"step number {w} says something long about apples and pears" for w in
             ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")]
    enc = encoder_for(bert_rm, 80)
    problem_ids, step_ids = enc.tokenize(PROBLEM, steps)
    out = enc.encode_step(problem_ids, step_ids, 5)
    text = decode(bert_rm, out.input_ids)
    assert out.truncated and len(out.input_ids) <= 80
    assert out.input_ids[out.mask_positions[0]] == bert_rm.tokenizer.mask_token_id
    assert out.input_ids.count(bert_rm.tokenizer.mask_token_id) == 1
    assert steps[5] in text  # the judged step is whole
    assert "alpha" not in text and "..." in text  # the oldest step went first, with a marker
    assert text.rstrip().endswith("is the last step correct? [MASK] [SEP]")
    # the most recent context step is kept before older ones
    kept = [w for w in ("alpha", "bravo", "charlie", "delta", "echo") if w in text]
    assert kept == ["alpha", "bravo", "charlie", "delta", "echo"][-len(kept):]


def test_long_problem_is_shortened_before_the_judged_step(bert_rm):
    enc = encoder_for(bert_rm, 64)
    problem_ids, step_ids = enc.tokenize("apples " * 200 + "how many?", ["three plus four is seven"])
    out = enc.encode_step(problem_ids, step_ids, 0)
    assert len(out.input_ids) <= 64 and "three plus four is seven" in decode(bert_rm, out.input_ids)


def test_mask_text_in_user_input_adds_no_answer_slot(bert_rm):
    enc = encoder_for(bert_rm, 128)
    problem_ids, step_ids = enc.tokenize("what is [MASK]?", ["it is [MASK]", "so [MASK]"])
    out = enc.encode_step(problem_ids, step_ids, 1)
    assert out.input_ids.count(bert_rm.tokenizer.mask_token_id) == 1


def test_full_mode_one_mask_per_step_and_windows(bert_rm):
    steps = [f"step {i} adds {i} apples to the basket" for i in range(8)]
    roomy = encoder_for(bert_rm, 512)
    problem_ids, step_ids = roomy.tokenize(PROBLEM, steps)
    [single] = roomy.encode_full(problem_ids, step_ids)
    assert single.targets == list(range(8)) and not single.truncated
    assert all(single.input_ids[m] == bert_rm.tokenizer.mask_token_id for m in single.mask_positions)
    tight = encoder_for(bert_rm, 100)
    problem_ids, step_ids = tight.tokenize(PROBLEM, steps)
    windows = tight.encode_full(problem_ids, step_ids)
    assert len(windows) > 1 and all(len(w.input_ids) <= 100 for w in windows)
    assert sorted(t for w in windows for t in w.targets) == list(range(8))  # every step read once


# ------------------------------------------------------------------ prefix vs full on a tiny model
def test_prefix_vs_full(tiny_model):
    rm = ProcessRewardModel.from_pretrained(tiny_model, device="cpu")
    prefix = rm.score_steps(PROBLEM, GOOD, context="prefix")
    full = rm.score_steps(PROBLEM, GOOD, context="full")
    assert len(prefix) == len(full) == 3
    assert all(0.0 <= p <= 1.0 for p in prefix + full)
    # prefix: a step's score ignores later steps (and equals scoring the cut solution)
    changed = rm.score_steps(PROBLEM, GOOD[:2] + ["The answer is: 99, or maybe 100"], context="prefix")
    assert changed[:2] == pytest.approx(prefix[:2], abs=1e-5)
    assert rm.score_steps(PROBLEM, GOOD[:2], context="prefix")[1] == pytest.approx(prefix[1], abs=1e-5)
    # full: one sequence, so step 1's verdict also sees the later steps
    full_changed = rm.score_steps(PROBLEM, GOOD[:2] + ["The answer is: 99, or maybe 100"], context="full")
    assert full_changed[0] != pytest.approx(full[0], abs=1e-7)
    # a string is split into steps
    assert rm.score_steps(PROBLEM, "Step 1: " + GOOD[0] + " Step 2: " + GOOD[1]) == pytest.approx(prefix[:2], abs=1e-5)


def test_solution_scores_and_rerank(bert_rm):
    steps = bert_rm.score_steps(PROBLEM, BAD)
    assert bert_rm.score_solution(PROBLEM, BAD, aggregate="min") == pytest.approx(min(steps))
    assert bert_rm.score_solution(PROBLEM, BAD, aggregate="last") == pytest.approx(steps[-1])
    assert bert_rm.score_solution(PROBLEM, [], aggregate="product") == 1.0
    ranking = bert_rm.rerank(PROBLEM, [BAD, GOOD, "\n".join(GOOD)], aggregate="mean")
    assert sorted(i for i, _ in ranking) == [0, 1, 2]
    assert [s for _, s in ranking] == sorted((s for _, s in ranking), reverse=True)
    with pytest.raises(ValueError, match="aggregation"):
        bert_rm.score_solution(PROBLEM, BAD, aggregate="median")


def test_dataset_trains_only_labelled_steps(bert_rm, tmp_path):
    rows = load_rows([str(rows_file(tmp_path / "p.jsonl"))]).rows
    encoder = spec(bert_rm).encoder
    prefix = ProcessDataset(rows, encoder, "process", "prefix")
    full = ProcessDataset(rows, encoder, "process", "full")
    outcome = ProcessDataset(rows, encoder, "outcome", "prefix")
    # row a: 1 correct + first error (step 3 unlabelled); b: first error; c: 2 correct; references 3 + 2
    assert prefix.label_counts() == (8, 2) == full.label_counts()
    assert len(prefix) == 10 and len(full) == 5  # full: one sequence per solution
    assert outcome.label_counts() == (3, 2)


# ------------------------------------------------------------------ train, save, load, eval end to end
@pytest.mark.parametrize(("objective", "context"), [("process", "prefix"), ("process", "full"), ("outcome", "prefix")])
def test_train_load_and_eval(tiny_bert, tmp_path, objective, context, capsys):
    data = rows_file(tmp_path / "p.jsonl")
    out = tmp_path / objective
    result = train(TrainConfig(model=tiny_bert, data=[str(data)], output=str(out), objective=objective,
                               context=context, batch_size=4, micro_batch_size=4, max_steps=2, max_length=128,
                               save_steps=0))
    assert result.steps == 2
    saved = json.loads((out / "tinyrm.json").read_text())
    assert saved["objective"] == objective and saved["answer_tokens"] == ["yes", "no"]
    assert saved["template"]["name"] == objective and saved["extra"]["process"]["context"] == context
    rm = RewardModel.from_pretrained(str(out), device="cpu")  # the old spelling still gives the process class
    assert type(rm) is ProcessRewardModel and rm.name == str(out)
    assert len(rm.score_steps(PROBLEM, GOOD)) == 3
    assert 0.0 <= rm.score_solution(PROBLEM, GOOD) <= 1.0
    assert main(["eval", "--objective", "process" if objective == "process" else "outcome", "--model", str(out),
                 "--data", str(data), "--output", str(tmp_path / "r.json")]) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["solutions"]["n"] == 5
    if objective == "process":
        assert results["steps"]["n"] == 10 and results["first_error_n"] == 2
        assert 0.0 <= results["steps"]["auroc"] <= 1.0


def test_outcome_model_refuses_full_context(tiny_bert, tmp_path):
    out = tmp_path / "orm"
    train(TrainConfig(model=tiny_bert, data=[str(rows_file(tmp_path / "p.jsonl"))], output=str(out),
                      objective="outcome", batch_size=4, micro_batch_size=4, max_steps=1, max_length=128, save_steps=0))
    with pytest.raises(ValueError, match="full"):
        ProcessRewardModel.from_pretrained(str(out), device="cpu").score_steps(PROBLEM, GOOD, context="full")


def test_shared_mrgsm8k_rows():
    path = require_shared_data() / "process" / "mrgsm8k-steps.jsonl"
    rows = load_rows([str(path)]).rows
    graded = [r for r in rows if r.kind == "graded"]
    assert len(graded) == 590 and all(not r.solution_correct for r in graded)
    assert all(r.first_error is not None for r in graded)
    assert all(r.labels[r.first_error] is False and all(r.labels[: r.first_error]) for r in graded)
    assert not any("Step 1:" in s or "<<" in s for r in rows for s in r.steps)


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


def test_weighted_loss_is_the_hand_computed_weighted_cross_entropy(bert_rm, tmp_path):
    import math

    import torch

    from tinyrm.pairwise.model import ClozeScorer

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
