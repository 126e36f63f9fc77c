"""Named training configurations (the TinyRM paper's Table 2) stored as JSON in the package.

A recipe file is ``{"name", "description", "source", "config": {<TrainConfig fields>}}``. The
paper's recipes ship in ``tinyrm/training/recipes/``; ``tinyrm sweep`` writes its best trial in the same
format, so ``--recipe`` also accepts a path to such a file.
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .config import TrainConfig

RECIPE_SUFFIX = ".json"


@dataclass
class Recipe:
    name: str
    config: dict = field(default_factory=dict)  # TrainConfig fields
    description: str = ""
    source: str = ""
    path: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "source": self.source, "config": self.config}


def _packaged() -> dict[str, resources.abc.Traversable]:
    folder = resources.files(__package__) / "recipes"
    return {p.name[: -len(RECIPE_SUFFIX)]: p for p in folder.iterdir() if p.name.endswith(RECIPE_SUFFIX)}


def recipe_names() -> list[str]:
    return sorted(_packaged())


def _train_fields() -> set[str]:
    return set(TrainConfig.__dataclass_fields__)


_JSON_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "an object", type(None): "null"}


def _wrong_types(config: dict) -> list[str]:
    """``'key' must be <type>, got <JSON type>`` for each option whose value is not of its ``TrainConfig`` field's
    type, as pydantic reads JSON strictly (an integer is a number, a list a tuple; no NaN or infinity)."""
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    hints = typing.get_type_hints(TrainConfig)
    strict = ConfigDict(strict=True, allow_inf_nan=False)
    wrong = []
    for key, value in config.items():
        if key not in hints:
            continue
        try:
            TypeAdapter(hints[key], config=strict).validate_json(json.dumps(value))
        except ValidationError:
            hint = hints[key]
            name = hint.__name__ if isinstance(hint, type) else str(hint).replace("NoneType", "None")
            got = "a non-finite number" if isinstance(value, float) and not math.isfinite(value) else \
                _JSON_NAMES.get(type(value), type(value).__name__)
            wrong.append(f"'{key}' must be {name}, got {got}")
    return wrong


def parse_recipe(text: str, where: str) -> Recipe:
    """Validate a recipe document; errors name the file and the offending key."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}:{error.lineno}: invalid JSON ({error.msg})") from None
    except (RecursionError, ValueError) as error:  # nested too deeply; an integer of more than 4300 digits
        raise ValueError(f"{where}: invalid JSON ({str(error).partition(':')[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError(f"{where}: a recipe is an object with a 'config' object of training options")
    unknown = sorted(set(data["config"]) - _train_fields())
    if unknown:
        raise ValueError(f"{where}: unknown training option(s) in 'config': {', '.join(unknown)}")
    if "data" in data["config"] or "output" in data["config"]:
        raise ValueError(f"{where}: 'data' and 'output' belong on the command line, not in a recipe")
    wrong = _wrong_types(data["config"])
    if wrong:
        raise ValueError(f"{where}: wrong type in 'config': {'; '.join(wrong)}")
    return Recipe(name=str(data.get("name") or Path(where).stem), config=dict(data["config"]),
                  description=str(data.get("description", "")), source=str(data.get("source", "")), path=where)


def load_recipe(name_or_path: str) -> Recipe:
    """A packaged recipe by name (``large-reasoning``) or a recipe JSON file by path."""
    packaged = _packaged()
    if name_or_path in packaged:
        return parse_recipe(packaged[name_or_path].read_text(encoding="utf-8"), f"recipes/{name_or_path}.json")
    path = Path(name_or_path)
    if path.suffix == RECIPE_SUFFIX and path.is_file():
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
                             f"{error.start})") from None
        return parse_recipe(text, str(path))
    raise ValueError(f"unknown recipe {name_or_path!r}; choose from {', '.join(sorted(packaged))} "
                     "or give the path of a recipe .json file")


def list_recipes() -> list[Recipe]:
    return [load_recipe(name) for name in recipe_names()]


def apply_recipe(recipe: Recipe, explicit: dict) -> dict:
    """TrainConfig keyword arguments: recipe values, then every explicitly given option on top."""
    values = dict(recipe.config)
    values.update(explicit)
    return values


def write_recipe(path: str | Path, recipe: Recipe) -> Path:
    """Save ``recipe`` (validated first, so a written recipe always loads)."""
    path = Path(path)
    text = json.dumps(recipe.to_dict(), indent=2) + "\n"
    parse_recipe(text, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
