"""A deterministic, offline preference set for the demo: a correct answer versus a subtly wrong one.

Demo families: an example of the wrong category ("Name a fruit." -> "tiger"), short Python
functions whose body does the wrong operation, and arithmetic with an operand misread. Unit
conversions, number comparisons and sorting are also here but not in the demo mix. Train and
held-out splits come from different seeds and the held-out split drops any pair also in train.
"""

from __future__ import annotations

import random
from dataclasses import asdict, replace
from pathlib import Path

from ..data import PreferencePair, write_records

CODE_TASKS = [
    # (function name, description, correct body, wrong bodies)
    ("add", "return the sum of a and b", "return a + b", ["return a - b", "return a * b"]),
    ("subtract", "return a minus b", "return a - b", ["return b - a", "return a + b"]),
    ("multiply", "return the product of a and b", "return a * b", ["return a + b", "return a ** b"]),
    ("maximum", "return the larger of a and b", "return a if a > b else b", ["return a if a < b else b"]),
    ("minimum", "return the smaller of a and b", "return a if a < b else b", ["return a if a > b else b"]),
    ("is_even", "return True if n is even", "return n % 2 == 0", ["return n % 2 == 1"]),
    ("is_odd", "return True if n is odd", "return n % 2 == 1", ["return n % 2 == 0"]),
    ("is_positive", "return True if n is greater than zero", "return n > 0", ["return n < 0"]),
    ("square", "return n squared", "return n * n", ["return n + n", "return n * 2"]),
    ("last", "return the last item of xs", "return xs[-1]", ["return xs[0]"]),
    ("first", "return the first item of xs", "return xs[0]", ["return xs[-1]"]),
    ("count", "return the number of items in xs", "return len(xs)", ["return len(xs) - 1"]),
    ("reverse", "return xs in reverse order", "return xs[::-1]", ["return sorted(xs)"]),
    ("shout", "return s in upper case", "return s.upper()", ["return s.lower()"]),
    ("whisper", "return s in lower case", "return s.lower()", ["return s.upper()"]),
]
ARGS = {"add": "a, b", "subtract": "a, b", "multiply": "a, b", "maximum": "a, b", "minimum": "a, b",
        "is_even": "n", "is_odd": "n", "is_positive": "n", "square": "n", "last": "xs", "first": "xs",
        "count": "xs", "reverse": "xs", "shout": "s", "whisper": "s"}
ASK = ["Write a Python function `{name}({args})` that should {desc}.",
       "Implement {name}({args}) in Python: it must {desc}.",
       "Python: define {name}({args}) to {desc}."]


def _arithmetic(rng: random.Random) -> PreferencePair:
    """The wrong answer misreads one operand (and is consistent with the misreading)."""
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["+", "-", "*"])
    misread = b + rng.choice([-10, -1, 1, 10]) if b > 11 else b + rng.choice([1, 2, 3])
    calc = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}[op]
    ask = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}."])
    say = rng.choice(["{a} {op} {b} = {v}", "{a} {op} {b} equals {v}.", "We have {a} {op} {b} = {v}."])
    return PreferencePair(
        prompt=ask.format(a=a, op=op, b=b),
        chosen=say.format(a=a, op=op, b=b, v=calc(a, b)),
        rejected=say.format(a=a, op=op, b=misread, v=calc(a, misread)),
        domain="reasoning", subset="arithmetic", source="synthetic",
    )


UNITS = [("km", "m", 1000), ("m", "cm", 100), ("kg", "g", 1000), ("L", "mL", 1000), ("cm", "mm", 10)]


