"""Step-graded solutions: the JSONL rows, the labelling rule, question-level splits."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data import JsonlRows, expand_sources, no_valid_rows, write_records
from .steps import clean, is_filler, split


@dataclass
class ProcessRow:
    """One solution; ``labels[i]``: True correct, False the first error, None not labelled."""

    id: str
    question: str
    steps: list[str]
    labels: list[bool | None]
    solution_correct: bool
    kind: str = "graded"  # graded | reference

    @property
    def first_error(self) -> int | None:
        return next((i for i, label in enumerate(self.labels) if label is False), None)


@dataclass
class ProcessReport:
    rows: list[ProcessRow]
    skipped: int = 0


def step_labels(n_steps: int, first_error_step: int | None, solution_correct: bool) -> list[bool | None]:
    """The labelling rule: steps before the first error are correct, the first error is incorrect,
    later steps are unlabelled. Without a marked error, a correct solution's steps are all correct
    and a wrong one's are all unlabelled (the error is somewhere, but not known where)."""
    if first_error_step is None:
        return [True if solution_correct else None] * n_steps
    k = first_error_step - 1
    return [True] * k + [False] + [None] * (n_steps - k - 1)


def normalise(steps: Sequence[str], labels: Sequence[bool | None]) -> tuple[list[str], list[bool | None]]:
    """Clean each step, drop filler and repeated steps, carrying the labels along. A repeat that is the
    annotated first error is kept: dropping it would lose the row's only located error."""
    out_steps: list[str] = []
    out_labels: list[bool | None] = []
    for step, label in zip(steps, labels):
        text = clean(step)
        if is_filler(text) or (out_steps and text == out_steps[-1] and label is not False):
            continue
        out_steps.append(text)
        out_labels.append(label)
    return out_steps, out_labels


def parse_row(obj: object) -> ProcessRow:
    """Validate one ``{"question", "steps", "first_error_step", "solution_correct"}`` row."""
    if not isinstance(obj, dict):
        raise ValueError("row is not a JSON object")
    question, steps = obj.get("question"), obj.get("steps")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("'question' must be a non-empty string")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s.strip() for s in steps):
        raise ValueError("'steps' must be a non-empty list of non-empty strings")
    correct = obj.get("solution_correct")
    if not isinstance(correct, bool):
        raise ValueError("'solution_correct' must be true or false")
    first = obj.get("first_error_step")
    if first is not None and (isinstance(first, bool) or not isinstance(first, int) or not 1 <= first <= len(steps)):
        raise ValueError(f"'first_error_step' must be null or an integer in 1..{len(steps)}, got {first!r}")
    if first is not None and correct:
        raise ValueError("'first_error_step' is set but 'solution_correct' is true")
    reference = obj.get("reference_solution")
    if reference is not None and not (isinstance(reference, str) or (
            isinstance(reference, list) and all(isinstance(s, str) for s in reference))):
        raise ValueError("'reference_solution' must be a string or a list of step strings, "
                         f"got {type(reference).__name__}")
    clean_steps, labels = normalise(steps, step_labels(len(steps), first, correct))
    if not clean_steps:
        raise ValueError("no step left after removing markers and filler")
    ident = obj.get("id")  # absent or null: the loader names the row FILE-STEM:LINE
    return ProcessRow("" if ident is None else str(ident), question.strip(), clean_steps, labels, correct)


def reference_row(obj: dict, row: ProcessRow) -> ProcessRow | None:
    """The row's ``reference_solution`` (a text split into steps, or a list of steps), all correct
    (None when absent or empty)."""
    reference = obj.get("reference_solution")
    raw = split(reference) if isinstance(reference, str) else [s for s in reference or () if s.strip()]
    steps, labels = normalise(raw, [True] * len(raw))
    if not steps:
        return None
    return ProcessRow(f"{row.id}:reference", row.question, steps, labels, True, kind="reference")


def load_rows(sources: Sequence[str], skip_bad_rows: bool = False, references: bool = True) -> ProcessReport:
    """Step-graded solutions from JSONL files (globs allowed), plus one all-correct solution per
    distinct question from ``reference_solution`` when ``references`` is set."""
    rows: list[ProcessRow] = []
    skipped = 0
    seen_questions: set[str] = set()
    for source in expand_sources(sources):
        reader = JsonlRows(source, parse_row, skip_bad_rows)
        for line_no, obj, row in reader:
            row.id = row.id or f"{reader.path.stem}:{line_no}"
            rows.append(row)
            if references and row.question not in seen_questions:
                ref = reference_row(obj, row)
                if ref is not None:  # a later row of the question may carry it
                    seen_questions.add(row.question)
                    rows.append(ref)
        skipped += reader.skipped
    if not rows:
        raise no_valid_rows(sources, "rows", skipped)
    return ProcessReport(rows=rows, skipped=skipped)


def question_key(question: str, seed: int = 0) -> float:
    digest = hashlib.sha256(f"{seed}:{' '.join(question.lower().split())}".encode()).hexdigest()
    return int(digest[:12], 16) / 16**12


def split_questions(rows: Sequence[ProcessRow], test_fraction: float = 0.2,
                    seed: int = 0) -> tuple[list[ProcessRow], list[ProcessRow]]:
    """(train, test) by question: every solution of a question, reference included, lands on the
    same side, so test questions are unseen. Deterministic and independent of row order."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    train, test = [], []
    for row in rows:
        (test if question_key(row.question, seed) < test_fraction else train).append(row)
    return train, test


def write_rows(rows: Sequence[ProcessRow], path: str | Path) -> Path:
    """Rows in the input schema (references as correct solutions), for ``--data`` of train/eval."""
    return write_records(
        ({"id": row.id, "question": row.question, "steps": row.steps,
          "first_error_step": None if row.first_error is None else row.first_error + 1,
          "solution_correct": row.solution_correct} for row in rows),
        path,
    )
