"""Turning a written solution into reasoning steps.

``split(text)`` recognises, in this order: ``Step k:`` markers (anywhere in the text), numbered
lines (``1.`` / ``2)``), blank-line paragraphs, and finally one step per non-empty line.
``clean(step)`` removes surface marks that differ between data sources (step markers, calculator
annotations ``<<...>>``, ``#### X`` answer lines) so a model judges the reasoning, not the format.
"""

from __future__ import annotations

import re

STEP_MARKER = re.compile(r"(?i)\bstep\s*\d+\s*:")
NUMBERED_LINE = re.compile(r"^\s*\(?\d+[.)]\s+")
BLANK_LINE = re.compile(r"\n[ \t]*\n")
CALCULATOR = re.compile(r"<<[^<>]*>>")
ANSWER_LINE = re.compile(r"^[ \t]*####[ \t]*(.*)$", re.MULTILINE)  # on any line of a step
WARMUP = re.compile(r"(?i)^let'?s think step by step\.?$")


def split(text: str) -> list[str]:
    """Split a solution into steps (markers removed, whitespace stripped, empty steps dropped).

    >>> split("Step 1: 2 + 2 = 4. Step 2: The answer is 4.")
    ['2 + 2 = 4.', 'The answer is 4.']
    >>> split("1. Add.\\n2. Report.")
    ['Add.', 'Report.']
    """
    if not isinstance(text, str):
        raise TypeError(f"split() expects a string, got {type(text).__name__}")
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        return []
    if STEP_MARKER.search(text):
        parts = STEP_MARKER.split(text)
        # Text before the first marker (a preamble) is a step of its own.
        return _tidy(parts)
    lines = text.split("\n")
    numbered = [i for i, line in enumerate(lines) if NUMBERED_LINE.match(line)]
    if len(numbered) >= 2:
        steps: list[str] = []
        if numbered[0] > 0:
            steps.append("\n".join(lines[: numbered[0]]))
        bounds = numbered + [len(lines)]
        for start, end in zip(bounds, bounds[1:]):
            # Unnumbered lines continue the item above them.
            steps.append(NUMBERED_LINE.sub("", lines[start], count=1) + "\n" + "\n".join(lines[start + 1 : end]))
        return _tidy(steps)
    if BLANK_LINE.search(text):
        return _tidy(BLANK_LINE.split(text))
    return _tidy(lines)


def _tidy(parts: list[str]) -> list[str]:
    """Strip every line of every step (indentation is layout, not content); drop empty steps."""
    lines = ["\n".join(line.strip() for line in p.strip().split("\n")) for p in parts]
    return [p for p in lines if p]


def clean(step: str) -> str:
    """One step without its ``Step k:`` marker and calculator annotations; ``#### X`` becomes
    ``The answer is: X`` (the GSM8K answer line written the way model solutions write it)."""
    step = STEP_MARKER.sub("", step, count=1) if STEP_MARKER.match(step.strip()) else step
    step = CALCULATOR.sub("", step)
    step = ANSWER_LINE.sub(lambda answer: f"The answer is: {answer.group(1).strip()}", step)
    return " ".join(step.split())


def is_filler(step: str) -> bool:
    """Steps that carry no reasoning (``Let's think step by step.``) and are dropped by loaders."""
    return not step or bool(WARMUP.match(step))
