"""Request and response bodies of the HTTP API (unknown fields are rejected; no type coercion: a boolean is
``true`` or ``false``, not ``0`` or ``"yes"``, so what the schema rejects the server rejects)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from ..data import LONE_SURROGATE, is_text
from ..process.aggregate import METHODS as AGGREGATES


def _text(value: str) -> str:
    """A lone surrogate is a 422 naming the field here rather than a 500 from the model thread (the file readers
    reject it the same way: ``tinyrm.data.is_text``)."""
    if not is_text(value):
        raise ValueError(LONE_SURROGATE)
    return value


Text = Annotated[str, AfterValidator(_text)]  # every string the model reads


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CompareRequest(_Strict):
    prompt: Text
    a: Text
    b: Text
    both_orders: bool | None = Field(None, description="average both presentation orders (default: the model's)")


class CompareResponse(BaseModel):
    prob_a: float = Field(description="P(a is better than b)")


class CompareItem(_Strict):
    prompt: Text
    a: Text
    b: Text


class CompareBatchRequest(_Strict):
    items: list[CompareItem]
    both_orders: bool | None = None


class CompareBatchResponse(BaseModel):
    prob_a: list[float]


class RankRequest(_Strict):
    prompt: Text
    candidates: list[Text] = Field(min_length=1)
    method: Literal["knockout", "round_robin"] = "knockout"


class RankResponse(BaseModel):
    ranking: list[int] = Field(description="candidate indices, best first")
    scores: list[float] = Field(description="scores[i] is the score of candidates[i]")


# The schema lists the aggregates; the server checks them itself, with its own message (422, field "aggregate").
Aggregate = Annotated[str, WithJsonSchema({"type": "string", "enum": list(AGGREGATES)})]


class ScoreStepsRequest(_Strict):
    problem: Text
    steps: list[Text] = Field(min_length=1)
    aggregate: Aggregate | None = Field(None, description="how step scores combine into the reward (model default)")


class ScoreStepsResponse(BaseModel):
    scores: list[float]
    reward: float


class RerankDocument(_Strict):
    text: str


def _document_text(value: Any) -> Any:
    """A rerank document is a string or ``{"text": string}``; either way its text is what gets ranked."""
    if isinstance(value, dict):
        if set(value) != {"text"} or not isinstance(value["text"], str):
            raise ValueError('a document is a string or {"text": string}')
        return value["text"]
    if not isinstance(value, str):
        raise ValueError('a document is a string or {"text": string}')
    return value


Document = Annotated[str, BeforeValidator(_document_text), AfterValidator(_text), WithJsonSchema({"anyOf": [
    {"type": "string"}, {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"],
                          "additionalProperties": False}]})]


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: an int or a float without a fraction (``2.0``); never a bool or a string."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


PositiveInteger = Annotated[int, Field(ge=1), BeforeValidator(_json_integer)]


class RerankRequest(BaseModel):
    """The body Cohere-, Jina- and vLLM-style rerank clients send. Fields this server does not use
    (``max_chunks_per_doc``, ``max_tokens_per_doc``, ``rank_fields``, ``priority``, ...) are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True, protected_namespaces=())
    model: str | None = Field(None, description="accepted and ignored: the served model answers")
    query: Text
    documents: list[Document] = Field(min_length=1, description='strings or {"text": string} objects')
    top_n: PositiveInteger | None = Field(None, description="return the best top_n (default: all)")
    return_documents: bool = Field(False, description='include each result\'s "document": {"text"}')


class RerankResult(BaseModel):
    index: int = Field(description="position of the document in the request")
    relevance_score: float = Field(description="win rate in [0, 1]: P(beats another document), Bradley-Terry")
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResult] = Field(description="best first; relevance_score non-increasing")


class ErrorDetail(BaseModel):
    field: str = Field(description="dotted path of the field (list items by index); 'body' for the body itself")
    msg: str
    type: str = Field(description="the validation error type: missing, string_type, extra_forbidden, json_invalid...")


class ErrorBody(BaseModel):
    """Every error answer of the API (400, 401, 404, 405, 413, 422, 500, 503): one readable message, the
    offending field where there is one, and every validation error of a 422 from request validation."""

    error: str = Field(description="what went wrong, for people")
    field: str | None = Field(None, description="the first offending field (absent when none is to blame)")
    detail: list[ErrorDetail] | None = Field(None, description="all validation errors (request validation 422s)")
