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

from ..pairwise.groups import judge_all_pairs, play_knockouts
from ..pairwise.rank import PairwiseScorer, round_robin

SetInput = tuple[str, Sequence[str]]  # (prompt, candidates)


def _ranking(scores: Sequence[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def knockout_sets(scorer: PairwiseScorer, sets: Sequence[SetInput], batch_size: int = 32
                  ) -> list[tuple[list[int], list[float]]]:
    """``(ranking, scores)`` per set: ``rank.knockout``'s bracket (``groups.play_knockouts``: every set's
    round in one ``compare_batch`` call) and its scores."""
    bracket = play_knockouts(scorer, sets, batch_size)
    out = []
    for (_, candidates), matches, byes in zip(sets, bracket.matches, bracket.byes):
        scores = [0.0] * len(candidates)
        played = [(r, 0, m) for r, *m in matches] + [(r, 1, (k,)) for r, k in byes]
        for round_no, is_bye, event in sorted(played, key=lambda e: e[:2]):  # a round's matches, then its bye
            if is_bye:
                scores[event[0]] = max(scores[event[0]], round_no + 1.0)
                continue
            winner, loser, p_win = event
            scores[loser] = round_no + (1.0 - p_win)
            scores[winner] = round_no + 1 + p_win  # overwritten if it loses later
        out.append((_ranking(scores), [float(x) for x in scores]))
    return out


def round_robin_sets(scorer: PairwiseScorer, sets: Sequence[SetInput], batch_size: int = 32
                     ) -> list[tuple[list[int], list[float]]]:
    """``(ranking, scores)`` per set as ``rank.round_robin`` gives them, all pairs of all sets in one call."""
    answers, _ = judge_all_pairs(scorer, sets, batch_size)
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
