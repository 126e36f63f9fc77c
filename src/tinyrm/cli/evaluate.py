"""``tinyrm eval``: pairwise accuracy, or RewardBench categories, a heuristic reference, step metrics."""

from __future__ import annotations

import argparse

from ..errors import UsageError, UserError
from .output import emit_json, make_console, show_results
from .scoring import reject_for, scoring_options

OUTPUT_FLAGS = (("--output", "output"), ("--predictions", "predictions"), ("--plot", "plot"))


def check_outputs(args: argparse.Namespace) -> None:
    """Before any model time: each file eval will write is a file it can write, none of the ``--data`` files
    and none another's (``UsageError`` naming the flag and the path)."""
    import glob
    from pathlib import Path

    from ..outputs import check_output

    given = {flag: getattr(args, dest, None) for flag, dest in OUTPUT_FLAGS}
    given = {flag: path for flag, path in given.items() if path}
    inputs = [match for source in args.data or [] for match in ([source] if Path(source).exists()
                                                                 else glob.glob(source))]  # as --data reads them
    earlier: dict[str, str] = {}
    for flag, path in given.items():
        check_output(flag, path, inputs, others=earlier)
        earlier[flag] = path


def cmd_eval(args: argparse.Namespace) -> int:
    check_outputs(args)
    orders, order_margin, precision = scoring_options(args)
    args.single_order = orders == "one"  # what the specialised evaluations read
    if getattr(args, "plot", None) and args.objective in ("process", "outcome"):
        raise UsageError(f"--plot draws pairwise results, not --objective {args.objective} (use `tinyrm report`)")
    if args.benchmark == "rewardbench":
        reject_for(args, "--benchmark rewardbench")
        return eval_rewardbench(args)
    if args.baseline:
        reject_for(args, "--baseline")
        if getattr(args, "record", False):  # silently not written before
            raise UsageError("--record writes a model's accuracy into its folder; --baseline has no model")
        return eval_heuristic(args)
    if args.objective in ("process", "outcome"):
        if getattr(args, "record", False):
            raise UsageError(f"--record records pairwise accuracy, not --objective {args.objective} metrics "
                             "(keep them with --output)")
        if orders == "auto":  # --precision and --attention set the scoring engine, which step verdicts use too
            raise UsageError(f"--orders auto applies to the pairwise evaluation of a model, not to --objective "
                             f"{args.objective}")
        if getattr(args, "predictions", None):
            raise UsageError(f"--predictions applies to pairwise evaluations, not to --objective {args.objective}")
        return eval_process(args)
    from ..evaluation.evaluate import EvalConfig, evaluate
    from ..evaluation.results import results_table

    config = EvalConfig(model=args.model, data=args.data, output=args.output, batch_size=args.batch_size,
                        max_length=args.max_length, single_order=args.single_order,
                        skip_bad_rows=args.skip_bad_rows, template=args.template, prefix=args.prefix,
                        max_batch_tokens=args.max_batch_tokens, orders=orders, order_margin=order_margin,
                        precision=precision, predictions=getattr(args, "predictions", None),
                        attention=getattr(args, "attention", None), progress=getattr(args, "progress", True),
                        calibrated=getattr(args, "calibrated", True))
    if not args.data:
        raise ValueError("--data FILE... is required (except with --benchmark rewardbench)")
    results = evaluate(config)
    record(args, results)
    code = show_results(results, results_table, args.output, args.json)
    plot(args, results)
    return code


def plot(args: argparse.Namespace, results: dict) -> None:
    """``--plot FILE.png``: the results' pictures (``tinyrm.evaluation.plots``), as ``tinyrm report`` draws them."""
    if not getattr(args, "plot", None):
        return
    from ..evaluation.plots import plot_results
    from ..outputs import replacing

    with replacing(args.plot) as tmp:  # the PNG whole or not at all
        report = plot_results(results, tmp)
    console = make_console()  # stdout, as the table (stderr under --json)
    for note in report.notes:
        console.print(f"--plot: {note}")
    console.print(f"wrote {args.plot}")


