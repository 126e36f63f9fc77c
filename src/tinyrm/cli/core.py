"""Core subcommands: train, eval, compare, demo."""

from __future__ import annotations

import argparse
import json

from .calibrate import add_calibration_argument
from .evaluate import cmd_eval
from .output import make_console
from .scoring import add_scoring_arguments, scoring_options

console = make_console()


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from ..backbone import DORA_FORWARDS
    from ..prompt import parse_domain_prefixes
    from ..train import OBJECTIVES
    from ..training.config import TrainConfig
    from ..truncation import TRUNCATION_MODES

    d = TrainConfig()
    p.add_argument("--model", default=d.model, help="masked-LM checkpoint, hub id or 'default' (embedded)")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE",
                   help="JSONL files/globs or hub:NAME[:SPLIT]; several mix")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--objective", default=d.objective, choices=["auto", *sorted(OBJECTIVES)],
                   help="auto: cloze for a checkpoint with an MLM head, the measured best otherwise (docs/training.md)")
    p.add_argument("--pooling", default=d.pooling, choices=["auto", "cls", "mean"], help="classifier objective only")
    p.add_argument("--context", default=d.context, choices=["prefix", "full"],
                   help="process objective: judge each step from the steps before it, or all steps in one pass")
    p.add_argument("--step-class-weight", default=d.step_class_weight, metavar="balanced|none|W",
                   help="process/outcome: weight the rare 'incorrect' verdicts n/(2 n_class) (balanced), "
                        "not at all (none), or by W (correct = 1)")
    p.add_argument("--prefix", default=d.prefix, help="instruction prefix")
    p.add_argument("--domain-prefixes", type=parse_domain_prefixes, default=d.domain_prefixes, metavar="JSON",
                   help='per-domain prefixes, e.g. \'{"safety": "Which response is safer?"}\' (others: --prefix)')
    p.add_argument("--template", default=d.template, choices=["flan", "tinyrm"])
    p.add_argument("--answer-tokens", nargs=2, default=list(d.answer_tokens), metavar=("TOK0", "TOK1"))
    p.add_argument("--read", default=d.read, choices=["auto", "mask", "cls"],
                   help="cloze: where the MLM head reads the answer ([MASK] slot or [CLS])")
    p.add_argument("--lr", type=float, default=d.lr, help="default: fits the device (CPU 1e-4, GPU 5e-5)")
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="effective batch (gradient accumulation); default: CPU 16, GPU 256")
    p.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size, help="default: CPU 16, GPU 32")
    p.add_argument("--max-length", type=int, default=d.max_length, help="default: CPU 256, GPU 512")
    p.add_argument("--truncation", default=d.truncation, choices=list(TRUNCATION_MODES),
                   help="cloze: how a pair over --max-length is cut: keep each response's head and tail (ends) "
                        "or where the two responses differ (diff); saved with the model, used when scoring")
    p.add_argument("--diff-context", type=int, default=d.diff_context, metavar="N",
                   help="--truncation diff: at least N shared tokens kept on each side of the differing span")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="optimizer steps; overrides --epochs")
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    p.add_argument("--head-lr-scale", type=float, default=d.head_lr_scale, metavar="X",
                   help="learning rate x X for parameters the checkpoint lacked (an initialised MLM head)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--dora-rank", type=int, default=d.dora_rank, help="0 = full fine-tuning")
    p.add_argument("--dora-alpha", type=float, default=d.dora_alpha)
    p.add_argument("--dora-targets", nargs="+", default=d.dora_targets, metavar="MODULE")
    p.add_argument("--freeze-layers", type=int, default=d.freeze_layers,
                   help="freeze the embeddings and the lowest K encoder layers")
    p.add_argument("--order", default=d.order, choices=["both", "random"],
                   help="show each pair in both orders, or in one seeded random order")
    p.add_argument("--loss", default=d.loss, choices=["pair", "full-vocab"])
    p.add_argument("--precision", default=d.precision, choices=["auto", "bf16", "fp32"])
    p.add_argument("--attention", default=d.attention, choices=["auto", "packed", "padded"],
                   help="packed: each micro-batch as one token stream, no padding (varlen attention); auto: packed "
                        "on the CPU and on CUDA where torch's varlen_attn has a backward, else padded (not saved "
                        "with the model)")
    p.add_argument("--dora-forward", default=d.dora_forward, choices=DORA_FORWARDS,
                   help="DoRA layers' forward: fused (the same function in two ops over the activations) or "
                        "peft's own (not saved with the model)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save-steps", type=int, default=d.save_steps, help="checkpoint every N steps (0 = never)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    p.add_argument("--skip-bad-rows", action="store_true")
    p.add_argument("--group-by-length", dest="group_by_length", action="store_true",
                   help="batch examples of similar length (less padding, lower accuracy measured: docs/training.md)")
    p.add_argument("--no-group-by-length", dest="group_by_length", action="store_false", help="the default")
    p.add_argument("--max-pairs", type=int, default=d.max_pairs, metavar="N",
                   help="train on N pairs, a seeded sample with an equal share per domain (0 = all)")
    p.add_argument("--length-balance", dest="length_balance", action="store_true", default=d.length_balance,
                   help="within each domain, the chosen response is the longer one in half of the pairs (and in "
                        "every micro-batch): length stops being a label cue")
    p.add_argument("--no-length-balance", dest="length_balance", action="store_false")
    p.add_argument("--eval-data", nargs="+", default=d.eval_data, metavar="FILE",
                   help="cloze: held-out pairs scored during training (metrics.jsonl 'eval' records, model card)")
    p.add_argument("--eval-steps", type=int, default=d.eval_steps, metavar="N",
                   help="with --eval-data: every N optimizer steps (0 = at the end only)")
    p.add_argument("--report-to", nargs="+", default=d.report_to, metavar="NAME",
                   help="logging integrations of the Hugging Face Trainer: none (default), all, or any of "
                        "tensorboard, wandb, mlflow, ... (loss, learning rate and --eval-data accuracy; "
                        "tensorboard: pip install 'tinyrm[tensorboard]', event files under DIR/runs/)")
    p.add_argument("--cache-dir", default=d.cache_dir, metavar="DIR",
                   help="where tokenised data is cached (default: $TINYRM_DATASETS_CACHE or ~/.cache/tinyrm/datasets)")
    p.add_argument("--no-cache", dest="data_cache", action="store_false",
                   help="tokenise afresh into a temporary folder: nothing read from or left in the cache")
    p.add_argument("--no-pair-batches", dest="pair_batches", action="store_false",
                   help="shuffle each order on its own instead of keeping a pair's two orders in one batch")
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help="paper configuration (see `tinyrm recipes`) or recipe .json; explicit flags override it")
    # Options left out stay out of the namespace (TrainConfig supplies the defaults), so a recipe
    # can tell the flags a user typed from the ones argparse filled in.
    for action in p._actions:
        if action.dest in d.__dataclass_fields__ and action.dest not in ("data", "output"):
            action.default = argparse.SUPPRESS


