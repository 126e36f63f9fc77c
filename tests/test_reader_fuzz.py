"""Every JSONL data reader fuzzed with Hypothesis (issue 22): generated files of good rows, rows of wrong
types, missing and extra keys, broken bytes and blank lines (``reader_fuzz_helpers``) go through the
readers of ``tinyrm train`` (in memory and the Arrow table), ``tinyrm eval``, process data, ``tinyrm rank``,
``tinyrm score``, ``tinyrm sft`` and recipe files.

Each file either loads, and then the rows are exactly the good rows the oracle finds, or fails with one
``DataError`` whose message is one line: ``path:line: reason`` for the first bad line, ``path: no rows``
for a file without a non-blank line, and ``path: no valid ...`` when ``--skip-bad-rows`` left nothing to
train on or evaluate. With ``skip_bad_rows`` the rows are exactly the good ones and the skipped count is
the number of bad lines. Any other exception fails the test. The examples are the same on every run.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tinyrm.cli import USER_ERROR_EXIT, main
from tinyrm.data import PreferencePair, load_pairs, read_jsonl
from tinyrm.process.data import load_rows
from tinyrm.process.steps import clean, is_filler, split

from .reader_fuzz_helpers import (
    JSON,
    NON_BLANK,
    STRING,
    TEXT,
    canon,
    check,
    fuzz_settings,
    is_str,
    jsonl_files,
    lines,
    oracle_lines,
    rows,
    written,
)

# ------------------------------------------------------------------------------------------------ pairs

PAIR_ROWS = rows({"prompt": STRING, "chosen": NON_BLANK, "rejected": NON_BLANK},
                 {"id": st.one_of(st.none(), TEXT, st.integers()), "domain": st.one_of(st.none(), TEXT),
                  "subset": st.one_of(st.none(), TEXT), "source": TEXT})


def expect_pair(row: object, stem: str) -> list | None:
    """docs/cli-reference.md#data: prompt, chosen, rejected strings, chosen and rejected not blank; the
    optional id, domain, subset, source strings (integers are read as their text); subset: the file's stem."""
    if not isinstance(row, dict) or not all(is_str(row.get(key)) for key in ("prompt", "chosen", "rejected")):
        return None
    if not row["chosen"].strip() or not row["rejected"].strip():
        return None
    optional = {}
    for key in ("id", "domain", "subset", "source"):
        value = row.get(key)
        if value is not None and not isinstance(value, (str, int)):  # bool is an int: read as "True"
            return None
        optional[key] = None if value is None else str(value)
    if optional["subset"] is None:
        optional["subset"] = stem
    return [PreferencePair(row["prompt"], row["chosen"], row["rejected"], **optional)]


