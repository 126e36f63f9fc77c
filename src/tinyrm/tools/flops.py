"""Compute accounting: GFLOPs per token of scoring, and the accuracy-vs-compute plot.

Three counts per model at sequence length L:

* **approx** (the Kaplan et al. 2020 forward-pass estimate):
  ``C = 2 * N + 2 * n_layer * L * d_model`` FLOPs per token, with ``N`` the *non-embedding*
  parameters. The first term is the weight matmuls, the second the attention scores.
* **exact**: ``torch.utils.flop_counter.FlopCounterMode`` over one real scoring forward pass of a
  length-L input (encoder on every token, MLM head at the mask only, as tinyrm scores), divided
  by L. Eager attention is used for the count so the attention matmuls are seen (both QK^T and
  AV, hence about twice the approximation's attention term), plus the embedding-free head.
* **paper**: the formula of TinyRM's Appendix C *as the paper (issue 14) gives it*,
  ``C = 2 * N + 6 * N * L / H`` FLOPs per token with ``N`` parameters, ``L`` layers and ``H`` the
  hidden size (no sequence length). It is implemented literally, not "corrected": note that it is
  not the standard Kaplan form above, whose second term is ``2 * n_layer * n_ctx * d_model``. It is
  reported for ``N`` with and without embeddings; the compute plot uses it by default (N without
  embeddings, the convention of the plot's other reference estimates) so that our points sit on
  the paper's axis.

``--model shape:modernbert-base`` / ``shape:modernbert-large`` count the ModernBERT shapes from
their configuration alone (weights on the meta device: nothing is downloaded or allocated).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

FORMULA = "approx GFLOPs/token = (2*N_non_embedding + 2*n_layer*L*d_model) / 1e9  (Kaplan et al. 2020, Eq. 2.2)"
PAPER_FORMULA = "paper GFLOPs/token = (2*N + 6*N*L/H) / 1e9, N parameters, L layers, H hidden (TinyRM App. C, as given)"
FORMULAS = ("exact", "paper")  # `tinyrm flops --formula`: which count is the headline gflops_per_token
MEASURES = ("paper", "exact", "approx")  # `plot-compute`: how our models' GFLOPs/token is obtained

# Architectures counted from their configuration alone (ModernBERT-base / -large as published).
SHAPES: dict[str, dict] = {
    "shape:modernbert-base": dict(hidden_size=768, num_hidden_layers=22, intermediate_size=1152, vocab_size=50368,
                                  num_attention_heads=12),
    "shape:modernbert-large": dict(hidden_size=1024, num_hidden_layers=28, intermediate_size=2624, vocab_size=50368,
                                   num_attention_heads=16),
}

# The paper's Figure (accuracy on RewardBench vs GFLOPs/token). TinyRM values are the paper's;
# for the two others the paper gives accuracy only, so GFLOPs/token is our 2*N_non_embedding.
REFERENCE_POINTS: list[dict] = [
    {"label": "TinyRM base (paper)", "gflops": 0.19, "accuracy": 78.4},
    {"label": "TinyRM large (paper)", "gflops": 0.34, "accuracy": 86.4},
    {"label": "Llama3-SteerLM-RM 70B (2N est.)", "gflops": 137.0, "accuracy": 91.0},
    {"label": "OpenAssistant DeBERTa-v3-large (2N est.)", "gflops": 0.60, "accuracy": 64.9},
]


@dataclass
class FlopsConfig:
    model: str = "default"  # a model folder / hub id, ``default``, or a name in SHAPES
    seq_len: int = 512
    formula: str = "exact"  # exact | paper: which count ``gflops_per_token`` reports
    count_exact: bool = True  # run the FlopCounterMode pass (False: exact fields are None)


@dataclass
class FlopsReport:
    model: str
    seq_len: int
    n_layer: int
    d_model: int
    parameters: int
    embedding_parameters: int
    non_embedding_parameters: int
    approx_gflops_per_token: float
    exact_gflops_per_token: float | None
    exact_gflops_per_sequence: float | None
    formula: str = FORMULA
    # The paper's formula (PAPER_FORMULA) for both choices of N.
    n_params_with_embeddings: int = 0
    n_params_without_embeddings: int = 0
    paper_gflops_per_token_with_embeddings: float = 0.0
    paper_gflops_per_token_without_embeddings: float = 0.0
    paper_formula: str = PAPER_FORMULA
    # The headline number: ``exact_gflops_per_token`` or, for ``paper``, the paper formula with N
    # without embeddings.
    gflops_formula: str = "exact"
    gflops_per_token: float | None = None


def _unique_parameters(module: torch.nn.Module) -> dict[int, torch.nn.Parameter]:
    return {id(p): p for p in module.parameters()}


def parameter_split(mlm: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, embedding parameters), tied tensors counted once.

    Embeddings = the encoder's embedding module (token, position, type tables and their norm);
    the tied vocabulary projection is the same tensor as the token table.
    """
    from ..backbone import encoder_of

    everything = _unique_parameters(mlm)
    encoder = encoder_of(mlm)
    embeddings = getattr(encoder, "embeddings", None) or mlm.get_input_embeddings()
    embedding_ids = set(_unique_parameters(embeddings)) | {id(mlm.get_input_embeddings().weight)}
    output = mlm.get_output_embeddings()
    if output is not None:  # an untied vocabulary projection is embedding-sized too
        embedding_ids.add(id(output.weight))
    total = sum(p.numel() for p in everything.values())
    embedding = sum(p.numel() for i, p in everything.items() if i in embedding_ids)
    return total, embedding


