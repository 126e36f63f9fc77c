"""User errors read as one ``tinyrm COMMAND: error: ...`` line (traceback only with -v); --json output."""

from __future__ import annotations

import io
import json

import pytest
from rich.table import Table

from tinyrm.cli import USER_ERROR_EXIT, main
from tinyrm.cli.output import CliConsole

MISSING_MODEL = "/nonexistent/tinyrm-model"


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, command: str, *names: str) -> str:
    assert code == USER_ERROR_EXIT != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tinyrm {command}: error: "), lines[0]
    for name in names:
        assert name in lines[0]
    return lines[0]


# ---------------------------------------------------------------- one test per command family


@pytest.mark.parametrize("what", ["model", "data"])
def test_train_bad_model_or_missing_data(capsys, pairs_file, tmp_path, what):
    model, data = (MISSING_MODEL, str(pairs_file)) if what == "model" else ("default", str(tmp_path / "no.jsonl"))
    code, _, err = run_main(capsys, "train", "--model", model, "--data", data, "--output", str(tmp_path / "out"))
    line = assert_one_line_error(code, err, "train", model if what == "model" else data)
    if what == "model":
        assert "no such local folder" in line and "not a valid hub id" in line


@pytest.mark.parametrize("what", ["model", "data"])
def test_eval_bad_model_or_missing_data(capsys, pairs_file, tmp_path, what):
    model, data = (MISSING_MODEL, str(pairs_file)) if what == "model" else ("default", str(tmp_path / "no.jsonl"))
    code, out, err = run_main(capsys, "eval", "--model", model, "--data", data, "--json")
    assert_one_line_error(code, err, "eval", model if what == "model" else data)
    assert out == ""


def test_compare_bad_model(capsys):
    code, out, err = run_main(capsys, "compare", "--model", MISSING_MODEL, "--prompt", "p", "--a", "a", "--b", "b")
    line = assert_one_line_error(code, err, "compare", repr(MISSING_MODEL))
    assert "no such local folder" in line and "not a valid hub id" in line
    assert out == ""


def test_compare_hub_id_offline(capsys, monkeypatch):
    """A well-formed hub id that is not cached: the message says the hub is not reachable offline."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "tinyrm-tests/no-such-model"
    code, _, err = run_main(capsys, "compare", "--model", name, "--prompt", "p", "--a", "a", "--b", "b")
    line = assert_one_line_error(code, err, "compare", name)
    assert "no such local folder" in line and "HF_HUB_OFFLINE" in line


def test_compare_folder_that_is_not_a_model(capsys, tmp_path):
    code, _, err = run_main(capsys, "compare", "--model", str(tmp_path), "--prompt", "p", "--a", "a", "--b", "b")
    assert "config.json" in assert_one_line_error(code, err, "compare", str(tmp_path))


def test_rank_bad_model_missing_input_bad_value(capsys, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "p", "candidates": ["a", "b"]}) + "\n")
    out_file = str(tmp_path / "out.jsonl")
    code, _, err = run_main(capsys, "rank", "--model", MISSING_MODEL, "--input", str(src), "--output", out_file)
    assert_one_line_error(code, err, "rank", MISSING_MODEL)
    missing = str(tmp_path / "missing.jsonl")
    code, _, err = run_main(capsys, "rank", "--input", missing, "--output", out_file)
    assert_one_line_error(code, err, "rank", missing)
    code, _, err = run_main(capsys, "rank", "--input", str(src), "--output", out_file, "--batch-size", "0")
    assert_one_line_error(code, err, "rank", "--batch-size")


def test_serve_bad_model(capsys):
    code, out, err = run_main(capsys, "serve", "--model", MISSING_MODEL, "--port", "0")
    assert_one_line_error(code, err, "serve", MISSING_MODEL)
    assert out == ""


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_shows_the_traceback(capsys, where):
    args = ["compare", "--model", MISSING_MODEL, "--prompt", "p", "--a", "a", "--b", "b"]
    argv = ["-v", *args] if where == "before" else [*args, "-v"]
    code, _, err = run_main(capsys, *argv)
    assert code == USER_ERROR_EXIT
    assert "Traceback" in err and "ModelNotFoundError" in err
    assert err.strip().splitlines()[-1].startswith(f"tinyrm compare: error: model {MISSING_MODEL!r}")


# ---------------------------------------------------------------- --json and tables


def test_recipes_json_and_whole_names_in_the_table(capsys):
    code, out, err = run_main(capsys, "recipes", "--json")
    assert code == 0
    names = [r["name"] for r in json.loads(out)]
    assert "large-reasoning" in names
    code, out, _ = run_main(capsys, "recipes")  # stdout is not a terminal here
    assert code == 0 and "…" not in out
    for name in names:
        assert sum(name in line.split() for line in out.splitlines()) == 1, name


def test_narrow_tables_fold_instead_of_ellipsizing():
    file = io.StringIO()
    console = CliConsole(file=file, width=30)
    table = Table(title="t")
    for column in ("name", "prefix"):
        table.add_column(column)
    table.add_row("large-reasoning-with-a-long-name", "Which response is more correct? " * 3)
    console.print(table)
    text = file.getvalue()
    assert "…" not in text
    body = [line.split("│") for line in text.splitlines() if line.startswith("│")]
    assert "".join(cells[1].strip() for cells in body) == "large-reasoning-with-a-long-name"  # folded, whole
    assert " ".join(" ".join(cells[2].split()) for cells in body).split() == ("Which response is more correct? "
                                                                            * 3).split()


def test_flops_json(capsys, tiny_bert):
    code, out, _ = run_main(capsys, "flops", "--model", tiny_bert, "--seq-len", "64", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["seq_len"] == 64 and report["parameters"] > 0


def test_eval_and_rank_json(capsys, tiny_bert, pairs_file, tmp_path):
    results_path = tmp_path / "results.json"
    code, out, _ = run_main(capsys, "eval", "--model", tiny_bert, "--data", str(pairs_file), "--batch-size", "8",
                            "--max-length", "96", "--output", str(results_path), "--json")
    assert code == 0
    results = json.loads(out)  # the whole of stdout is one JSON document
    assert results == json.loads(results_path.read_text())
    assert results["n"] == 24 and 0.0 <= results["accuracy"] <= 1.0

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "2+2?", "candidates": ["4", "5", "22"]}) + "\n" + "not json\n")
    out_file = tmp_path / "out.jsonl"
    code, out, _ = run_main(capsys, "rank", "--model", tiny_bert, "--input", str(src), "--output", str(out_file),
                            "--skip-bad-rows", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["rows"] == 1 and summary["skipped_rows"] == 1 and summary["output"] == str(out_file)
    assert summary["comparisons"] > 0 and summary["method"] == "knockout"
    assert len(out_file.read_text().splitlines()) == 1


def test_baseline_eval_json(capsys, pairs_file):
    code, out, _ = run_main(capsys, "eval", "--baseline", "length", "--data", str(pairs_file), "--json")
    assert code == 0 and json.loads(out)["n"] == 24
