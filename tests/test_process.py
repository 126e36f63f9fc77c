import json

import pytest

from tinyrm import ProcessRewardModel, RewardModel
from tinyrm.cli import main
from tinyrm.data import DataError
from tinyrm.process.aggregate import aggregate
from tinyrm.process.data import load_rows, parse_row, split_questions, step_labels
from tinyrm.process.evaluation import evaluate_solutions
from tinyrm.process.prompt import STEP_TEMPLATES, StepEncoder
from tinyrm.process.scoring import spec
from tinyrm.process.train import (
    ProcessDataset,
)
from tinyrm.train import TrainConfig, train

from .conftest import _save_tiny, require_shared_data
from .process_helpers import BAD, GOOD, PROBLEM, rows_file


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
    # a repeat that is the annotated first error stays, with its label (the located error is kept)
    row = parse_row({"question": "q", "steps": ["a", "a", "b"], "first_error_step": 2, "solution_correct": False})
    assert (row.steps, row.labels, row.first_error) == (["a", "a", "b"], [True, False, None], 1)


@pytest.mark.parametrize(("row", "message"), [
    ({"question": "q", "steps": ["a"], "first_error_step": 2, "solution_correct": False}, "first_error_step"),
    ({"question": "q", "steps": ["a"], "first_error_step": 1, "solution_correct": True}, "solution_correct"),
    ({"question": "q", "steps": [], "first_error_step": None, "solution_correct": True}, "steps"),
    ({"question": "", "steps": ["a"], "first_error_step": None, "solution_correct": True}, "question"),
    ({"question": "q", "steps": ["a"], "first_error_step": None, "solution_correct": True,
      "reference_solution": 42}, "'reference_solution' must be a string or a list of step strings, got int"),
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


def test_a_reference_on_a_later_row_or_as_a_list_of_steps_is_kept(tmp_path):
    base = {"steps": ["x"], "first_error_step": 1, "solution_correct": False}
    path = tmp_path / "refs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"question": "What is 2+2?", **base},  # no reference on the question's first row
        {"question": "What is 2+2?", **base, "reference_solution": "2 + 2 = 4\nThe answer is: 4"},
        {"question": "What is 3+3?", **base, "reference_solution": ["3 + 3 = 6", "The answer is: 6"]},
    ]) + "\n")
    references = [r for r in load_rows([str(path)]).rows if r.kind == "reference"]
    assert [(r.question, r.steps) for r in references] == [
        ("What is 2+2?", ["2 + 2 = 4", "The answer is: 4"]), ("What is 3+3?", ["3 + 3 = 6", "The answer is: 6"])]


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


def test_a_lone_surrogate_in_a_problem_or_step_is_named(bert_rm):
    for problem, steps in (("what is 2\ud800?", ["4"]), ("what is 2+2?", ["so", "it is 4\udc00"])):
        with pytest.raises(ValueError, match="lone surrogate"):
            bert_rm.score_steps(problem, steps)


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
GAP = 1e-3  # what the guards require a difference to be: 100x the 1e-5 tolerance of the comparisons


@pytest.fixture(scope="module", params=["modernbert", "bert"])
def wide_model(request, spread_bert, tmp_path_factory):
    """Initialised 10x wider (initializer_range 0.2): at the default 0.02 a later step moves an earlier
    full-context verdict by under 1e-5, the tolerance, so 'prefix ignores later steps' showed nothing."""
    if request.param == "bert":
        return spread_bert
    return _save_tiny("modernbert", tmp_path_factory.mktemp("wide-modernbert"), seed=2, initializer_range=0.2)


def test_prefix_vs_full(wide_model):
    rm = ProcessRewardModel.from_pretrained(wide_model, device="cpu", precision="fp32")
    prefix = rm.score_steps(PROBLEM, GOOD, context="prefix")
    full = rm.score_steps(PROBLEM, GOOD, context="full")
    assert len(prefix) == len(full) == 3
    assert all(0.0 <= p <= 1.0 for p in prefix + full)
    later = GOOD[:2] + ["The answer is: 99, or maybe 100"]
    # full: one sequence, so step 1's verdict also sees the later steps (the guard for what follows)
    full_changed = rm.score_steps(PROBLEM, later, context="full")
    assert abs(full_changed[0] - full[0]) > GAP
    # prefix: a step's score ignores later steps, and equals scoring the cut solution
    assert rm.score_steps(PROBLEM, later, context="prefix")[:2] == pytest.approx(prefix[:2], abs=1e-5)
    for n in (1, 2):
        assert rm.score_steps(PROBLEM, GOOD[:n], context="prefix") == pytest.approx(prefix[:n], abs=1e-5)
    # a string is split into steps
    assert rm.score_steps(PROBLEM, "Step 1: " + GOOD[0] + " Step 2: " + GOOD[1]) == pytest.approx(prefix[:2], abs=1e-5)


