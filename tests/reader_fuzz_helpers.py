"""Hypothesis strategies for the reader fuzz tests, and the oracle: which lines of a generated file are good.

A generated JSONL file is a list of lines, each a good row of the reader's schema, a row with wrong types,
missing or extra keys (nested objects, NaN / Infinity, empty or non-string lists), a row whose bytes were
broken (truncated JSON, a byte that is not UTF-8, a lone surrogate, nesting past the limit, a huge integer,
a byte-order mark mid-file) or a blank line; the file may start with a byte-order mark, end its lines with
``\\r\\n`` and lack the final newline, and some strings are tens of KB long.

The oracle reads only the bytes and the documented rules (``tinyrm.data``: lines end at ``\\n``, a line of
ASCII whitespace is blank, a BOM at the start of the file is dropped, a line must be UTF-8 JSON nested at
most ``MAX_DEPTH`` deep without lone surrogates; the schemas of docs/cli-reference.md, docs/process.md,
docs/ranking-and-serving.md, docs/scoring.md), not the readers' code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

from tinyrm.data import DataError

MAX_DEPTH = 100
BOM = b"\xef\xbb\xbf"
BAD = object()  # the oracle's verdict for a line no reader may load

# derandomize: CI runs the same examples every time; deadline None: the machine is shared and slow.
FUZZ = dict(derandomize=True, deadline=None, database=None, print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


def fuzz_settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, **FUZZ)


# ------------------------------------------------------------------------------------------------ values

TEXT = st.text(st.characters(codec="utf-8"), max_size=10)
LONG_TEXT = st.builds(lambda s, n: s * n, st.text(st.characters(codec="utf-8"), min_size=1, max_size=3),
                      st.integers(3_000, 20_000))
STRING = st.one_of(TEXT, TEXT, TEXT, st.sampled_from(["", " ", "\t\n", "\u3000", "\u00a0", "ok", "ünï ☃ 𝄞"]),
                   LONG_TEXT)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                   st.floats(allow_nan=True, allow_infinity=True), STRING)
JSON = st.recursive(SCALAR, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(TEXT, kids, max_size=3),
                    max_leaves=6)


WRONG = st.one_of(JSON, st.lists(JSON, max_size=3), st.dictionaries(TEXT, JSON, max_size=2),
                  st.sampled_from(["", " ", [], {}, [""], [1, "a"], float("nan"), float("inf"), -float("inf")]))
NON_BLANK = STRING.filter(str.strip)


@st.composite
def rows(draw, required: dict[str, st.SearchStrategy], optional: dict[str, st.SearchStrategy] | None = None) -> dict:
    """A good row of a schema: the ``required`` keys, some ``optional`` ones, 0-2 extra keys."""
    row = {key: draw(strategy) for key, strategy in required.items()}
    for key, strategy in (optional or {}).items():
        if draw(st.booleans()):
            row[key] = draw(strategy)
    for key, value in draw(st.dictionaries(TEXT, JSON, max_size=2)).items():
        row.setdefault(key, value)
    return row


@st.composite
def broken(draw, row: st.SearchStrategy) -> object:
    """A row with one thing changed: a key dropped, nulled or given another value (of any type), or not an
    object at all. Not always bad (a value may be a good one again): the oracle decides."""
    value = draw(row)
    how = draw(st.sampled_from(["drop", "null", "wrong", "wrong", "not an object"]))
    if how == "not an object" or not value:
        return draw(st.one_of(JSON, st.just([value])))
    key = draw(st.sampled_from(sorted(value)))
    if how == "drop":
        del value[key]
    else:
        value[key] = None if how == "null" else draw(WRONG)
    return value


def _nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return value


SPECIAL_LINES = [
    b"{", b"{}}", b"[]", b"null", b"42", b'"a string"', b"NaN", b"Infinity", b"{'prompt': 'single quotes'}",
    b'{"prompt": "x"} trailing', b"\x00", b"\xff\xfe{}", b"\xed\xa0\x80",  # UTF-16 BOM; a surrogate in UTF-8
    b'{"prompt": "lone \\ud800 surrogate"}', b'{"prompt": "pair \\ud83d\\ude00 fine"}',
    b'{"x": ' + b"1" * 5000 + b"}",  # an integer too long for int()
    b"[" * 5000 + b"]" * 5000,  # past the recursion limit
    json.dumps({"deep": _nested(MAX_DEPTH - 1)}).encode(), json.dumps({"deep": _nested(MAX_DEPTH)}).encode(),
    BOM + b"{}",  # a byte-order mark that is not at the start of the file
]
BLANK_LINES = [b"", b" ", b"\t", b"\r", b" \x0b\x0c "]


LINE_KINDS = ["row"] * 8 + ["broken"] * 4 + ["truncated", "byte", "surrogate", "deep", "special", "blank"]


@st.composite
def lines(draw, row: st.SearchStrategy, clean: bool = False) -> bytes:
    """One line's bytes (no newline): a good or broken row written as JSON, its bytes broken or not, or a
    special or blank line. ``clean``: good rows and blank lines only."""
    kind = draw(st.sampled_from(["row"] * 4 + ["blank"] if clean else LINE_KINDS))
    if kind == "special":
        return draw(st.sampled_from(SPECIAL_LINES))
    if kind == "blank":
        return draw(st.sampled_from(BLANK_LINES))
    value = draw(broken(row) if kind == "broken" else row)
    if kind == "surrogate" and isinstance(value, dict):
        value[draw(st.sampled_from(sorted(value) or ["prompt"]))] = "a\ud800b"
    if kind == "deep" and isinstance(value, dict):  # the row is at depth 1: 100 deep is the most allowed
        value["deep"] = _nested(draw(st.sampled_from([MAX_DEPTH - 1, MAX_DEPTH])))
    data = json.dumps(value, ensure_ascii=draw(st.booleans()) or kind == "surrogate").encode("utf-8", "surrogatepass")
    if kind == "truncated" and len(data) > 1:
        data = data[: draw(st.integers(1, len(data) - 1))]
    if kind == "byte":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + bytes([draw(st.sampled_from([0x80, 0xBF, 0xC3, 0xE2, 0xF0, 0xFE, 0xFF]))]) + data[at:]
    return data


@dataclass
class JsonlFile:
    lines: list[bytes]
    bom: bool
    eol: bytes
    final_newline: bool

    def __repr__(self) -> str:
        return f"JsonlFile(data={self.data!r})"

    @property
    def data(self) -> bytes:
        body = self.eol.join(self.lines) + (self.eol if self.final_newline and self.lines else b"")
        return (BOM if self.bom else b"") + body


@st.composite
def jsonl_files(draw, row: st.SearchStrategy, max_lines: int = 8) -> JsonlFile:
    """A JSONL file of ``lines`` (a third of the files: good rows and blank lines only)."""
    clean = draw(st.integers(0, 2)) == 0
    return JsonlFile(draw(st.lists(lines(row, clean), max_size=max_lines)), draw(st.integers(0, 4)) == 0,
                     draw(st.sampled_from([b"\n", b"\n", b"\r\n"])), draw(st.integers(0, 4)) > 0)


# ------------------------------------------------------------------------------------------------ the oracle


def depth(value: object) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (list(item.values()) if isinstance(item, dict) else item))
    return deepest


def strings(value: object) -> list[str]:
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def decoded(line: bytes) -> object:
    """The line's JSON value, or BAD."""
    try:
        value = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return BAD
    if depth(value) > MAX_DEPTH or any(re.search("[\ud800-\udfff]", s) for s in strings(value)):
        return BAD
    return value


