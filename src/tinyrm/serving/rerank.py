"""``POST /v1/rerank`` and ``/v2/rerank``: the rerank API of Cohere-, Jina- and vLLM-style clients.

The documents are one group for ``tinyrm.pairwise.groups``: a round robin (every pair of distinct
documents, both orders, in one ``compare_batch`` call through the server's batcher) and a
Bradley-Terry fit; each document's ``relevance_score`` is its win rate, the probability that it beats
another document for this query, in [0, 1]. Results go best first with scores non-increasing
(equal scores keep the request order). A request of n documents costs n(n - 1) sequences, hence the
server's ``max_documents`` cap.
"""

from __future__ import annotations

from ..pairwise.groups import score_groups
from ..pairwise.rank import PairwiseScorer
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