@fuzz_settings(150)
@given(jsonl_files(PAIR_ROWS))
def test_pairs_reader_fuzz(file):
    """``load_pairs`` (``tinyrm eval``, ``--eval-data``) and ``read_jsonl`` (all rows bad: an empty report)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = written(file.data, tmp)

        def load(skip: bool) -> tuple[list, int]:
            report = load_pairs([str(path)], skip_bad_rows=skip)
            return report.pairs, report.skipped

        def read(skip: bool) -> tuple[list, int]:
            report = read_jsonl(path, skip_bad_rows=skip)
            return report.pairs, report.skipped

        check(oracle_lines(file.data), path, load, lambda row, _: expect_pair(row, path.stem), all_bad_is_error=True)
        check(oracle_lines(file.data), path, read, lambda row, _: expect_pair(row, path.stem), all_bad_is_error=False)


@fuzz_settings(50)
@given(jsonl_files(PAIR_ROWS, max_lines=5))
def test_training_pairs_table_fuzz(file):
    """``load_pair_table`` with a cache folder: the Arrow table ``tinyrm train`` reads."""
    from tinyrm.arrow import load_pair_table

    with tempfile.TemporaryDirectory() as tmp:
        path = written(file.data, tmp)

        def load(skip: bool) -> tuple[list, int]:
            table = load_pair_table([str(path)], skip_bad_rows=skip, cache_dir=Path(tmp))
            return table.pairs, table.skipped

        check(oracle_lines(file.data), path, load, lambda row, _: expect_pair(row, path.stem), all_bad_is_error=True)


# ------------------------------------------------------------------------------------------------ process rows

FILLER = ["Let's think step by step.", "Step 1: add.", "<<2*3=6>>", "#### 6", "1. a\n2. b", "same", "same"]
STEP = st.one_of(NON_BLANK, NON_BLANK, st.sampled_from(FILLER))
PROCESS_ROWS = st.one_of(
    rows({"question": NON_BLANK, "steps": st.lists(STEP, min_size=1, max_size=4), "solution_correct": st.just(True)},
         {"first_error_step": st.none(), "reference_solution": st.one_of(
             STRING, st.just("Step 1: a. Step 2: b."), st.lists(STRING, max_size=3)),
          "id": st.one_of(st.none(), TEXT, st.integers())}),
    rows({"question": NON_BLANK, "steps": st.lists(STEP, min_size=3, max_size=4), "solution_correct": st.just(False),
          "first_error_step": st.one_of(st.none(), st.integers(1, 3))}, {"id": TEXT}),
)


def kept_steps(steps: list[str]) -> bool:
    """docs/process.md: filler steps and repeats are dropped; a row needs a step left."""
    return any(not is_filler(clean(step)) for step in steps)


def expect_process(row: object, line: int, stem: str, questions: set[str]) -> list | None:
    """docs/process.md#training: question, steps (non-empty strings), solution_correct (bool),
    first_error_step (null or 1..len(steps), not with a correct solution), reference_solution (absent, null, a
    string or a list of strings); each question's first reference_solution with a step left (on whichever of its
    rows) becomes a correct solution too. Id: the row's, else FILE-STEM:LINE."""
    if not isinstance(row, dict):
        return None
    question, steps, correct = row.get("question"), row.get("steps"), row.get("solution_correct")
    if not is_str(question) or not question.strip() or not isinstance(correct, bool):
        return None
    if not isinstance(steps, list) or not steps or not all(is_str(s) and s.strip() for s in steps):
        return None
    first = row.get("first_error_step")
    if first is not None and (isinstance(first, bool) or not isinstance(first, int) or not 1 <= first <= len(steps)
                              or correct):
        return None
    if not kept_steps(steps):
        return None
    reference = row.get("reference_solution")
    if reference is not None and not (is_str(reference) or (isinstance(reference, list)
                                                            and all(is_str(s) for s in reference))):
        return None
    ident = "" if row.get("id") is None else str(row["id"])
    out = [(ident or f"{stem}:{line}", question.strip(), correct, "graded")]
    reference_steps = split(reference) if is_str(reference) else [s for s in reference or () if s.strip()]
    if question.strip() not in questions and kept_steps(reference_steps):
        questions.add(question.strip())
        out.append((f"{out[0][0]}:reference", question.strip(), True, "reference"))
    return out


@fuzz_settings(150)
@given(jsonl_files(PROCESS_ROWS))
def test_process_rows_fuzz(file):
    """``load_rows`` (``tinyrm train|eval --objective process|outcome``), reference solutions included."""
    with tempfile.TemporaryDirectory() as tmp:
        path = written(file.data, tmp)

        def load(skip: bool) -> tuple[list, int]:
            report = load_rows([str(path)], skip_bad_rows=skip)
            event(f"reference solutions: {any(r.kind == 'reference' for r in report.rows)}")
            return [(r.id, r.question, r.solution_correct, r.kind) for r in report.rows], report.skipped

        questions: set[str] = set()
        check(oracle_lines(file.data), path, load, lambda row, line: expect_process(row, line, path.stem, questions),
              all_bad_is_error=True)


# ------------------------------------------------------------------------------------------------ rank input

RANK_ROWS = rows({"prompt": STRING, "candidates": st.lists(STRING, min_size=1, max_size=4)}, {"id": TEXT})


def expect_rank(row: object, line: int) -> list | None:
    """docs/ranking-and-serving.md#tinyrm-rank: a prompt string and a non-empty list of string candidates;
    the whole row is passed through to the output."""
    if not isinstance(row, dict) or not is_str(row.get("prompt")):
        return None
    candidates = row.get("candidates")
    if not isinstance(candidates, list) or not candidates or not all(is_str(c) for c in candidates):
        return None
    return [(line, canon(row), row["prompt"], candidates)]


@fuzz_settings(150)
@given(jsonl_files(RANK_ROWS))
def test_rank_input_fuzz(file):
    """``read_rank_rows`` (``tinyrm rank --input``): every row is checked before the model loads; all rows
    skipped is an empty ranking, not an error."""
    from tinyrm.cli.serve import read_rank_rows

    with tempfile.TemporaryDirectory() as tmp:
        path = written(file.data, tmp)

        def load(skip: bool) -> tuple[list, int]:
            loaded, skipped = read_rank_rows(path, skip_bad_rows=skip)
            return [(r.line, canon(r.row), r.prompt, r.candidates) for r in loaded], skipped

        check(oracle_lines(file.data), path, load, expect_rank, all_bad_is_error=False)