def train_config_from_args(args: argparse.Namespace):
    from ..training.config import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields}
    if getattr(args, "recipe", None):
        from ..training.recipes import apply_recipe, load_recipe

        values = apply_recipe(load_recipe(args.recipe), values)
    if "answer_tokens" in values:
        values["answer_tokens"] = tuple(values["answer_tokens"])
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import train

    result = train(train_config_from_args(args))
    console.print(f"saved to {result.output}: {result.steps} steps, {result.pairs} pairs in {result.seconds:.1f}s "
                  f"({result.pairs_per_second:.1f} pairs/s, {result.examples_per_second:.1f} examples/s)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..auto import load
    from ..inference.adaptive import both_orders_value, order_report, stats_of
    from ..inference.packed import apply_attention
    from ..temperature import use_calibration

    orders, order_margin, precision = scoring_options(args)
    rm = apply_attention(load(args.model, template=args.template, prefix=args.prefix, precision=precision),
                         getattr(args, "attention", None))
    use_calibration(rm, getattr(args, "calibrated", True))
    before = stats_of(rm) if orders == "auto" else None
    # order_margin only with --orders auto: baselines and routes take no such argument.
    extra = {} if before is None else {"order_margin": order_margin}
    prob = rm.compare(args.prompt, args.a, args.b, both_orders=both_orders_value(orders), **extra)
    out = {"prob_a": prob, "better": "a" if prob > 0.5 else "b" if prob < 0.5 else "tie"}
    if before is not None:  # orders, order_margin, second_passes (0 or 1), second_pass_fraction
        out.update(order_report(rm, before, order_margin))
    print(json.dumps(out))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..tools.demo import DemoConfig, run_demo

    summary = run_demo(DemoConfig(output=args.output, n_train=args.n_train, n_test=args.n_test,
                                  objective=args.objective))
    from rich.table import Table

    table = Table(title=f"tinyrm demo: embedded all-MiniLM-L6-v2 ({summary['objective']} objective) "
                        "on the synthetic held-out split")
    table.add_column("subset")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("n", justify="right")
    before, after = summary["before"], summary["after"]
    table.add_row("overall", f"{before['accuracy']:.3f}", f"{after['accuracy']:.3f}", str(after["n"]))
    for name, row in after["subsets"].items():
        table.add_row(name, f"{before['subsets'][name]['accuracy']:.3f}", f"{row['accuracy']:.3f}", str(row["n"]))
    console.print(table)
    t = summary["train"]
    console.print(f"training: {t['steps']} steps, {t['pairs']} pairs, {t['seconds']:.1f}s, "
                  f"{t['pairs_per_second']:.1f} pairs/s; results in {args.output}/demo_results.json")
    return 0


def add_prompt_overrides(p: argparse.ArgumentParser) -> None:
    """For checkpoints without tinyrm.json (e.g. published TinyRM models: --template tinyrm)."""
    p.add_argument("--template", default=None, choices=["flan", "tinyrm"], help="override the saved template")
    p.add_argument("--prefix", default=None, help="override the saved instruction prefix")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a reward model on preference pairs")
    add_train_arguments(p)
    p.set_defaults(handler=cmd_train)

    p = subparsers.add_parser("eval", help="pairwise accuracy on preference pairs")
    p.add_argument("--model", default="default")
    p.add_argument("--data", nargs="+", default=None, metavar="FILE")
    p.add_argument("--output", default=None, metavar="results.json")
    p.add_argument("--predictions", default=None, metavar="FILE",
                   help="pairwise: also write one JSON line per pair, in input order: id, subset, domain (where "
                        "the row has them) and prob_chosen, so every figure of the results can be recomputed")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="pairwise: also draw the results (reliability diagram, accuracy per subset with 95%% "
                        "intervals beside the length heuristic, length bias) into a PNG; `tinyrm report` draws "
                        "a saved results JSON the same way")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar on stderr (pairs, pairs/s)")
    p.add_argument("--benchmark", default=None, choices=["rewardbench"],
                   help="RewardBench categories (without --data: allenai/reward-bench, split filtered)")
    p.add_argument("--baseline", default=None, choices=["length", "random"], help="heuristic, not a model")
    p.add_argument("--objective", default=None, choices=["process", "outcome"], help="step-level / outcome evaluation")
    p.add_argument("--context", default=None, choices=["prefix", "full"], help="--objective process: context mode")
    p.add_argument("--aggregate", default="min", help="--objective: step-score aggregation for solution scores")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="token budget per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of --baseline random")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--single-order", action="store_true", help="score one order only (no position-bias removal)")
    add_scoring_arguments(p)
    add_calibration_argument(p)
    p.add_argument("--skip-bad-rows", action="store_true")
    p.add_argument("--json", action="store_true",
                   help="print the results (as written to --output) as JSON on stdout, and nothing else there")
    p.add_argument("--record", action="store_true",
                   help="keep the accuracy in the model folder (tinyrm.json extra.eval) and its model card")
    add_prompt_overrides(p)
    p.set_defaults(handler=cmd_eval)

    p = subparsers.add_parser("compare", help="P(a better than b) for one prompt")
    p.add_argument("--model", default="default")
    p.add_argument("--prompt", required=True)
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--single-order", action="store_true", help="= --orders one")
    add_scoring_arguments(p)
    add_calibration_argument(p)
    add_prompt_overrides(p)
    p.set_defaults(handler=cmd_compare)

    p = subparsers.add_parser("demo", help="train the embedded model offline on synthetic pairs")
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--n-train", type=int, default=2400, help="synthetic training pairs")
    p.add_argument("--n-test", type=int, default=400, help="synthetic held-out pairs")
    p.add_argument("--objective", default="auto", choices=["auto", "cloze", "classifier", "token"],
                   help="auto: what `tinyrm train --model default` picks (docs/training.md)")
    p.set_defaults(handler=cmd_demo)



