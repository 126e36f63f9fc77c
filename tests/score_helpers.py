"""Inputs and readers for the ``tinyrm score`` tests: mixed rows (pairs, a/b pairs, candidate sets) with
extra columns of several types, and the output read back as a list of dicts."""

from __future__ import annotations

import json
from pathlib import Path

from .integration_helpers import save_opinionated_bert

ADDED = {"prob_chosen", "prob_a", "scores", "ranking", "best", "best_index"}


def mixed_rows(n: int = 30, seed: int = 0) -> list[dict]:
    """Every third row a candidate set (1 to 5 candidates, one repeated), the others chosen/rejected and a/b
    pairs; each with an int id, a domain, a nested dict and a list column that must pass through."""
    rows = []
    for i in range(n):
        base = {"id": i, "prompt": f"Question {i + seed}: which answer is right?", "meta": {"k": i, "tag": f"t{i % 4}"},
                "tags": [f"x{i}", "y"]}
        if i % 3 == 2:
            candidates = [f"candidate {k} for {i}" + " more" * ((i * 7 + k * 3) % 5) for k in range(i % 5 + 1)]
            if len(candidates) > 2:
                candidates[-1] = candidates[0]  # a repeated candidate is judged like any other
            rows.append({**base, "candidates": candidates})
        elif i % 3 == 1:
            rows.append({**base, "a": f"answer a{i}" + " yes" * (i % 4), "b": f"answer b{i}"})
        else:
            rows.append({**base, "chosen": f"right {i}" + " indeed" * (i % 3), "rejected": f"wrong {i}",
                         "domain": "chat" if i % 2 else "math"})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_parquet(rows: list[dict], path: Path, row_group_size: int | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(dict.fromkeys(k for row in rows for k in row))
    pq.write_table(pa.table({k: [row.get(k) for row in rows] for k in names}), path, row_group_size=row_group_size)
    return path


def read_output(path: Path) -> list[dict]:
    """The output's rows; Parquet nulls dropped so a row holds the keys its JSONL line would."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    import pyarrow.parquet as pq

    return [{k: v for k, v in row.items() if v is not None} for row in pq.read_table(path).to_pylist()]


def summary(path: Path) -> dict:
    return json.loads(Path(f"{path}.summary.json").read_text(encoding="utf-8"))


def assert_same_rows(got: list[dict], want: list[dict], tol: float = 0.0) -> None:
    """Equal rows, keys and order; the model's numbers within ``tol``."""
    assert [row.get("id") for row in got] == [row.get("id") for row in want]
    for g, w in zip(got, want):
        assert set(g) == set(w), (g, w)
        for key in g:
            if key in ("prob_chosen", "prob_a"):
                assert abs(g[key] - w[key]) <= tol, (key, g, w)
            elif key == "scores":
                assert max(abs(a - b) for a, b in zip(g[key], w[key])) <= tol, (g, w)
            else:
                assert g[key] == w[key], (key, g, w)


def save_spread_model(directory: Path) -> str:
    """A 2-layer random BERT masked LM initialised wide (std 0.5), so its P(a better) spread over
    0.5-0.9 instead of 0.5 +- 1e-5: knockout results then do not hang on float noise."""
    return save_opinionated_bert(directory)
