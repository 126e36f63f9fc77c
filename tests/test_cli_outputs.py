"""What the CLI writes loses nothing: outputs checked before the model loads, files replaced whole, Ctrl-C as one
line (exit code 130), and the bad values of --data, --epochs and --max-steps refused with a line naming them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyrm.cli import USER_ERROR_EXIT, main

MISSING_MODEL = "/nonexistent/tinyrm-model"
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped


def main_interrupted(argv: list[str]) -> int | str:
    """``main``'s exit code, or what escaped it: pytest would take a KeyboardInterrupt for the user's Ctrl-C."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        return "KeyboardInterrupt escaped main (a traceback)"


def interrupt_at(monkeypatch, module, name: str, call: int) -> None:
    """``module.name`` raises KeyboardInterrupt (as Ctrl-C would) at its ``call``-th call."""
    real, calls = getattr(module, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)


def one_line_error(capsys, argv: list[str], command: str, *names: str) -> str:
    """Run ``tinyrm ARGV``: exit code 2 and one ``tinyrm COMMAND: error: ...`` line holding every name."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == USER_ERROR_EXIT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tinyrm {command}: error: "), err
    assert all(name in lines[0] for name in names), (names, lines[0])
    return lines[0]


def rank_input(tmp_path: Path, rows: int = 3) -> Path:
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "candidates": ["a", "bb", "ccc"]}) + "\n"
                            for i in range(rows)))
    return path


# ---------------------------------------------------------------- tinyrm eval: --output, --predictions, --plot


@pytest.mark.parametrize("flag", ["--output", "--predictions", "--plot"])
def test_eval_refuses_an_output_that_is_a_data_file(tiny_bert, pairs_file, capsys, flag):
    before = pairs_file.read_bytes()
    one_line_error(capsys, ["eval", "--model", tiny_bert, "--data", str(pairs_file), flag, str(pairs_file),
                            "--no-progress"], "eval", f"{flag} {pairs_file} is one of the inputs")
    assert pairs_file.read_bytes() == before


def test_eval_baseline_refuses_predictions_over_its_data(pairs_file, capsys):
    before = pairs_file.read_bytes()
    one_line_error(capsys, ["eval", "--baseline", "length", "--data", str(pairs_file.parent / "*.jsonl"),  # a glob
                            "--predictions", str(pairs_file)], "eval", "--predictions", "is one of the inputs")
    assert pairs_file.read_bytes() == before


def test_eval_refuses_two_outputs_in_one_file(pairs_file, tmp_path, capsys):
    out = tmp_path / "same.json"
    one_line_error(capsys, ["eval", "--baseline", "length", "--data", str(pairs_file), "--output", str(out),
                            "--predictions", str(out)], "eval", f"--predictions {out} is also --output")
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--output", "--predictions", "--plot"])
@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_eval_bad_output_path_fails_before_the_model_loads(pairs_file, tmp_path, capsys, flag, where):
    """A missing model would fail first if the outputs were checked after loading it (or after scoring)."""
    path, reason = ((tmp_path, "is a folder") if where == "folder"
                    else (pairs_file / "results.json", f"{pairs_file} is a file, not a folder"))
    one_line_error(capsys, ["eval", "--model", MISSING_MODEL, "--data", str(pairs_file), flag, str(path)],
                   "eval", f"{flag} {path}", reason)


def test_result_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from tinyrm.data import PreferencePair
    from tinyrm.evaluation import results

    pairs = [PreferencePair(prompt="p", chosen="a", rejected="b", subset="s") for _ in range(3)]
    predictions, document = tmp_path / "preds.jsonl", tmp_path / "results.json"
    results.write_predictions([0.7, 0.2, 0.9], pairs, predictions)
    results.write_results({"accuracy": 0.5}, document)
    assert len(predictions.read_text().splitlines()) == 3
    old = {path: path.read_bytes() for path in (predictions, document)}
    lines = []

    def failing_dumps(value, **kwargs):  # the disk fills up (or Ctrl-C) after the first line
        lines.append(value)
        if len(lines) > 1:
            raise OSError("No space left on device")
        return json.JSONEncoder(**kwargs).encode(value)

    def failing_write_text(self, data, *args, **kwargs):  # half the document, then the disk is full
        with open(self, "w", encoding="utf-8") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(results.json, "dumps", failing_dumps)
    with pytest.raises(OSError, match="No space"):
        results.write_predictions([0.1, 0.2, 0.3], pairs, predictions)
    monkeypatch.undo()
    monkeypatch.setattr(Path, "write_text", failing_write_text)
    with pytest.raises(OSError, match="No space"):
        results.write_results({"accuracy": 1.0}, document)
    monkeypatch.undo()
    assert {path: path.read_bytes() for path in old} == old  # the old files, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.jsonl", "results.json"]  # no temporary left
    link = tmp_path / "latest.json"  # a symlink to the results is written through, not replaced by a file
    link.symlink_to(document)
    results.write_results({"accuracy": 0.75}, link)
    assert link.is_symlink() and json.loads(document.read_text()) == {"accuracy": 0.75}


def test_report_refuses_to_draw_over_its_results(tmp_path, capsys):
    document = tmp_path / "results.json"
    document.write_text(json.dumps({"model": "m", "accuracy": 0.6, "n": 10}))
    before = document.read_bytes()
    one_line_error(capsys, ["report", str(document), "--output", str(document)], "report",
                   f"--output {document} is one of the inputs")
    assert document.read_bytes() == before


def test_score_shares_the_output_check(pairs_file, tmp_path, capsys, monkeypatch):
    """``tinyrm score``'s check, now shared: its messages, and the folder checks it gained (before the model)."""
    import tinyrm.outputs as outputs

    base = ["score", "--model", MISSING_MODEL, "--data", str(pairs_file), "--output"]
    one_line_error(capsys, [*base, str(pairs_file)], "score", f"--output {pairs_file} is one of the inputs")
    one_line_error(capsys, [*base, str(tmp_path)], "score", f"--output {tmp_path} is a folder; give a file name "
                                                             "(.parquet or .jsonl)")
    one_line_error(capsys, [*base, str(pairs_file / "out.jsonl")], "score", f"{pairs_file} is a file, not a folder")
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: False)  # as a read-only folder (tests may run as root)
    one_line_error(capsys, [*base, str(tmp_path / "new" / "out.jsonl")], "score",
                   f"--output {tmp_path / 'new' / 'out.jsonl'}: cannot write in {tmp_path}")