# ------------------------------------------------------------------------------------------------ SFT text, recipes

SFT_ROWS = st.one_of(rows({"text": NON_BLANK}),
                     rows({"messages": st.lists(rows({"content": STRING}, {"role": TEXT}), min_size=1, max_size=3)}),
                     rows({"prompt": STRING, "chosen": STRING}))


def expect_text(row: object, _: int) -> list | None:
    """docs/recipes-sweeps-merging.md#conversational-sft: a non-empty "text", else "messages" (a non-empty
    list of objects with a string "content"), else "prompt" and "chosen" strings."""
    if not isinstance(row, dict):
        return None
    if is_str(row.get("text")) and row["text"].strip():
        return [row["text"]]
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            return None
        if not all(isinstance(m, dict) and is_str(m.get("content")) for m in messages):
            return None
        return ["\n\n".join(f"{str(m.get('role', 'user')).strip().capitalize() or 'User'}: {m['content'].strip()}"
                            for m in messages)]
    if is_str(row.get("prompt")) and is_str(row.get("chosen")):
        return [f"{row['prompt'].strip()}\n\n{row['chosen'].strip()}"]
    return None


@fuzz_settings(100)
@given(jsonl_files(SFT_ROWS))
def test_sft_texts_fuzz(file):
    """``read_texts`` (``tinyrm sft``): no --skip-bad-rows there, the first bad line stops it."""
    from tinyrm.tools.sft import read_texts

    with tempfile.TemporaryDirectory() as tmp:
        path = written(file.data, tmp)
        check(oracle_lines(file.data), path, lambda _: (read_texts([str(path)]), 0), expect_text, all_bad_is_error=True,
              modes=(False,))


RECIPE_TYPES = {  # TrainConfig's types of the two options generated: lr float | None (an integer is a number), seed int
    "lr": lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)),
    "seed": lambda v: isinstance(v, int) and not isinstance(v, bool)}
WELL_TYPED = st.fixed_dictionaries({}, optional={"lr": st.one_of(st.none(), st.floats(1e-6, 1e-2), st.integers(0, 1)),
                                                 "seed": st.integers(0, 2**32)})
RECIPE_ROWS = rows({"config": st.one_of(WELL_TYPED, st.dictionaries(st.sampled_from(["lr", "seed", "data", "bogus"]),
                                                                    JSON, max_size=2))}, {"name": TEXT})


def expect_recipe(data: bytes) -> dict | None:
    """The config a recipe file loads as, or None for one that must be refused: UTF-8 (a leading BOM is
    dropped) JSON, an object whose "config" is an object of TrainConfig options, each of its type; "data"
    belongs on the command line, "bogus" is no option."""
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, too deep, an integer too long
        return None
    if not isinstance(value, dict) or not isinstance(value.get("config"), dict):
        return None
    config = value["config"]
    return config if all(key in RECIPE_TYPES and RECIPE_TYPES[key](v) for key, v in config.items()) else None


def test_recipe_file_fuzz():
    """``--recipe FILE.json``: a well-formed recipe loads with exactly its config; anything else is one
    ``ValueError`` naming the file. Both kinds are generated often (a loader refusing all must fail)."""
    from tinyrm.training.recipes import load_recipe

    seen = {"loads": 0, "refused": 0}

    @fuzz_settings(60)
    @given(st.one_of(st.binary(max_size=40), st.lists(lines(RECIPE_ROWS), min_size=1, max_size=2).map(b"\n".join),
                     RECIPE_ROWS.map(lambda row: json.dumps(row).encode())))
    def one_file(data):
        expected = expect_recipe(data)
        seen["refused" if expected is None else "loads"] += 1
        with tempfile.TemporaryDirectory() as tmp:
            path = written(data, tmp, "recipe.json")
            if expected is None:
                with pytest.raises(ValueError) as info:
                    load_recipe(str(path))
                assert str(info.value).startswith(f"{path}:") and "\n" not in str(info.value), str(info.value)
            else:
                recipe = load_recipe(str(path))
                assert (canon(recipe.config), recipe.path) == (canon(expected), str(path))

    one_file()
    assert seen["loads"] >= 10 and seen["refused"] >= 10, seen