def record(args: argparse.Namespace, results: dict) -> None:
    """``--record``: the measured accuracy goes into the saved folder's tinyrm.json and model card."""
    if not getattr(args, "record", False):
        return
    from pathlib import Path

    from ..config import CONFIG_FILE
    from ..model_card import record_eval

    if not (Path(args.model) / CONFIG_FILE).is_file():
        raise UserError(f"--record: {args.model!r} is not a saved tinyrm folder (no {CONFIG_FILE})")
    record_eval(args.model, results, data=args.data)


def eval_rewardbench(args: argparse.Namespace) -> int:
    """``tinyrm eval --benchmark rewardbench [--data FILE...] [--baseline length|random]``."""
    from ..evaluation.rewardbench import CATEGORY_TITLES, RewardBenchConfig, evaluate_rewardbench, rewardbench_tables

    config = RewardBenchConfig(
        model=args.model, data=args.data, output=args.output, batch_size=args.batch_size,
        max_length=args.max_length, single_order=args.single_order, skip_bad_rows=args.skip_bad_rows,
        template=getattr(args, "template", None), prefix=getattr(args, "prefix", None),
        baseline=getattr(args, "baseline", None), seed=getattr(args, "seed", 0),
        max_batch_tokens=getattr(args, "max_batch_tokens", None), predictions=getattr(args, "predictions", None),
        progress=getattr(args, "progress", True), calibrated=getattr(args, "calibrated", True),
    )
    results = evaluate_rewardbench(config)
    record(args, results)
    plot(args, results)
    if getattr(args, "json", False):
        emit_json(results)
        return 0
    console = make_console()
    for table in rewardbench_tables(results):
        console.print(table)
    for category, missing in results["missing_subsets"].items():
        console.print(f"{CATEGORY_TITLES[category]}: missing {len(missing)} subset(s): {', '.join(missing)}")
    if results["other_subsets"]:
        console.print(f"not in any category (reported per subset only): {', '.join(results['other_subsets'])}")
    if args.output:
        console.print(f"wrote {args.output}")
    return 0


def eval_heuristic(args: argparse.Namespace) -> int:
    """``tinyrm eval --baseline length|random --data FILE... [--seed N] [--output results.json]``."""
    from ..data import load_pairs
    from ..evaluation.heuristics import heuristic_results
    from ..evaluation.results import results_table, write_results

    if not args.data:
        raise ValueError("--data FILE... is required (or add --benchmark rewardbench for the RewardBench set)")
    pairs = load_pairs(args.data, skip_bad_rows=args.skip_bad_rows).pairs
    results = heuristic_results(args.baseline, pairs, seed=args.seed, predictions=getattr(args, "predictions", None))
    if args.output:
        write_results(results, args.output)
    code = show_results(results, results_table, args.output, bool(getattr(args, "json", False)))
    plot(args, results)
    return code


def eval_process(args: argparse.Namespace) -> int:
    """``tinyrm eval --objective process|outcome --model DIR --data FILE...``."""
    from ..process.evaluation import ProcessEvalConfig, evaluate, results_table

    if not args.data:
        raise ValueError("--data FILE... is required with --objective process|outcome")
    config = ProcessEvalConfig(
        model=args.model, data=args.data, objective=args.objective, context=getattr(args, "context", None),
        aggregate=getattr(args, "aggregate", None) or "min", batch_size=args.batch_size,
        max_length=args.max_length, skip_bad_rows=args.skip_bad_rows, output=args.output,
        calibrated=getattr(args, "calibrated", True), precision=getattr(args, "precision", None),
        attention=getattr(args, "attention", None), max_batch_tokens=getattr(args, "max_batch_tokens", None),
    )
    results = evaluate(config)
    return show_results(results, results_table, args.output, bool(getattr(args, "json", False)))
