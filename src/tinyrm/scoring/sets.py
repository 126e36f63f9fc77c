"""Ranking many candidate sets at once, with the results ``tinyrm rank`` gives for each set alone.

``tinyrm.pairwise.rank`` ranks one set per call: a knockout makes one ``compare_batch`` call per
round, so a chunk of a thousand sets would make thousands of small calls. Here the brackets of all
the sets of a chunk advance in lock-step, one ``compare_batch`` call per round for all of them
(``knockout``), or every pair of every set goes in one call (``round_robin``, then the Bradley-Terry
fit of ``rank.round_robin`` per set). Scores and ranking are those of ``rank.knockout`` /
``rank.round_robin``: knockout score = rounds survived + P(winning the last match played).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..pairwise.rank import PairwiseScorer, round_robin

SetInput = tuple[str, Sequence[str]]  # (prompt, candidates)


def _ranking(scores: Sequence[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def knockout_sets(scorer: PairwiseScorer, sets: Sequence[SetInput], batch_size: int = 32
                  ) -> list[tuple[list[int], list[float]]]:
    """``(ranking, scores)`` per set: ``rank.knockout``'s bracket (0 v 1, 2 v 3, ..., a bye for the odd one
    out; an exact 0.5 goes to the lower index), every set's round in one ``compare_batch`` call."""
    alive = [list(range(len(candidates))) for _, candidates in sets]
    scores = [[0.0] * len(candidates) for _, candidates in sets]
    round_no = 0
    while any(len(a) > 1 for a in alive):
        matches = [(g, a[k], a[k + 1]) for g, a in enumerate(alive) for k in range(0, len(a) - 1, 2)]
        probs = scorer.compare_batch([(sets[g][0], sets[g][1][i], sets[g][1][j]) for g, i, j in matches],
                                     batch_size=batch_size, both_orders=True)
        survivors: list[list[int]] = [[] for _ in sets]
        for (g, i, j), p in zip(matches, probs):
            winner, loser, p_win = (i, j, p) if p >= 0.5 else (j, i, 1.0 - p)
            scores[g][loser] = round_no + (1.0 - p_win)
            scores[g][winner] = round_no + 1 + p_win  # overwritten if it loses later
            survivors[g].append(winner)
        for g, a in enumerate(alive):
            if len(a) == 1:
                survivors[g] = a
            elif len(a) % 2:
                bye = a[-1]
                scores[g][bye] = max(scores[g][bye], round_no + 1.0)
                survivors[g].append(bye)
        alive = survivors
        round_no += 1
    return [(_ranking(s), [float(x) for x in s]) for s in scores]


class _Answers:
    """A scorer answering from probabilities computed already (lets ``rank.round_robin`` run unchanged)."""

    def __init__(self, probs: dict[tuple[str, str, str], float]) -> None:
        self.probs = probs

    def compare_batch(self, items: Sequence[tuple[str, str, str]], batch_size: int = 32,
                      both_orders: bool | None = None) -> list[float]:
        return [self.probs[item] for item in items]


def round_robin_sets(scorer: PairwiseScorer, sets: Sequence[SetInput], batch_size: int = 32
                     ) -> list[tuple[list[int], list[float]]]:
    """``(ranking, scores)`` per set as ``rank.round_robin`` gives them, all pairs of all sets in one call."""
    items = list(dict.fromkeys((prompt, c[i], c[j]) for prompt, c in sets
                               for i in range(len(c)) for j in range(i + 1, len(c))))
    probs = scorer.compare_batch(items, batch_size=batch_size, both_orders=True) if items else []
    answers = _Answers(dict(zip(items, (float(p) for p in probs))))
    results = [round_robin(answers, prompt, list(candidates), batch_size=batch_size) for prompt, candidates in sets]
    return [(result.ranking, result.scores) for result in results]


def rank_sets(scorer: PairwiseScorer, sets: Sequence[SetInput], method: str = "knockout", batch_size: int = 32
              ) -> list[tuple[list[int], list[float]]]:
    if not sets:
        return []
    if method == "knockout":
        return knockout_sets(scorer, sets, batch_size)
    if method == "round_robin":
        return round_robin_sets(scorer, sets, batch_size)
    raise ValueError(f"unknown ranking method {method!r}; choose from ['knockout', 'round_robin']")