@pytest.mark.parametrize(("config", "message"), [
    ({"lr": {}}, "'lr' must be float | None, got an object"), ({"seed": [[]]}, "'seed' must be int, got a list"),
    ({"seed": True}, "'seed' must be int, got a boolean"), ({"pair_batches": "no"}, "'pair_batches' must be bool"),
    ({"answer_tokens": ["yes"]}, "'answer_tokens' must be tuple[str, str], got a list"),
    ({"domain_prefixes": {"chat": 1}}, "'domain_prefixes' must be dict[str, str] | None, got an object"),
    ({"lr": float("nan")}, "'lr' must be float | None, got a non-finite number"),
], ids=["lr-object", "seed-list", "seed-true", "bool-string", "tuple-of-one", "dict-of-int", "lr-nan"])
def test_a_recipe_option_of_the_wrong_type_names_file_and_option(tmp_path, config, message):
    """Was accepted as written (lr {} reached TrainConfig); an error naming the file and the option instead."""
    from tinyrm.training.recipes import load_recipe

    path = tmp_path / "typed.json"
    path.write_text(json.dumps({"config": {"lr": 3e-5, **config}}))
    with pytest.raises(ValueError) as info:
        load_recipe(str(path))
    assert str(info.value).startswith(f"{path}: wrong type in 'config': {message}"), str(info.value)
    typed = {"lr": 1, "seed": 7, "answer_tokens": ["yes", "no"], "domain_prefixes": None, "report_to": ["tensorboard"],
             "pair_batches": False, "epochs": 0.5, "dora_targets": ["query"]}
    path.write_text(json.dumps({"config": typed}))
    assert load_recipe(str(path)).config == typed  # every option of its type loads as written


# ------------------------------------------------------------------------------------------------ the CLI

GOOD_LINE = {"pairs": {"prompt": "Which?", "chosen": "this one, here", "rejected": "that"},
             "process": {"question": "1 + 1?", "steps": ["1 + 1 = 2."], "first_error_step": None,
                         "solution_correct": True},
             "rank": {"prompt": "Which?", "candidates": ["a", "b"]}}
COMMANDS = {  # argv (FILE: the data file, OUT: an output path) and the rows the data file holds
    "eval": (["eval", "--model", "default", "--data", "FILE"], "pairs"),
    "eval-process": (["eval", "--objective", "process", "--model", "default", "--data", "FILE"], "process"),
    "train": (["train", "--model", "default", "--data", "FILE", "--output", "OUT"], "pairs"),
    "train-process": (["train", "--objective", "process", "--model", "default", "--data", "FILE", "--output", "OUT"],
                      "process"),
    "rank": (["rank", "--model", "default", "--input", "FILE", "--output", "OUT.jsonl"], "rank"),
    "score": (["score", "--model", "default", "--data", "FILE", "--output", "OUT.parquet"], "pairs"),
    "sft": (["sft", "--model", "default", "--data", "FILE", "--output", "OUT"], "pairs"),
}


@pytest.mark.parametrize("problem", ["bad-byte-line-2", "empty", "blank-lines"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_cli_names_file_and_line(command, problem, tmp_path, capsys):
    """The two bugs found by hand: a byte that is not UTF-8 on line 2 (was ``'utf-8' codec can't decode byte
    0xff in position 60``, no file, no line) and an empty data file (``tinyrm eval`` printed ``accuracy
    0.0000, n 0`` and exited 0). Both stop every command with one line and exit code 2, before a model loads
    (``tinyrm score`` checks rows chunk by chunk, so a bad row stops it once the model is loaded)."""
    argv, kind = COMMANDS[command]
    data = tmp_path / "data.jsonl"
    line = json.dumps(GOOD_LINE[kind]).encode()
    data.write_bytes({"bad-byte-line-2": line + b"\n" + line[:-1] + b"\xff}\n" + line + b"\n",
                      "empty": b"", "blank-lines": b"\n  \n\r\n"}[problem])
    out = str(tmp_path / "out")
    code = main([str(data) if a == "FILE" else a.replace("OUT", out) for a in argv])
    captured = capsys.readouterr()
    assert code == USER_ERROR_EXIT != 0
    assert "Traceback" not in captured.err, captured.err
    err = [line for line in captured.err.splitlines() if line.startswith("tinyrm ")]  # score: progress bars too
    assert len(err) == 1, captured.err
    prefix = f"tinyrm {argv[0]}: error: {data}"
    expected = f"{prefix}:2: not UTF-8 text (byte 0xff" if problem == "bad-byte-line-2" else f"{prefix}: no rows"
    assert err[0].startswith(expected), err[0]
