"""FLOPs accounting: approximation formula, exact counter, parameter split, compute plot."""

import json

import pytest

from tinyrm.cli import main
from tinyrm.tools.flops import (
    FlopsConfig,
    PlotConfig,
    approx_flops_per_token,
    flops_report,
    paper_flops_per_token,
    plot_compute,
)


def test_flops_report_on_tiny_bert(tiny_bert):
    # tiny BERT: 2 layers, d=32, ffn 64, vocab V, 1024 positions, 2 token types.
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(tiny_bert).vocab_size
    report = flops_report(FlopsConfig(model=tiny_bert, seq_len=128))
    assert report.embedding_parameters == (vocab + 1024 + 2) * 32 + 2 * 32
    layer = 4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 2 * 32
    head = 32 * 32 + 32 + 2 * 32 + vocab  # transform dense + LayerNorm + decoder bias (decoder weight is tied)
    assert report.non_embedding_parameters == 2 * layer + head
    assert report.approx_gflops_per_token == pytest.approx(
        approx_flops_per_token(report.non_embedding_parameters, 2, 128, 32) / 1e9, rel=1e-6)
    # Exact count by hand: per token 2*(4*32*32 + 2*32*64) weight FLOPs per layer and 2*2*L*d attention
    # (QK^T and AV); the head runs on the mask only (transform + 2 answer rows).
    per_token_layers = 2 * (2 * (4 * 32 * 32 + 2 * 32 * 64) + 2 * 2 * 128 * 32)
    head_flops = 2 * 32 * 32 + 2 * 32 * 2
    assert report.exact_gflops_per_sequence * 1e9 == pytest.approx(128 * per_token_layers + head_flops, rel=1e-3)


def test_exact_grows_with_length(tiny_modernbert):
    short = flops_report(FlopsConfig(model=tiny_modernbert, seq_len=64))
    long = flops_report(FlopsConfig(model=tiny_modernbert, seq_len=512))
    assert long.exact_gflops_per_token > short.exact_gflops_per_token  # attention is quadratic in L
    assert long.approx_gflops_per_token > short.approx_gflops_per_token
    with pytest.raises(ValueError, match="exceeds the model's 1024 positions"):
        flops_report(FlopsConfig(model=tiny_modernbert, seq_len=4096))


def test_plot_compute(tiny_bert, tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"model": tiny_bert, "accuracy": 0.61, "n": 10}))
    points = plot_compute(PlotConfig(results=[str(results)], output=str(tmp_path / "fig.png"), seq_len=128,
                                     labels=["tiny"]))
    assert points[0].accuracy == pytest.approx(61.0) and points[0].gflops > 0
    # The plot uses the paper's formula (N without embeddings) unless told otherwise.
    assert PlotConfig(results=[]).measure == "paper"
    report = flops_report(FlopsConfig(model=tiny_bert, seq_len=128))
    assert points[0].gflops == pytest.approx(report.paper_gflops_per_token_without_embeddings)
    exact = plot_compute(PlotConfig(results=[str(results)], output=str(tmp_path / "fig2.png"), seq_len=128,
                                    measure="exact"))
    assert exact[0].gflops == pytest.approx(report.exact_gflops_per_token)
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["plot-compute", str(bad), "--output", str(tmp_path / "x.png")]) == 2
    assert "not a results file" in capsys.readouterr().err
    assert main(["flops", "--model", tiny_bert, "--seq-len", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seq_len"] == 64
    # A RewardBench results file is plotted by its score, as the paper's points are, not its pooled accuracy.
    rewardbench = tmp_path / "rb.json"
    rewardbench.write_text(json.dumps({"model": tiny_bert, "accuracy": 0.745, "n": 4, "overall": 0.5,
                                       "overall_paper": 0.667, "gflops_per_token": 0.01}))
    point = plot_compute(PlotConfig(results=[str(rewardbench)], output=str(tmp_path / "rb.png")))[0]
    assert point.accuracy == pytest.approx(66.7)
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"model": "baseline:length", "accuracy": 0.6, "n": 4}))
    assert main(["plot-compute", str(baseline), "--output", str(tmp_path / "y.png")]) == 2
    assert "heuristic with no FLOPs to count" in capsys.readouterr().err