def test_solution_scores_and_rerank(bert_rm, spread_bert):
    steps = bert_rm.score_steps(PROBLEM, BAD)
    assert bert_rm.score_solution(PROBLEM, BAD, aggregate="min") == pytest.approx(min(steps))
    assert bert_rm.score_solution(PROBLEM, BAD, aggregate="last") == pytest.approx(steps[-1])
    # no step: the model's verdict on one empty step, not aggregate([])'s 1.0 (tests/test_process_inputs.py)
    assert bert_rm.score_solution(PROBLEM, [], aggregate="product") == pytest.approx(
        bert_rm.score_steps(PROBLEM, [""])[0], abs=1e-6) != 1.0
    with pytest.raises(ValueError, match="aggregation"):
        bert_rm.score_solution(PROBLEM, BAD, aggregate="median")
    with pytest.raises(ValueError, match="aggregation"):
        bert_rm.rerank(PROBLEM, [BAD], aggregate="median")
    # Which candidate got which score: on a wide model (fp32), where the solutions' scores lie far apart.
    rm = ProcessRewardModel.from_pretrained(spread_bert, device="cpu", precision="fp32")
    short = ["Tom has 3 apples.", "The answer is: 3"]
    candidates = [BAD, GOOD, "\n".join(GOOD), short]
    means = [sum(s) / len(s) for s in (rm.score_steps(PROBLEM, c) for c in candidates)]
    distinct = (means[0], means[1], means[3])  # the text is GOOD again
    assert min(abs(x - y) for i, x in enumerate(distinct) for y in distinct[i + 1:]) > GAP
    ranking = rm.rerank(PROBLEM, candidates, aggregate="mean")
    assert sorted(i for i, _ in ranking) == [0, 1, 2, 3]
    assert [s for _, s in ranking] == sorted((s for _, s in ranking), reverse=True)
    for i, score in ranking:
        assert score == pytest.approx(means[i], abs=1e-5), i
    assert means[ranking[0][0]] == pytest.approx(max(means), abs=1e-5)  # the best candidate comes first
    steps = [rm.score_steps(PROBLEM, c) for c in (BAD, GOOD, short)]
    for threshold in (0.0, 0.5, 1.0):  # first_error's threshold reaches the method
        ranked = rm.rerank(PROBLEM, [BAD, GOOD, short], aggregate="first_error", threshold=threshold)
        assert [s for _, s in sorted(ranked)] == pytest.approx(
            [aggregate(s, "first_error", threshold) for s in steps], abs=1e-5)


def test_zero_shot_process_scoring_takes_its_context_and_prefix(tiny_bert):
    rm = ProcessRewardModel.from_pretrained(tiny_bert, device="cpu", context="full", prefix="Grade each step.")
    assert rm.spec.context == "full" and rm.spec.encoder.prefix == "Grade each step."
    assert rm.score_steps(PROBLEM, GOOD) == pytest.approx(rm.score_steps(PROBLEM, GOOD, context="full"), abs=1e-6)
    with pytest.raises(ValueError, match="context must be one of"):
        ProcessRewardModel.from_pretrained(tiny_bert, device="cpu", context="window")


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
    flag = "process" if objective == "process" else "outcome"
    # --max-batch-tokens reaches the verdicts (it was ignored here); --record is refused, not silently skipped
    assert main(["eval", "--objective", flag, "--model", str(out), "--data", str(data), "--max-batch-tokens", "0"]) == 2
    assert "max_batch_tokens must be" in capsys.readouterr().err
    assert main(["eval", "--objective", flag, "--model", str(out), "--data", str(data), "--record"]) == 2
    assert "--record records pairwise accuracy" in capsys.readouterr().err
    if objective == "process":
        assert results["steps"]["n"] == 10 and results["first_error_n"] == 2
        assert 0.0 <= results["steps"]["auroc"] <= 1.0


def test_outcome_model_refuses_full_context_and_ignores_the_aggregate(tiny_bert, tmp_path):
    out, data = tmp_path / "orm", rows_file(tmp_path / "p.jsonl")
    train(TrainConfig(model=tiny_bert, data=[str(data)], output=str(out),
                      objective="outcome", batch_size=4, micro_batch_size=4, max_steps=1, max_length=128, save_steps=0))
    orm = ProcessRewardModel.from_pretrained(str(out), device="cpu")
    with pytest.raises(ValueError, match="full"):
        orm.score_steps(PROBLEM, GOOD, context="full")
    # Its verdict is the solution's score whatever the aggregate: first_error must not read it as a step count.
    rows = load_rows([str(data)]).rows
    assert evaluate_solutions(orm, rows, "first_error") == evaluate_solutions(orm, rows, "min")


def test_shared_mrgsm8k_rows():
    path = require_shared_data() / "process" / "mrgsm8k-steps.jsonl"
    rows = load_rows([str(path)]).rows
    graded = [r for r in rows if r.kind == "graded"]
    assert len(graded) == 590 and all(not r.solution_correct for r in graded)
    assert all(r.first_error is not None for r in graded)
    assert all(r.labels[r.first_error] is False and all(r.labels[: r.first_error]) for r in graded)
    assert not any("Step 1:" in s or "<<" in s for r in rows for s in r.steps)