def approx_flops_per_token(non_embedding: int, n_layer: int, seq_len: int, d_model: int) -> float:
    return 2.0 * non_embedding + 2.0 * n_layer * seq_len * d_model


def paper_flops_per_token(n_params: int, n_layer: int, hidden: int) -> float:
    """The TinyRM paper's FLOPs per token, exactly as given: ``2*N + 6*N*L/H``.

    ``N`` parameters (pass the count with or without embeddings), ``L`` layers, ``H`` hidden size.
    Taken literally from the paper (issue 14); it does not depend on the sequence length and is not
    the dimensionally standard Kaplan estimate (``approx_flops_per_token``).
    """
    return 2.0 * n_params + 6.0 * n_params * n_layer / hidden


def shape_model(name: str) -> torch.nn.Module:
    """A ModernBERT masked LM of a SHAPES configuration on the meta device (no download, no memory)."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    config = ModernBertConfig(**SHAPES[name])
    config._attn_implementation = "eager"  # as load_for_counting: attention matmuls visible to the counter
    with torch.device("meta"):
        model = ModernBertForMaskedLM(config)
    return model.eval()


def load_for_counting(name_or_path: str):
    """Tokenizer and MLM with eager attention (fused SDPA kernels on CPU escape the counter)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from ..backbone import check_model_source, model_load_errors

    if name_or_path in SHAPES and not Path(name_or_path).exists():
        return None, shape_model(name_or_path)
    path = check_model_source(name_or_path)
    if (Path(path) / "tinyrm.json").is_file():
        saved = json.loads((Path(path) / "tinyrm.json").read_text())
        if saved.get("objective") == "route":  # one specialist scores each comparison
            first = next(iter(saved["extra"]["specialists"].values()))
            return load_for_counting(str(Path(path) / first))
    from transformers.utils import logging as hf_logging

    with model_load_errors(name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(path)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a missing MLM head does not change the FLOP count
        try:
            model = AutoModelForMaskedLM.from_pretrained(path, attn_implementation="eager")
        finally:
            hf_logging.set_verbosity(verbosity)
    return tokenizer, model.eval()


@torch.no_grad()
def exact_flops(mlm: torch.nn.Module, tokenizer, seq_len: int) -> int:
    """FLOPs of one tinyrm scoring pass (encoder on ``seq_len`` tokens, head at the mask).

    ``tokenizer`` None (a SHAPES model): arbitrary ids, which do not change the count. A meta-device
    model runs without an attention mask (building one reads tensor values); an all-ones mask adds
    no matmul FLOPs, so the count is the same.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from ..backbone import mask_logits
    from ..prompt import resolve_answer_ids

    limit = getattr(mlm.config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise ValueError(f"--seq-len {seq_len} exceeds the model's {limit} positions")
    if tokenizer is None:
        ordinary, mask_id, answer_ids = list(range(1000, 1100)), 999, [997, 998]
    else:
        special = set(tokenizer.all_special_ids)
        ordinary = [i for i in range(min(tokenizer.vocab_size, 2000)) if i not in special][:100]
        mask_id, answer_ids = tokenizer.mask_token_id, resolve_answer_ids(tokenizer, ["0", "1"])
    device = next(mlm.parameters()).device
    ids = torch.tensor([ordinary[i % len(ordinary)] for i in range(seq_len)]).unsqueeze(0)
    ids[0, -2] = mask_id
    ids = ids.to(device)
    attention = None if device.type == "meta" else torch.ones_like(ids)
    counter = FlopCounterMode(display=False)
    with counter:
        mask_logits(mlm, ids, attention, torch.tensor([seq_len - 2], device=device),
                    token_ids=torch.tensor(answer_ids, device=device), token_type_ids=torch.zeros_like(ids))
    return int(counter.get_total_flops())


def flops_report(config: FlopsConfig) -> FlopsReport:
    if config.seq_len < 4:
        raise ValueError("--seq-len must be at least 4")
    if config.formula not in FORMULAS:
        raise ValueError(f"formula must be one of {FORMULAS}, got {config.formula!r}")
    if config.formula == "exact" and not config.count_exact:
        raise ValueError("formula 'exact' needs count_exact=True")
    tokenizer, mlm = load_for_counting(config.model)
    total, embedding = parameter_split(mlm)
    n_layer = int(mlm.config.num_hidden_layers)
    d_model = int(mlm.config.hidden_size)
    approx = approx_flops_per_token(total - embedding, n_layer, config.seq_len, d_model)
    exact = exact_flops(mlm, tokenizer, config.seq_len) if config.count_exact else None
    exact_per_token = None if exact is None else exact / config.seq_len / 1e9
    paper_with = paper_flops_per_token(total, n_layer, d_model) / 1e9
    paper_without = paper_flops_per_token(total - embedding, n_layer, d_model) / 1e9
    return FlopsReport(
        model=str(config.model), seq_len=config.seq_len, n_layer=n_layer, d_model=d_model, parameters=total,
        embedding_parameters=embedding, non_embedding_parameters=total - embedding,
        approx_gflops_per_token=approx / 1e9, exact_gflops_per_token=exact_per_token,
        exact_gflops_per_sequence=None if exact is None else exact / 1e9,
        n_params_with_embeddings=total, n_params_without_embeddings=total - embedding,
        paper_gflops_per_token_with_embeddings=paper_with, paper_gflops_per_token_without_embeddings=paper_without,
        gflops_formula=config.formula, gflops_per_token=exact_per_token if config.formula == "exact" else paper_without,
    )


# ----------------------------------------------------------------------------- plot-compute
@dataclass
class PlotConfig:
    results: list[str]
    output: str = "compute.png"
    seq_len: int = 512
    # paper | exact | approx: how GFLOPs/token of our models is obtained. ``paper`` (the paper's
    # formula, N without embeddings) by default, so our points are comparable with the paper's figure.
    measure: str = "paper"
    labels: list[str] | None = None


@dataclass
class PlotPoint:
    label: str
    gflops: float
    accuracy: float  # percent


def point_from_results(path: str, config: PlotConfig, label: str | None) -> PlotPoint:
    try:
        results = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
    if not isinstance(results, dict) or "accuracy" not in results:
        raise ValueError(f"{path}: not a results file (no 'accuracy'); write one with `tinyrm eval --output`")
    gflops = results.get("gflops_per_token")
    if gflops is None:
        model = results.get("model")
        if not model:
            raise ValueError(f"{path}: no 'model' to measure and no 'gflops_per_token'")
        if str(model).startswith("baseline:"):
            raise ValueError(f"{path}: {model} is a heuristic with no FLOPs to count; plot model results")
        exact = config.measure == "exact"  # the counter pass only when it is the number plotted
        report = flops_report(FlopsConfig(model=model, seq_len=config.seq_len,
                                          formula="exact" if exact else "paper", count_exact=exact))
        gflops = {"exact": report.exact_gflops_per_token, "approx": report.approx_gflops_per_token,
                  "paper": report.paper_gflops_per_token_without_embeddings}[config.measure]
    name = label or Path(str(results.get("model") or path)).name
    # A RewardBench results file is plotted by its score, as the paper's points are (the headline
    # mean of chat, reasoning and safety), not by the pooled accuracy over its rows.
    score = next((results[key] for key in ("overall_paper", "overall") if results.get(key) is not None),
                 results["accuracy"])
    return PlotPoint(label=name, gflops=float(gflops), accuracy=100.0 * float(score))


def plot_compute(config: PlotConfig) -> list[PlotPoint]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if config.measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {config.measure!r}")
    if config.labels is not None and len(config.labels) != len(config.results):
        raise ValueError(f"--labels: got {len(config.labels)} labels for {len(config.results)} results files")
    labels: Sequence[str | None] = config.labels or [None] * len(config.results)
    ours = [point_from_results(p, config, label) for p, label in zip(config.results, labels)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rightmost = max([r["gflops"] for r in REFERENCE_POINTS] + [p.gflops for p in ours])
    for ref in REFERENCE_POINTS:
        ax.scatter(ref["gflops"], ref["accuracy"], marker="s", color="tab:gray")
        right_edge = ref["gflops"] >= rightmost / 10  # label to the left so it stays inside the axes
        ax.annotate(ref["label"], (ref["gflops"], ref["accuracy"]), textcoords="offset points",
                    xytext=(-5 if right_edge else 5, 4), ha="right" if right_edge else "left", fontsize=8,
                    color="tab:gray")
    grouped: dict[tuple[float, float], list[str]] = {}  # models at the same point share one label
    for point in ours:
        grouped.setdefault((point.gflops, point.accuracy), []).append(point.label)
    for (gflops, accuracy), names in grouped.items():
        ax.scatter(gflops, accuracy, marker="o", color="tab:blue")
        ax.annotate(", ".join(names), (gflops, accuracy), textcoords="offset points", xytext=(5, -10),
                    fontsize=8, color="tab:blue")
    ax.set_xscale("log")
    ours_how = ("paper formula 2N+6NL/H, N without embeddings" if config.measure == "paper"
                else f"{config.measure} at L={config.seq_len}")
    ax.set_xlabel(f"GFLOPs per token (log; ours: {ours_how})")
    ax.set_ylabel("RewardBench score or pairwise accuracy (%)")
    ax.set_title("Accuracy vs compute (gray: paper reference points)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    Path(config.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(config.output, dpi=120)
    plt.close(fig)
    return ours


def report_json(report: FlopsReport) -> str:
    return json.dumps(asdict(report), indent=2)