def test_paper_formula_by_hand(tiny_bert):
    # 2*N + 6*N*L/H, literally: N = 1000, L = 2 layers, H = 32 hidden.
    assert paper_flops_per_token(1000, 2, 32) == 2 * 1000 + 6 * 1000 * 2 / 32 == 2375.0
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(tiny_bert).vocab_size
    embedding = (vocab + 1024 + 2) * 32 + 2 * 32
    layer = 4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 2 * 32
    without = 2 * layer + 32 * 32 + 32 + 2 * 32 + vocab
    report = flops_report(FlopsConfig(model=tiny_bert, seq_len=64, formula="paper", count_exact=False))
    assert (report.n_params_with_embeddings, report.n_params_without_embeddings) == (without + embedding, without)
    assert report.paper_gflops_per_token_with_embeddings * 1e9 == pytest.approx(
        2 * (without + embedding) + 6 * (without + embedding) * 2 / 32, rel=1e-12)
    assert report.paper_gflops_per_token_without_embeddings * 1e9 == pytest.approx(
        2 * without + 6 * without * 2 / 32, rel=1e-12)
    # Paper formula as headline; the exact pass was skipped on request.
    assert report.gflops_formula == "paper" and report.exact_gflops_per_token is None
    assert report.gflops_per_token == report.paper_gflops_per_token_without_embeddings
    with pytest.raises(ValueError, match="formula must be one of"):
        flops_report(FlopsConfig(model=tiny_bert, formula="kaplan"))


def test_cli_reports_both_parameter_counts(tiny_bert, capsys):
    assert main(["flops", "--model", tiny_bert, "--seq-len", "64", "--json", "--formula", "paper"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_params_with_embeddings"] == out["parameters"]
    assert out["n_params_without_embeddings"] == out["non_embedding_parameters"] < out["parameters"]
    assert out["gflops_formula"] == "paper"
    assert out["gflops_per_token"] == out["paper_gflops_per_token_without_embeddings"]
    assert out["paper_gflops_per_token_with_embeddings"] > out["paper_gflops_per_token_without_embeddings"] > 0
    assert out["exact_gflops_per_token"] > 0  # the CLI always counts exactly too
    # Default: the exact count is the headline; the existing fields are all there.
    assert main(["flops", "--model", tiny_bert, "--seq-len", "64", "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["gflops_formula"] == "exact" and default["gflops_per_token"] == default["exact_gflops_per_token"]
    for key in ("parameters", "embedding_parameters", "non_embedding_parameters", "approx_gflops_per_token",
                "exact_gflops_per_token", "exact_gflops_per_sequence", "formula", "n_params_with_embeddings",
                "n_params_without_embeddings"):
        assert key in default
    assert main(["flops", "--model", tiny_bert, "--seq-len", "64", "--formula", "paper"]) == 0
    table = capsys.readouterr().out
    assert "paper (N with embeddings)" in table and "paper (N without embeddings)" in table and "2*N + 6*N*L/H" in table


def test_modernbert_shapes_without_download():
    # ModernBERT-base by hand: tied embeddings 50368x768 + norm; 22 layers of Wqkv, Wo, Wi (GLU), Wo and
    # two norms (layer 0 has no attention norm); final norm; head dense + norm; decoder bias.
    h, f, v = 768, 1152, 50368
    layer = h * 3 * h + h * h + h * 2 * f + f * h + 2 * h
    without = 22 * layer - h + h + (h * h + h) + v
    base = flops_report(FlopsConfig(model="shape:modernbert-base", seq_len=64))
    assert (base.n_layer, base.d_model) == (22, 768)
    assert (base.n_params_with_embeddings, base.n_params_without_embeddings) == (without + v * h + h, without)
    assert base.paper_gflops_per_token_without_embeddings * 1e9 == pytest.approx(2 * without + 6 * without * 22 / 768)
    assert base.exact_gflops_per_token > 0  # counted on the meta device
    large = flops_report(FlopsConfig(model="shape:modernbert-large", formula="paper", count_exact=False))
    assert (large.n_layer, large.d_model, large.n_params_with_embeddings) == (28, 1024, 395_881_664)
    assert large.paper_gflops_per_token_with_embeddings * 1e9 == pytest.approx(
        paper_flops_per_token(395_881_664, 28, 1024))
