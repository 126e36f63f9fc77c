"""Scoring-speed options shared by the commands that score pairs (``tinyrm eval``, ``tinyrm compare``).

``--orders both|one|auto`` (``--single-order`` still means ``--orders one``), ``--order-margin M``
(with ``--orders auto``: the swapped order only where the first P is within M of 0.5,
``tinyrm.inference.adaptive``), ``--precision auto|bf16|fp32|int8`` (int8: CPU only,
``tinyrm.inference.quantize``) and ``--attention auto|packed|padded`` (``tinyrm.inference.packed``;
``add_attention_argument`` gives it to ``score``, ``rank`` and ``serve`` too).
"""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..inference.adaptive import DEFAULT_ORDER_MARGIN, ORDERS, check_margin, orders_from_cli
from ..inference.packed import ATTENTIONS
from ..inference.precision import PRECISIONS


def add_attention_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attention", default=None, choices=list(ATTENTIONS),
                   help="auto (default): packed on CUDA where torch's varlen_attn runs and on the CPU (not int8), "
                        "else padded; packed: no "
                        "padding, the batch as one token stream (ModernBERT, BERT family); padded: right-padded "
                        "batches (docs/inference.md)")


def add_scoring_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--orders", default=None, choices=list(ORDERS),
                   help="both (default): average both presentation orders; one: the given order only; auto: "
                        "the swapped order only for pairs whose first P is within --order-margin of 0.5")
    p.add_argument("--order-margin", type=float, default=None, metavar="M",
                   help=f"--orders auto: second pass where |P - 0.5| < M (default {DEFAULT_ORDER_MARGIN}; "
                        "0.5 = both orders, 0 = one order)")
    p.add_argument("--precision", default=None, choices=list(PRECISIONS),
                   help="scoring precision (default auto: bf16 where native, else fp32); int8: dynamically "
                        "quantised encoder linears, CPU only")
    add_attention_argument(p)


def scoring_options(args: argparse.Namespace) -> tuple[str, float | None, str | None]:
    """(orders, order_margin, precision) from the parsed flags, or ``UsageError`` for a bad combination."""
    try:
        orders = orders_from_cli(getattr(args, "orders", None), getattr(args, "single_order", False))
    except ValueError as error:
        raise UsageError(str(error)) from None
    margin = getattr(args, "order_margin", None)
    if margin is not None:
        if orders != "auto":
            raise UsageError("--order-margin applies to --orders auto only")
        try:
            margin = check_margin(margin)
        except ValueError as error:
            raise UsageError(f"--order-margin: {error}") from None
    return orders, margin, getattr(args, "precision", None)


def reject_for(args: argparse.Namespace, what: str) -> None:
    """``UsageError`` when --orders auto, --precision or --attention is given to an evaluation that cannot
    use it."""
    orders, _, precision = scoring_options(args)
    if orders == "auto" or precision is not None or getattr(args, "attention", None) is not None:
        raise UsageError(f"--orders auto, --precision and --attention apply to the pairwise evaluation of a "
                         f"model, not to {what}")