def test_calibrate_refuses_an_output_that_is_its_data(tiny_bert, pairs_file, capsys):
    """The review's unconfirmed item: calibrate --output must be a new or empty folder, so a data file is safe."""
    before = pairs_file.read_bytes()
    one_line_error(capsys, ["calibrate", "--model", tiny_bert, "--data", str(pairs_file), "--output",
                            str(pairs_file), "--no-progress"], "calibrate", f"--output {pairs_file}")
    assert pairs_file.read_bytes() == before


# ---------------------------------------------------------------- tinyrm rank, and Ctrl-C in any command


def test_rank_refuses_output_equal_to_input(tiny_bert, tmp_path, capsys):
    data = rank_input(tmp_path)
    before = data.read_bytes()
    one_line_error(capsys, ["rank", "--model", tiny_bert, "--input", str(data), "--output", str(data)], "rank",
                   f"--output {data} is one of the inputs")
    assert data.read_bytes() == before


def test_rank_interrupted_leaves_the_old_output_whole(tiny_bert, tmp_path, capsys, monkeypatch):
    import tinyrm.pairwise.rank as rank

    data, out = rank_input(tmp_path, rows=4), tmp_path / "ranked.jsonl"
    assert main(["rank", "--model", tiny_bert, "--input", str(data), "--output", str(out)]) == 0
    complete = out.read_bytes()
    assert len(complete.splitlines()) == 4
    interrupt_at(monkeypatch, rank, "rank_candidates", 3)  # Ctrl-C while the third row is ranked
    capsys.readouterr()
    assert main_interrupted(["rank", "--model", tiny_bert, "--input", str(data), "--output", str(out)]) == INTERRUPTED
    assert capsys.readouterr().err.strip().splitlines()[-1] == "tinyrm rank: interrupted"
    assert out.read_bytes() == complete  # not a two-row prefix that looks complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl", "ranked.jsonl"]


def test_interrupted_score_says_so_in_one_line_and_resumes(tiny_bert, pairs_file, tmp_path, capsys, monkeypatch):
    import tinyrm.scoring.local as local

    out = tmp_path / "scored.jsonl"
    argv = ["score", "--model", tiny_bert, "--data", str(pairs_file), "--output", str(out), "--chunk-rows", "8",
            "--no-progress"]
    interrupt_at(monkeypatch, local, "score_with_retries", 2)  # Ctrl-C while the second chunk is scored
    assert main_interrupted(argv) == INTERRUPTED
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == [
        "tinyrm score: interrupted; run the same command again to resume where it stopped"]
    monkeypatch.undo()  # the real score_with_retries again
    assert main(argv) == 0  # what the line promises: the first chunk is not scored again
    assert "1 of 3 chunks resumed" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 24


# ---------------------------------------------------------------- --data DIR, --epochs 0, --max-steps 0


@pytest.mark.parametrize("command", ["eval", "train"])
def test_data_folder_is_named_a_folder(tmp_path, capsys, command):
    extra = ["--baseline", "length"] if command == "eval" else ["--output", str(tmp_path / "out")]
    line = one_line_error(capsys, [command, "--data", str(tmp_path), *extra], command,
                          f"{tmp_path}: is a folder, not a JSONL file")
    assert "no such file" not in line


@pytest.mark.parametrize("flags, named", [(["--epochs", "0"], "--epochs"), (["--max-steps", "0"], "--max-steps"),
                                          (["--max-steps", "-2"], "--max-steps"), (["--epochs", "nan"], "--epochs")])
def test_train_refuses_a_length_that_trains_nothing(tiny_bert, pairs_file, tmp_path, capsys, flags, named):
    out = tmp_path / "out"
    one_line_error(capsys, ["train", "--model", tiny_bert, "--data", str(pairs_file), "--output", str(out),
                            "--no-cache", *flags], "train", named)
    assert not out.exists()  # nothing saved


def test_max_steps_minus_one_keeps_its_documented_meaning():
    from tinyrm.train import TrainConfig
    from tinyrm.training.arguments import check_length

    check_length(TrainConfig(max_steps=-1, epochs=0.5))  # -1: --epochs decides (the default)
    check_length(TrainConfig(max_steps=1))
