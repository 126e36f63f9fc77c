"""Length bias of a pairwise scorer: its accuracy when the chosen response is the longer one and when it
is the shorter one, and how often it prefers the longer response.

Length is counted in characters (``len(str)``), as the ``length`` heuristic does
(:func:`tinyrm.evaluation.heuristics.length_probs`), so the figures do not depend on a tokenizer.
A pair is correct only if P(chosen better) > 0.5, as everywhere in tinyrm's results: a tie is wrong.
The model prefers the longer response only if P(longer better) > 0.5 strictly, i.e. P(chosen) > 0.5
when the chosen response is the longer one and P(chosen) < 0.5 when it is the shorter one; a tie
prefers neither. Pairs of equal length are counted (``equal_length.n``) and take part in neither
figure. Accuracies and ``agrees_with_longer`` are ``None`` where they have no pair to count.

The ``length_bias`` entry of a results JSON::

    {"chosen_longer": {"n": 120, "accuracy": 0.71}, "chosen_shorter": {"n": 98, "accuracy": 0.40},
     "equal_length": {"n": 3}, "agrees_with_longer": 0.66}
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data import CHOSEN_LONGER, CHOSEN_SHORTER, PreferencePair, length_direction

LONGER, SHORTER, EQUAL = "chosen_longer", "chosen_shorter", "equal_length"


def length_side(pair: PreferencePair) -> str:
    """``chosen_longer``, ``chosen_shorter`` or ``equal_length`` (lengths in characters)."""
    direction = length_direction(pair.chosen, pair.rejected)  # the rule --length-balance trains with
    return LONGER if direction == CHOSEN_LONGER else SHORTER if direction == CHOSEN_SHORTER else EQUAL


def _share(count: int, n: int) -> float | None:
    return count / n if n else None


def length_bias(pairs: Sequence[PreferencePair], probs_chosen: Sequence[float]) -> dict:
    """The ``length_bias`` entry (see the module docstring) of ``pairs`` scored with P(chosen better) each."""
    if len(pairs) != len(probs_chosen):
        raise ValueError(f"{len(pairs)} pairs but {len(probs_chosen)} probabilities")
    n = {LONGER: 0, SHORTER: 0, EQUAL: 0}
    correct = {LONGER: 0, SHORTER: 0}
    prefers_longer = 0
    for pair, prob in zip(pairs, probs_chosen):
        side = length_side(pair)
        n[side] += 1
        if side == EQUAL:
            continue
        correct[side] += prob > 0.5  # the rule of the accuracy: a tie is wrong
        # P(longer better) > 0.5: P(chosen) > 0.5 if the chosen is longer, P(chosen) < 0.5 if it is shorter.
        prefers_longer += prob > 0.5 if side == LONGER else prob < 0.5
    return {
        LONGER: {"n": n[LONGER], "accuracy": _share(correct[LONGER], n[LONGER])},
        SHORTER: {"n": n[SHORTER], "accuracy": _share(correct[SHORTER], n[SHORTER])},
        EQUAL: {"n": n[EQUAL]},
        "agrees_with_longer": _share(prefers_longer, n[LONGER] + n[SHORTER]),
    }


def format_side(entry: dict | None, side: str) -> str:
    """``0.7100 (120)`` for a table cell; ``- (0)`` where there is no pair, ``-`` without the entry."""
    if not entry:
        return "-"
    row = entry[side]
    accuracy = row["accuracy"]
    return f"{'-' if accuracy is None else f'{accuracy:.4f}'} ({row['n']})"


def format_agrees(entry: dict | None) -> str:
    """``agrees_with_longer`` for a table cell (``-`` where there is none)."""
    value = entry.get("agrees_with_longer") if entry else None
    return "-" if value is None else f"{value:.4f}"


# Column titles shared by the CLI tables and the model card.
COLUMNS = ("chosen longer acc (n)", "chosen shorter acc (n)", "agrees with longer")


def table_cells(entry: dict | None) -> list[str]:
    """The three cells under :data:`COLUMNS` for one row's ``length_bias`` entry."""
    return [format_side(entry, LONGER), format_side(entry, SHORTER), format_agrees(entry)]
