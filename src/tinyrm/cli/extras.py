"""Workflow subcommands: recipes, sweep, merge, route, sft, flops, plot-compute, report."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from rich.table import Table

from ..errors import UsageError
from .output import emit_json, make_console

console = make_console()


def cmd_recipes(args: argparse.Namespace) -> int:
    from ..training.recipes import list_recipes

    recipes = list_recipes()
    if args.json:
        emit_json([r.to_dict() for r in recipes])
        return 0
    table = Table(title="tinyrm recipes (use: tinyrm train --recipe NAME --data ... --output ...)")
    for column in ("name", "model", "lr", "freeze", "DoRA r", "prefix"):
        table.add_column(column)
    for r in recipes:
        c = r.config
        model = str(c.get("model", "")).split("/")[-1]
        table.add_row(r.name, model, f"{c.get('lr', '')}", str(c.get("freeze_layers", 0)),
                      str(c.get("dora_rank", 0)), str(c.get("prefix", "")))
    console.print(table)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..tools.sweep import SweepConfig, completed_trials, run_sweep

    config = SweepConfig(
        data=args.data, eval_data=args.eval_data, trials=args.trials, storage=args.storage,
        study_name=args.study_name, model=args.model, output=args.output, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
        max_length=args.max_length, eval_batch_size=args.eval_batch_size, max_pairs=args.max_pairs,
        max_eval_pairs=args.max_eval_pairs, startup_trials=args.startup_trials, seed=args.seed,
        keep_models=args.keep_models,
    )

    def show(study, trial) -> None:
        value = "failed" if trial.value is None else f"{trial.value:.4f}"
        # study.best_trial raises until a trial has completed (a failed first trial would end the sweep).
        best = (f"  (best so far: {study.best_value:.4f}, trial {study.best_trial.number})"
                if completed_trials(study) else "  (none completed yet)")
        console.print(f"trial {trial.number}: accuracy {value} {trial.params}{best}")

    summary = run_sweep(config, on_trial=show)
    console.print(f"best trial {summary.best_number}: accuracy {summary.best_accuracy:.4f} {summary.best_params}")
    console.print(f"{summary.completed} trials in {summary.storage}; recipe {summary.recipe}; plots "
                  f"{', '.join(summary.plots) or 'none'}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from ..tools.merge import AverageConfig, MergeDoraConfig, average_checkpoints, merge_dora

    if bool(args.dora) == bool(args.average):
        raise UsageError("give exactly one of --dora DIR or --average DIR...")
    if args.dora:
        if args.weights:
            raise UsageError("--weights only applies to --average")
        report = merge_dora(MergeDoraConfig(dora=args.dora, output=args.output, data=args.data or [],
                                            n_pairs=args.n_pairs, tolerance=args.tolerance))
        console.print(f"merged {args.dora} -> {report.output}: max |dP| {report.max_abs_diff:.2e} on "
                      f"{report.n_pairs} pairs; scoring {report.seconds_adapter:.3f}s -> {report.seconds_merged:.3f}s "
                      f"(speed-up x{report.speedup:.2f})")
        print(json.dumps(asdict(report)))
        return 0
    rm = average_checkpoints(AverageConfig(checkpoints=args.average, output=args.output, weights=args.weights))
    console.print(f"averaged {len(args.average)} checkpoints -> {args.output} "
                  f"(weights {', '.join(f'{w:.3f}' for w in rm.config.extra['weights'])})")
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from ..pairwise.route import RouteConfig, build_route, parse_specialists

    report = build_route(RouteConfig(specialists=parse_specialists(args.specialists), data=args.data,
                                     output=args.output, c=args.c, seed=args.seed))
    console.print(f"route bundle -> {report.output}: router trained on {report.counts} "
                  f"(train accuracy {report.train_accuracy:.3f}; {report.skipped_other_domains} pairs of other "
                  "domains ignored)")
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from ..tools.sft import SFTConfig, sft

    result = sft(SFTConfig(model=args.model, data=args.data, output=args.output, lr=args.lr, epochs=args.epochs,
                           batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                           max_length=args.max_length, max_steps=args.max_steps,
                           mlm_probability=args.mlm_probability, seed=args.seed, precision=args.precision))
    windows = f" ({result.sequences} sequences)" if result.sequences != result.texts else ""
    console.print(f"saved to {result.output}: {result.steps} steps on {result.texts} texts{windows} in "
                  f"{result.seconds:.1f}s "
                  f"(final MLM loss {result.final_loss}); use it as `tinyrm train --model {result.output}`")
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    from ..tools.flops import FlopsConfig, flops_report

    report = flops_report(FlopsConfig(model=args.model, seq_len=args.seq_len, formula=args.formula))
    if args.json:
        emit_json(asdict(report))
        return 0
    table = Table(title=f"{report.model} at L={report.seq_len}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("parameters (all)", f"{report.parameters:,}")
    table.add_row("parameters (without embeddings)", f"{report.non_embedding_parameters:,}")
    table.add_row("embedding parameters", f"{report.embedding_parameters:,}")
    table.add_row("GFLOPs/token, approx", f"{report.approx_gflops_per_token:.4f}")
    table.add_row("GFLOPs/token, exact (FlopCounterMode)", f"{report.exact_gflops_per_token:.4f}")
    table.add_row("GFLOPs per scored sequence, exact", f"{report.exact_gflops_per_sequence:.3f}")
    if args.formula == "paper":
        table.add_row("GFLOPs/token, paper (N with embeddings)", f"{report.paper_gflops_per_token_with_embeddings:.4f}")
        table.add_row("GFLOPs/token, paper (N without embeddings)",
                      f"{report.paper_gflops_per_token_without_embeddings:.4f}")
    console.print(table)
    console.print(report.formula)
    if args.formula == "paper":
        console.print(report.paper_formula)
    return 0


def cmd_plot_compute(args: argparse.Namespace) -> int:
    from ..tools.flops import PlotConfig, plot_compute

    points = plot_compute(PlotConfig(results=args.results, output=args.output, seq_len=args.seq_len,
                                     measure=args.measure, labels=args.labels))
    for p in points:
        console.print(f"{p.label}: {p.gflops:.4f} GFLOPs/token, accuracy {p.accuracy:.1f}%")
    console.print(f"wrote {args.output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``tinyrm report RESULTS.json --output FILE.png``: what ``tinyrm eval --plot`` draws, from a saved file."""
    from pathlib import Path

    from ..evaluation.plots import plot_results
    from ..outputs import check_output, replacing

    path = Path(args.results)
    check_output("--output", args.output, [path])  # the PNG must not replace the results it draws
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: not a JSON file ({error})") from None
    try:
        with replacing(args.output) as tmp:  # the PNG whole or not at all
            report = plot_results(results, tmp, title=args.title)
    except ValueError as error:
        raise UsageError(f"{path}: {error}") from None
    for note in report.notes:
        console.print(note)
    console.print(f"wrote {args.output} ({', '.join(report.panels)})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("recipes", help="list the paper's training recipes")
    p.add_argument("--json", action="store_true", help="the recipes as a JSON list on stdout")
    p.set_defaults(handler=cmd_recipes)

    p = subparsers.add_parser("sweep", help="Bayesian (Optuna TPE) hyperparameter search")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE")
    p.add_argument("--eval-data", nargs="+", required=True, metavar="FILE")
    p.add_argument("--trials", type=int, required=True, help="completed trials wanted (resumed studies count theirs)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///<output>/sweep.db)")
    p.add_argument("--study-name", default="tinyrm-sweep")
    p.add_argument("--model", default="default")
    p.add_argument("--output", default="runs/sweep", metavar="DIR")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--micro-batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=64, help="sequences per pass when scoring --eval-data")
    p.add_argument("--max-pairs", type=int, default=None, help="seeded subsample of --data")
    p.add_argument("--max-eval-pairs", type=int, default=None, help="seeded subsample of --eval-data")
    p.add_argument("--startup-trials", type=int, default=None, help="random trials before TPE")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--keep-models", action="store_true", help="keep every trial's weights")
    p.set_defaults(handler=cmd_sweep)

    p = subparsers.add_parser("merge", help="fold DoRA adapters in, or average specialists' weights")
    p.add_argument("--dora", default=None, metavar="DIR", help="model trained with --dora-rank > 0")
    p.add_argument("--average", nargs="+", default=None, metavar="DIR", help="checkpoints of one backbone")
    p.add_argument("--weights", nargs="+", type=float, default=None, metavar="W", help="--average weights")
    p.add_argument("--output", required=True, metavar="OUT")
    p.add_argument("--data", nargs="+", default=None, metavar="FILE", help="--dora test pairs (default synthetic)")
    p.add_argument("--n-pairs", type=int, default=64, help="--dora test pairs used")
    p.add_argument("--tolerance", type=float, default=1e-4, help="--dora: max allowed |dP|")
    p.set_defaults(handler=cmd_merge)

    p = subparsers.add_parser("route", help="bundle specialists behind a domain router")
    p.add_argument("--specialists", nargs="+", required=True, metavar="DOMAIN=DIR")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE",
                   help="the specialists' training pairs (their 'domain' field trains the router)")
    p.add_argument("--output", required=True, metavar="OUT")
    p.add_argument("--c", type=float, default=10.0, help="logistic regression inverse regularisation")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_route)

    p = subparsers.add_parser("sft", help="continued masked-LM training on conversation text")
    p.add_argument("--model", default="default")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE", help="JSONL rows with 'text' or 'messages'")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--mlm-probability", type=float, default=0.3)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(handler=cmd_sft)

    p = subparsers.add_parser("flops", help="GFLOPs per token and parameter counts")
    p.add_argument("--model", default="default", metavar="DIR")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--json", action="store_true", help="the report as a JSON object on stdout")
    p.add_argument("--formula", default="exact", choices=["exact", "paper"],
                   help="headline count: exact (FlopCounterMode) or paper (2N + 6NL/H, N with and without embeddings)")
    p.set_defaults(handler=cmd_flops)

    p = subparsers.add_parser("plot-compute", help="accuracy vs GFLOPs/token with the paper's reference points")
    p.add_argument("results", nargs="+", metavar="results.json")
    p.add_argument("--output", required=True, metavar="fig.png")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--measure", default="paper", choices=["paper", "exact", "approx"],
                   help="paper: 2N+6NL/H (N without embeddings), comparable with the paper's figure")
    p.add_argument("--labels", nargs="+", default=None)
    p.set_defaults(handler=cmd_plot_compute)

    p = subparsers.add_parser("report",
                              help="draw a saved results JSON (reliability, accuracy per subset, length bias)")
    p.add_argument("results", metavar="RESULTS.json", help="what `tinyrm eval --output` wrote")
    p.add_argument("--output", required=True, metavar="FILE.png")
    p.add_argument("--title", default=None, help="the picture's title (default: the results' model)")
    p.set_defaults(handler=cmd_report)
