"""``tinyrm export --onnx DIR``: the scoring graph for ONNX Runtime (see tinyrm.inference.export)."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .output import make_console

console = make_console()


def cmd_export(args: argparse.Namespace) -> int:
    from ..inference.export import ExportConfig, OnnxRewardModel, export_onnx
    from ..pairwise.model import RewardModel

    if not args.onnx:
        raise UsageError("choose a format: --onnx DIR")
    rm = RewardModel.from_pretrained(args.model, device="cpu", max_length=args.max_length)
    try:
        path = export_onnx(ExportConfig(model=args.model, output=args.onnx, max_length=args.max_length,
                                        opset=args.opset, quantize=args.quantize), rm=rm)
    except ImportError as error:
        raise UsageError(str(error)) from error
    # Check the graph against the same PyTorch weights in fp32 before calling it done.
    items = [("What is 2 + 2?", "4", "5"), ("Say hello politely.", "Hello! How can I help you today?", "What.")]
    rm.engine.config.precision = "fp32"
    expected = rm.compare_batch(items)
    got = OnnxRewardModel.load(args.onnx).compare_batch(items)
    diff = max(abs(x - y) for x, y in zip(expected, got))
    console.print(f"wrote {path} (max |P_onnx - P_torch| = {diff:.2e} on {len(items)} check pairs)")
    if args.quantize:
        console.print(f"wrote {path.parent / 'model.int8.onnx'} (int8 dynamic quantisation)")
    if diff > 1e-3:
        console.print("[red]ONNX output differs from PyTorch[/red]")
        return 1
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a reward model for ONNX Runtime")
    p.add_argument("--onnx", metavar="DIR", required=True, help="output folder (model.onnx, tokenizer, tinyrm.json)")
    p.add_argument("--model", default="default")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--quantize", action="store_true", help="also write an int8 dynamically quantised model")
    p.set_defaults(handler=cmd_export)
