"""Does the part that decides a preference survive truncation? ``ends`` against ``diff`` truncation.

For each JSONL file, a seeded sample of pairs is encoded (chosen first) with the embedded default
tokenizer at each ``--max-length``, once per truncation mode (tinyrm.truncation), and the table shows
the share of pairs that are cut at all and the share whose differing content (the token span where
chosen and rejected differ) is whole in the encoded input. Tokenization only: no model runs.

    python benchmarks/diff_survival.py                                   # train/*.jsonl and dev/hhh.jsonl
    python benchmarks/diff_survival.py --max-length 256 512 --max-pairs 200 ../shared/data/dev/hhh.jsonl
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_FILES = [str(SHARED / "train" / "*.jsonl"), str(SHARED / "dev" / "hhh.jsonl")]


def sample_pairs(path: str, max_pairs: int, seed: int) -> list:
    """Up to ``max_pairs`` pairs of ``path``, a seeded sample in file order (all when there are fewer)."""
    from tinyrm.data import read_jsonl

    pairs = read_jsonl(path).pairs
    if max_pairs and len(pairs) > max_pairs:
        keep = sorted(random.Random(seed).sample(range(len(pairs)), max_pairs))
        pairs = [pairs[i] for i in keep]
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=DEFAULT_FILES, help="JSONL files or globs")
    parser.add_argument("--max-length", type=int, nargs="+", default=[256], metavar="N")
    parser.add_argument("--max-pairs", type=int, default=600, metavar="N", help="per file (0 = all)")
    parser.add_argument("--diff-context", type=int, default=None, metavar="N",
                        help="context of the diff mode (default: tinyrm.truncation.DEFAULT_DIFF_CONTEXT)")
    parser.add_argument("--template", default="flan", choices=["flan", "tinyrm"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer
    from transformers.utils import logging

    from tinyrm.backbone import resolve_model_path
    from tinyrm.prompt import ClozeEncoder, get_template
    from tinyrm.truncation import DEFAULT_DIFF_CONTEXT, diff_survival

    logging.set_verbosity_error()  # "sequence longer than the model": expected, these are cut afterwards
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("default"))
    context = DEFAULT_DIFF_CONTEXT if args.diff_context is None else args.diff_context
    files = [path for pattern in args.files for path in sorted(glob.glob(pattern))]
    if not files:
        parser.error(f"no file matches {args.files}")
    started = time.perf_counter()
    print(f"diff context {context} tokens; template {args.template}; up to {args.max_pairs} pairs per file, "
          "chosen first")
    for max_length in args.max_length:
        encoders = {mode: ClozeEncoder(tokenizer, get_template(args.template), max_length=max_length,
                                       truncation=mode, diff_context=context) for mode in ("ends", "diff")}
        print(f"\nmax_length {max_length}")
        print(f"{'file':<28} {'pairs':>6} {'truncated':>10} {'kept ends':>10} {'kept diff':>10}")
        totals = {"pairs": 0, "truncated": 0, "ends": 0, "diff": 0}
        for path in files:
            pairs = sample_pairs(path, args.max_pairs, args.seed)
            stats = {mode: diff_survival(encoder, pairs) for mode, encoder in encoders.items()}
            n, cut = stats["ends"]["pairs"], stats["ends"]["truncated"]
            totals["pairs"] += n
            totals["truncated"] += cut
            for mode in ("ends", "diff"):
                totals[mode] += stats[mode]["diff_kept"]
            print(f"{Path(path).name:<28} {n:>6} {cut / max(n, 1):>10.1%} "
                  f"{stats['ends']['diff_kept_share']:>10.1%} {stats['diff']['diff_kept_share']:>10.1%}")
        n = max(totals["pairs"], 1)
        print(f"{'all':<28} {totals['pairs']:>6} {totals['truncated'] / n:>10.1%} "
              f"{totals['ends'] / n:>10.1%} {totals['diff'] / n:>10.1%}")
    print(f"\n{time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