def oracle_lines(data: bytes) -> list[tuple[int, object]]:
    """``(line number, JSON value or BAD)`` of every non-blank line of a JSONL file's bytes."""
    if data.startswith(BOM):
        data = data[len(BOM):]
    return [(number, decoded(line)) for number, line in enumerate(data.split(b"\n"), start=1) if line.strip()]


def is_str(value: object) -> bool:
    return isinstance(value, str)


def canon(value: object) -> str:
    """A comparable text of a JSON value (NaN equals NaN)."""
    return json.dumps(value, default=repr)


# ------------------------------------------------------------------------------------------------ the check

Expect = Callable[[object, int], "list | None"]  # (row, line number) -> what the reader gives for it; None: bad


def expect_error(call: Callable[[], object], prefix: str) -> str:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert message.startswith(prefix) and message[len(prefix):].strip(), (prefix, message)
    assert "\n" not in message, message
    return message


def check(verdicts: list[tuple[int, object]], path: Path, load: Callable[[bool], tuple[list, object]],
          expect: Expect, all_bad_is_error: bool, modes: tuple[bool, ...] = (False, True),
          location: Callable[[int], str] | None = None) -> None:
    """``load(skip_bad_rows)`` -> (what it read, the rows skipped: a count or their locations), against
    the oracle's ``verdicts`` (``oracle_lines``: (line, value or BAD) of each non-blank line)."""
    location = location or (lambda line: f"{path}:{line}")
    good: list = []
    bad: list[int] = []
    for line, value in verdicts:
        result = None if value is BAD else expect(value, line)
        if result is None:
            bad.append(line)
        else:
            good.extend(result)
    event(f"rows: {len(good) and 'some'} good, {len(bad) and 'some'} bad")
    for skip in modes:
        if not good and not bad:
            expect_error(lambda: load(skip), f"{path}: no rows")  # noqa: B023
        elif bad and not skip:
            expect_error(lambda: load(skip), f"{location(bad[0])}: ")  # noqa: B023
        elif not good and all_bad_is_error:
            expect_error(lambda: load(skip), f"{path}: no valid ")  # noqa: B023
        else:
            loaded, skipped = load(skip)  # (not a test module: pytest does not rewrite these asserts)
            assert loaded == good, f"read {loaded!r:.2000}\nexpected {good!r:.2000}"
            expected = len(bad) if isinstance(skipped, int) else [location(line) for line in bad]
            assert skipped == expected, f"skipped {skipped}, expected {expected}"


def written(data: bytes, directory: str, name: str = "fuzz.jsonl") -> Path:
    path = Path(directory) / name
    path.write_bytes(data)
    return path
