"""`tinyrm eval/compare` --orders, --order-margin and --precision (tinyrm.cli.scoring)."""

from __future__ import annotations

import json


def test_eval_and_compare_cli_orders_and_precision(tiny_bert: str, pairs_file, tmp_path, capsys,
                                                   monkeypatch) -> None:
    from tinyrm.cli import main
    from tinyrm.inference.engine import InferenceEngine
    from tinyrm.inference.quantize import quantized_linear_count

    used, prepared = [], InferenceEngine.prepared  # what each scoring pass really ran: precision, int8 linears

    def spy(self, *args, **kwargs):
        run = prepared(self, *args, **kwargs)
        used.append((self.config.precision, quantized_linear_count(run.model) > 0))
        return run

    monkeypatch.setattr(InferenceEngine, "prepared", spy)
    base = ["eval", "--model", tiny_bert, "--data", str(pairs_file)]
    out = tmp_path / "auto.json"
    assert main([*base, "--orders", "auto", "--order-margin", "0.5", "--precision", "int8", "--output", str(out)]) == 0
    assert {precision for precision, _ in used} == {"int8"} and any(int8 for _, int8 in used)  # reached the engine
    used.clear()
    auto = json.loads(out.read_text())
    assert auto["orders"] == "auto" and auto["order_margin"] == 0.5
    assert auto["second_passes"] == auto["n"] == 24 and auto["second_pass_fraction"] == 1.0
    out_one = tmp_path / "one.json"
    assert main([*base, "--orders", "auto", "--order-margin", "0", "--output", str(out_one)]) == 0
    assert used and not any(precision == "int8" or int8 for precision, int8 in used)  # the default: not int8
    assert json.loads(out_one.read_text())["second_pass_fraction"] == 0.0
    out_single = tmp_path / "single.json"
    assert main([*base, "--single-order", "--output", str(out_single)]) == 0  # the old flag still works
    assert "second_pass_fraction" not in json.loads(out_single.read_text())
    capsys.readouterr()
    for refused, named in ((["--single-order", "--orders", "auto"], ["--single-order", "--orders auto"]),
                           (["--order-margin", "0.1"], ["--order-margin", "--orders auto"]),  # needs --orders auto
                           (["--orders", "auto", "--baseline", "length"], ["--orders auto", "--baseline"])):
        assert main([*base, *refused]) == 2
        err = capsys.readouterr().err  # each refusal's own message names what it refuses
        assert all(name in err for name in named), (refused, err)
    assert main(["compare", "--model", tiny_bert, "--prompt", "2+2?", "--a", "4", "--b", "5", "--orders", "auto",
                 "--order-margin", "0.5"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["second_passes"] == 1 and 0.0 < shown["prob_a"] < 1.0