def _units(rng: random.Random) -> PreferencePair:
    """The wrong answer uses a conversion factor off by a power of ten."""
    big, small, factor = rng.choice(UNITS)
    x = rng.randint(2, 60)
    wrong = rng.choice([factor // 10, factor * 10])
    ask = rng.choice(["Convert {x} {u} to {v}.", "How many {v} are in {x} {u}?"])
    return PreferencePair(
        prompt=ask.format(x=x, u=big, v=small),
        chosen=f"{x} {big} = {x * factor} {small}", rejected=f"{x} {big} = {x * wrong} {small}",
        domain="reasoning", subset="units", source="synthetic",
    )


def _comparison(rng: random.Random) -> PreferencePair:
    a, b = rng.sample(range(1, 100), 2)
    big, small = max(a, b), min(a, b)
    word = rng.choice(["larger", "smaller"])
    right, wrong = (big, small) if word == "larger" else (small, big)
    return PreferencePair(
        prompt=f"Which number is {word}: {a} or {b}?",
        chosen=f"{right} is {word}.", rejected=f"{wrong} is {word}.",
        domain="reasoning", subset="comparison", source="synthetic",
    )


def _sorting(rng: random.Random) -> PreferencePair:
    xs = rng.sample(range(1, 50), rng.randint(3, 5))
    ascending = rng.random() < 0.5
    right = sorted(xs, reverse=not ascending)
    wrong = list(right)
    i = rng.randrange(len(wrong) - 1)
    wrong[i], wrong[i + 1] = wrong[i + 1], wrong[i]
    direction = "ascending" if ascending else "descending"
    return PreferencePair(
        prompt=f"Sort {xs} in {direction} order.", chosen=str(right), rejected=str(wrong),
        domain="reasoning", subset="sorting", source="synthetic",
    )


CATEGORIES = {
    "fruit": ["apple", "banana", "cherry", "mango", "pear", "peach", "grape", "lemon", "plum", "orange"],
    "animal": ["tiger", "horse", "rabbit", "eagle", "dolphin", "wolf", "camel", "zebra", "otter", "lion"],
    "musical instrument": ["piano", "violin", "guitar", "flute", "drum", "cello", "trumpet", "harp", "organ"],
    "country": ["France", "Japan", "Brazil", "Kenya", "Canada", "Norway", "Egypt", "Peru", "India", "Spain"],
    "colour": ["red", "green", "blue", "yellow", "purple", "black", "white", "pink", "brown", "grey"],
    "vehicle": ["car", "truck", "bicycle", "train", "bus", "tractor", "motorcycle", "van", "scooter"],
}


def _category(rng: random.Random) -> PreferencePair:
    """The wrong answer names something from another category."""
    category, other = rng.sample(sorted(CATEGORIES), 2)
    right, wrong = rng.choice(CATEGORIES[category]), rng.choice(CATEGORIES[other])
    ask = rng.choice(["Name a {c}.", "Give me an example of a {c}.", "Can you tell me one {c}?"])
    say = rng.choice(["{x}", "One example is {x}.", "Sure: {x}.", "How about {x}?"])
    return PreferencePair(
        prompt=ask.format(c=category), chosen=say.format(x=right), rejected=say.format(x=wrong),
        domain="chat", subset="category", source="synthetic",
    )


RENAMES = [{}, {"a": "x", "b": "y"}, {"a": "left", "b": "right"}, {"n": "k", "xs": "items", "s": "text"},
           {"n": "value", "xs": "values", "s": "word"}, {"a": "p", "b": "q", "n": "m", "xs": "seq"}]


def _rename(text: str, mapping: dict[str, str]) -> str:
    import re

    return re.sub(r"\b(a|b|n|xs|s)\b", lambda m: mapping.get(m.group(1), m.group(1)), text)


def _code(rng: random.Random) -> PreferencePair:
    name, desc, good, bads = rng.choice(CODE_TASKS)
    mapping = rng.choice(RENAMES)
    args, desc = _rename(ARGS[name], mapping), _rename(desc, mapping)
    ask = rng.choice(ASK).format(name=name, args=args, desc=desc)

    def render(body: str) -> str:
        return f"def {name}({args}):\n    {_rename(body, mapping)}"

    return PreferencePair(
        prompt=ask, chosen=render(good), rejected=render(rng.choice(bads)),
        domain="reasoning", subset="code", source="synthetic",
    )


# _comparison, _sorting and _units are kept for users but left out of the demo: a 6-layer encoder
# does not learn them in a two-minute run.
FAMILIES = (_category, _code, _arithmetic)


def generate(n: int, seed: int) -> list[PreferencePair]:
    """``n`` pairs, families in rotation, fully determined by ``seed``."""
    rng = random.Random(seed)
    return [FAMILIES[i % len(FAMILIES)](rng) for i in range(n)]


def demo_splits(n_train: int = 2000, n_test: int = 400, seed: int = 0) -> tuple[list, list]:
    """Train and held-out pairs; held-out pairs never appear in train."""
    train = generate(n_train, seed)
    seen = {(p.prompt, p.chosen, p.rejected) for p in train}
    test = [p for p in generate(n_test * 2, seed + 1) if (p.prompt, p.chosen, p.rejected) not in seen][:n_test]
    train = [replace(p, id=f"train-{i}") for i, p in enumerate(train)]
    test = [replace(p, id=f"test-{i}") for i, p in enumerate(test)]
    return train, test


def write_jsonl(pairs: list[PreferencePair], path: str | Path) -> Path:
    """Pairs in the shared-data schema (fields that are None left out)."""
    return write_records(({k: v for k, v in asdict(p).items() if v is not None} for p in pairs), path)
