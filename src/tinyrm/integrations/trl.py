"""A pairwise reward model as a reward function for TRL's trainers (GRPO, RLOO, online DPO).

TRL calls each reward function as ``reward(prompts=..., completions=..., completion_ids=..., **columns)``
(``columns``: the dataset's other columns, one value per completion, plus ``trainer_state``,
``log_metric``, ...) and expects one float (or None) per completion. GRPO passes each prompt
``num_generations`` times; online DPO passes the batch's prompts twice over. ``PairwiseReward`` groups
the completions by prompt, wherever they sit in the batch, and scores each on one scale in [0, 1]:

- by default, its **win rate in its group** (``tinyrm.pairwise.groups``): the Bradley-Terry probability
  that it beats another (distinct) completion for the same prompt. A group's distinct completions' rewards
  average 0.5 (repeats repeat their reward), so the logged mean reward stays near 0.5; what trains the
  policy is the spread within each group.
- with ``reference_key="<column>"``, **P(completion better than the row's reference)** from that dataset
  column (a gold answer, the SFT model's answer, ...): an absolute signal that also serves groups of
  one. A row whose reference is None gets None (TRL: not applicable).

Conversational prompts and completions (lists of ``{"role", "content"}`` messages) become text by
``as_text``: one message is its content; several are ``"role: content"`` blocks joined by a blank line.

Nothing here imports ``trl``: the reward function is a plain callable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..pairwise.groups import score_groups
from ..pairwise.rank import METHODS


def _content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):  # content parts: [{"type": "text", "text": ...}, {"type": "image"}, ...]
        return "\n".join(part.get("text", "") for part in content
                         if isinstance(part, dict) and part.get("type", "text") == "text")
    raise TypeError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def as_text(value: Any) -> str:
    """A prompt, completion or reference as the reward model reads it.

    A string stays as it is. A conversation (a list of ``{"role", "content"}`` messages, or one message)
    with one message becomes its content; with several, ``"role: content"`` per message, joined by a blank
    line. Content given as parts keeps its text parts (one per line).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, (list, tuple)) and all(isinstance(m, dict) for m in value):
        if len(value) == 1:
            return _content(value[0].get("content"))
        return "\n\n".join(f"{m.get('role', 'user')}: {_content(m.get('content'))}" for m in value)
    raise TypeError(f"expected a string or a list of {{'role', 'content'}} messages, got {type(value).__name__}")


def _scorer(model: Any):
    """A scorer (anything with ``compare_batch``); a string is a ``tinyrm serve`` URL or a saved model."""
    if isinstance(model, str):
        if model.startswith(("http://", "https://")):
            from ..serving.client import RewardClient

            return RewardClient(model)
        from ..auto import load

        return load(model)
    if not callable(getattr(model, "compare_batch", None)):
        raise TypeError(f"model must have compare_batch (a tinyrm model or a RewardClient), got {type(model).__name__}")
    return model


class PairwiseReward:
    """``reward(prompts, completions, **kwargs) -> list[float]`` for TRL's ``reward_funcs``.

    ``model``: a tinyrm pairwise model (``tinyrm.load(path)``: cloze, baseline, routed, ...), a
    ``RewardClient`` of a running ``tinyrm serve``, or a string (a saved model's folder, or the server's
    ``http(s)://`` URL). ``method``: ``round_robin`` (every pair, one scoring call for all groups: n(n - 1)
    sequences per group of n) or ``knockout`` (2(n - 1) sequences per group, one call per round: for large
    groups). ``batch_size``: sequences per forward pass. ``reference_key``: score each completion against
    that dataset column instead (one call per batch, 2 sequences per completion). ``name``: the name in
    TRL's logs (``rewards/<name>/mean``); ``__name__`` carries it.
    """

    def __init__(self, model: Any, method: str = "round_robin", batch_size: int = 32,
                 reference_key: str | None = None, *, name: str | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.scorer = _scorer(model)
        self.method = method
        self.batch_size = batch_size
        self.reference_key = reference_key
        self.__name__ = name or (f"tinyrm_vs_{reference_key}" if reference_key else f"tinyrm_{method}")
        self.last_stats: dict[str, int] = {}  # groups, completions, comparisons, calls of the latest call

    def __repr__(self) -> str:
        return (f"PairwiseReward({type(self.scorer).__name__}, method={self.method!r}, batch_size={self.batch_size}, "
                f"reference_key={self.reference_key!r}, name={self.__name__!r})")

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts for {len(completions)} completions")
        prompt_texts = [as_text(p) for p in prompts]
        completion_texts = [as_text(c) for c in completions]
        if self.reference_key is not None:
            rewards, stats = self._against_reference(prompt_texts, completion_texts, kwargs)
        else:
            rewards, stats = self._in_groups(prompt_texts, completion_texts)
        self.last_stats = {"completions": len(completion_texts), **stats}
        log_metric: Callable | None = kwargs.get("log_metric")
        if callable(log_metric):  # GRPO / RLOO: averaged per logging step next to the trainer's own metrics
            log_metric(f"{self.__name__}/comparisons", float(stats["comparisons"]))
        return rewards

    def _in_groups(self, prompts: list[str], completions: list[str]) -> tuple[list[float | None], dict[str, int]]:
        members: dict[str, list[int]] = {}
        for row, prompt in enumerate(prompts):
            members.setdefault(prompt, []).append(row)
        groups = [(prompt, [completions[row] for row in rows]) for prompt, rows in members.items()]
        result = score_groups(self.scorer, groups, self.method, self.batch_size)
        rewards: list[float | None] = [None] * len(prompts)
        for rows, scores in zip(members.values(), result.scores):
            for row, score in zip(rows, scores):
                rewards[row] = score
        return rewards, {"groups": len(groups), "comparisons": result.comparisons, "calls": result.calls}

    def _against_reference(self, prompts: list[str], completions: list[str],
                           kwargs: dict[str, Any]) -> tuple[list[float | None], dict[str, int]]:
        if self.reference_key not in kwargs:
            columns = sorted(k for k in kwargs if k not in ("completion_ids", "trainer_state", "log_extra",
                                                            "log_metric", "environments"))
            raise KeyError(f"reference_key {self.reference_key!r} is not a dataset column; columns: {columns}")
        references = kwargs[self.reference_key]
        if isinstance(references, (str, bytes, Mapping)) or not isinstance(references, Iterable) \
                or not hasattr(references, "__len__"):  # a str would give each completion one of its characters
            raise TypeError(f"reference_key {self.reference_key!r}: the column must be a list with one reference per "
                            f"completion, got {type(references).__name__}")
        if len(references) != len(prompts):
            raise ValueError(f"got {len(references)} references for {len(prompts)} completions")
        triples = [None if ref is None else (p, c, as_text(ref)) for p, c, ref in zip(prompts, completions, references)]
        items = list(dict.fromkeys(t for t in triples if t is not None))
        probs = self.scorer.compare_batch(items, batch_size=self.batch_size, both_orders=True) if items else []
        answer = dict(zip(items, (float(p) for p in probs)))
        rewards = [None if t is None else answer[t] for t in triples]
        return rewards, {"groups": len(set(prompts)), "comparisons": len(items), "calls": 1 if items else 0}
