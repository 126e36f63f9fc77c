"""`tinyrm eval/compare` --orders, --order-margin and --precision (tinyrm.cli.scoring)."""

from __future__ import annotations

import json


def test_eval_and_compare_cli_orders_and_precision(tiny_bert: str, pairs_file, tmp_path, capsys) -> None:
    from tinyrm.cli import main

    base = ["eval", "--model", tiny_bert, "--data", str(pairs_file)]
    out = tmp_path / "auto.json"
    assert main([*base, "--orders", "auto", "--order-margin", "0.5", "--precision", "int8", "--output", str(out)]) == 0
    auto = json.loads(out.read_text())
    assert auto["orders"] == "auto" and auto["order_margin"] == 0.5
    assert auto["second_passes"] == auto["n"] == 24 and auto["second_pass_fraction"] == 1.0
    out_one = tmp_path / "one.json"
    assert main([*base, "--orders", "auto", "--order-margin", "0", "--output", str(out_one)]) == 0
    assert json.loads(out_one.read_text())["second_pass_fraction"] == 0.0
    out_single = tmp_path / "single.json"
    assert main([*base, "--single-order", "--output", str(out_single)]) == 0  # the old flag still works
    assert "second_pass_fraction" not in json.loads(out_single.read_text())
    capsys.readouterr()
    assert main([*base, "--single-order", "--orders", "auto"]) == 2
    assert main([*base, "--order-margin", "0.1"]) == 2  # a margin needs --orders auto
    assert main([*base, "--orders", "auto", "--baseline", "length"]) == 2
    assert "--orders" in capsys.readouterr().err
    assert main(["compare", "--model", tiny_bert, "--prompt", "2+2?", "--a", "4", "--b", "5", "--orders", "auto",
                 "--order-margin", "0.5"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["second_passes"] == 1 and 0.0 < shown["prob_a"] < 1.0
