"""``tinyrm calibrate``: fit a temperature on a dev set (a shell over ``tinyrm.evaluation.calibrate``), and the
``--no-calibration`` flag of the commands that give out probabilities (eval, compare, rank, score, serve)."""

from __future__ import annotations

import argparse

from .output import emit_json, make_console


def add_calibration_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-calibration", dest="calibrated", action="store_false",
                   help="the model's raw probabilities, even where `tinyrm calibrate` saved a temperature "
                        "(each probability keeps its side of 0.5)")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..evaluation.calibrate import CalibrateConfig, calibrate

    result = calibrate(CalibrateConfig(model=args.model, data=args.data, output=args.output,
                                       batch_size=args.batch_size, precision=args.precision, context=args.context,
                                       skip_bad_rows=args.skip_bad_rows, progress=args.progress))
    if args.json:
        emit_json(result.to_dict())
        return 0
    console = make_console()
    where = f"updated {result.output} in place" if result.in_place else f"wrote {result.output}"
    console.print(f"temperature {result.temperature:.4g} fitted on {result.n} {result.unit} "
                  f"({', '.join(result.data)}) in {result.seconds:.1f}s")
    ece = ("" if result.ece_before is None else
           f"; ECE {result.ece_before:.4f} -> {result.ece_after:.4f}")
    console.print(f"log loss on that data {result.log_loss_before:.4f} -> {result.log_loss_after:.4f}{ece} "
                  "(evaluate on other data: `tinyrm eval`)")
    console.print(f"{where}: tinyrm.json \"calibration\" and the model card")
    if result.warning:
        console.print(f"[yellow]warning:[/yellow] {result.warning}", highlight=False)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calibrate", help="fit a temperature on dev data so probabilities mean what they say")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="a saved tinyrm model (pairwise of any kind, process or outcome), a hub id or 'default'")
    p.add_argument("--data", nargs="+", required=True, metavar="DEV.jsonl",
                   help="dev data, not the evaluation set: preference pairs, or step-graded rows for a process / "
                        "outcome model")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="write the calibrated model there (a copy of the folder); default: update --model in place")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--precision", default=None, choices=["auto", "bf16", "fp32", "int8"],
                   help="scoring precision of the fit (default auto); use the one you will score with")
    p.add_argument("--context", default=None, choices=["prefix", "full"], help="process models: context mode")
    p.add_argument("--skip-bad-rows", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the result (temperature, log loss before / after, ...) "
                                                       "as JSON on stdout")
    p.set_defaults(handler=cmd_calibrate)
