"""Request and response bodies of the HTTP API (unknown fields are rejected)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompareRequest(_Strict):
    prompt: str
    a: str
    b: str
    both_orders: bool | None = Field(None, description="average both presentation orders (default: the model's)")


class CompareResponse(BaseModel):
    prob_a: float = Field(description="P(a is better than b)")


class CompareItem(_Strict):
    prompt: str
    a: str
    b: str


class CompareBatchRequest(_Strict):
    items: list[CompareItem]
    both_orders: bool | None = None


class CompareBatchResponse(BaseModel):
    prob_a: list[float]


class RankRequest(_Strict):
    prompt: str
    candidates: list[str] = Field(min_length=1)
    method: Literal["knockout", "round_robin"] = "knockout"


class RankResponse(BaseModel):
    ranking: list[int] = Field(description="candidate indices, best first")
    scores: list[float] = Field(description="scores[i] is the score of candidates[i]")


class ScoreStepsRequest(_Strict):
    problem: str
    steps: list[str] = Field(min_length=1)
    aggregate: str | None = Field(None, description="how step scores combine into the reward (model default)")


class ScoreStepsResponse(BaseModel):
    scores: list[float]
    reward: float
