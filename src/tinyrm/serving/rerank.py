"""``POST /v1/rerank`` and ``/v2/rerank``: the rerank API of Cohere-, Jina- and vLLM-style clients.

The documents are one group for ``tinyrm.pairwise.groups``: a round robin (every pair of distinct
documents, both orders, in one ``compare_batch`` call through the server's batcher) and a
Bradley-Terry fit; each document's ``relevance_score`` is its win rate, the probability that it beats
another document for this query, in [0, 1]. Results go best first with scores non-increasing
(equal scores keep the request order). A request of n documents costs n(n - 1) sequences, hence the
server's ``max_documents`` cap.

``BatchedScorer`` runs the tournaments of ``/v1/rank`` and the rerank endpoints in a worker thread, their
comparisons going through the batcher as any other request's pairs.
"""

from __future__ import annotations

import asyncio
import time

from ..pairwise.groups import score_groups
from ..pairwise.rank import PairwiseScorer
from .batching import MicroBatcher
from .schemas import RerankDocument, RerankRequest, RerankResult


def rerank(scorer: PairwiseScorer, req: RerankRequest, batch_size: int = 32) -> list[RerankResult]:
    """The results of ``req`` best first (at most ``top_n``)."""
    texts = req.documents  # {"text": ...} objects arrive as their text
    scores = score_groups(scorer, [(req.query, texts)], "round_robin", batch_size).scores[0]
    order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))
    if req.top_n is not None:
        order = order[: req.top_n]
    return [RerankResult(index=i, relevance_score=scores[i],
                         document=RerankDocument(text=texts[i]) if req.return_documents else None) for i in order]


class BatchedScorer:
    """A scorer for ``tinyrm.pairwise.rank`` running in a worker thread: its comparisons go through the
    batcher, under one deadline for the whole request (``deadline``: ``time.monotonic()``), and stop
    at the next comparison once ``cancel()`` was called (the client went away)."""

    def __init__(self, batcher: MicroBatcher, timeout_s: float) -> None:
        self.batcher = batcher
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.cancelled = False
        self._current = None

    def cancel(self) -> None:
        self.cancelled = True
        current = self._current
        if current is not None:
            current.cancel()  # a concurrent.futures.Future: cancels the submit coroutine on the loop

    def compare_batch(self, items, batch_size: int = 32, both_orders: bool | None = None) -> list[float]:
        """The scorer protocol's call; ``batch_size`` is unused: the batcher sizes calls and forward passes."""
        return self._submit(items, both_orders, "pairs")

    def _submit(self, items, both_orders: bool | None, kind: str) -> list[float]:
        assert self.batcher.loop is not None
        if self.cancelled:
            raise asyncio.CancelledError("the client went away")
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.batcher.timed_out(self.timeout_s)
        self._current = asyncio.run_coroutine_threadsafe(
            self.batcher.submit(list(items), both_orders, timeout_s=left, kind=kind), self.batcher.loop)
        try:
            return self._current.result()
        finally:
            self._current = None


class BatchedRewardScorer(BatchedScorer):
    """``BatchedScorer`` for a model with a reward per response (the baselines): ``rank_candidates`` ranks by
    ``score_batch``, as ``rm.rank`` and ``tinyrm rank`` do, its responses going through the batcher."""

    def score_batch(self, items, batch_size: int = 32) -> list[float]:
        return self._submit(items, None, "rewards")


def batched_scorer(batcher: MicroBatcher, timeout_s: float) -> BatchedScorer:
    """The scorer for ``/v1/rank``: by reward where the served model gives one per response."""
    kind = BatchedRewardScorer if hasattr(batcher.rm, "score_batch") else BatchedScorer
    return kind(batcher, timeout_s)
