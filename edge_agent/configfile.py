"""Reading a TOML file into a pydantic model, reporting each problem with its file, line and key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from edge_agent.errors import ConfigError

__all__ = ["check_toml", "load_toml"]

M = TypeVar("M", bound=BaseModel)

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(
    r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*="
)

Path_ = tuple[str | int, ...]


def _split_dotted(text: str) -> list[str]:
    parts = re.findall(r"\"[^\"]*\"|'[^']*'|[^.\s]+", text)
    return [part.strip("\"'") for part in parts]


def _line_index(text: str) -> dict[Path_, int]:
    """Map each key path the file spells out (tables, array items, keys) to its 1-based line.

    A small scanner, not a TOML parser: it follows table headers, arrays of tables and
    ``key =`` lines, which is all that is needed to point a person at the right line.
    """
    index: dict[Path_, int] = {}
    array_counts: dict[tuple[str, ...], int] = {}
    table: Path_ = ()
    in_multiline = False
    for number, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                in_multiline = False
            continue
        header = _HEADER.match(line)
        if header:
            names = tuple(_split_dotted(header.group(2)))
            if header.group(1) == "[[":
                position = array_counts.get(names, -1) + 1
                array_counts[names] = position
                table = (*names, position)
            else:
                table = names
            index.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            path = (*table, *_split_dotted(key.group(1)))
            index.setdefault(path, number)
            if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                in_multiline = True
    return index


def _user_path(loc: tuple[int | str, ...], data: Any) -> Path_:
    """Drop the union tags pydantic puts in error locations (``sources.0.mqtt.topics``)."""
    path: list[str | int] = []
    node = data
    for element in loc:
        if isinstance(node, dict) and isinstance(element, str) and element not in node:
            if node.get("type") == element:
                continue  # a discriminated union's tag, not a key of the file
            path.append(element)
            node = None
            continue
        path.append(element)
        if isinstance(node, dict):
            node = node.get(element)
        elif isinstance(node, list) and isinstance(element, int) and element < len(node):
            node = node[element]
        else:
            node = None
    return tuple(path)


def _spell(path: Path_) -> str:
    text = ""
    for element in path:
        text += f"[{element}]" if isinstance(element, int) else (f".{element}" if text else element)
    return text or "(top level)"


def _find_line(index: dict[Path_, int], path: Path_) -> int | None:
    for end in range(len(path), 0, -1):
        line = index.get(path[:end])
        if line is not None:
            return line
    return None


def check_toml(path: Path, model: type[M]) -> tuple[M | None, list[ConfigError]]:
    """Parse and validate ``path``; return the model, or None and every problem found."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        return None, [ConfigError(f"cannot read the file: {err.strerror or err}", path=str(path))]
    except UnicodeDecodeError as err:
        return None, [ConfigError(f"the file is not UTF-8 text: {err}", path=str(path))]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        match = re.search(r"line (\d+)", str(err))
        line = int(match.group(1)) if match else None
        return None, [ConfigError(f"not valid TOML: {err}", path=str(path), line=line)]
    try:
        return model.model_validate(data), []
    except ValidationError as err:
        index = _line_index(text)
        problems = []
        for detail in err.errors():
            user_path = _user_path(detail["loc"], data)
            reason = detail["msg"]
            if detail["type"] == "extra_forbidden":
                reason = "unknown key (check the spelling; see `edge-agent sample-config`)"
            elif detail["type"] == "missing":
                reason = "required key is missing"
            problems.append(
                ConfigError(
                    reason,
                    path=str(path),
                    line=_find_line(index, user_path),
                    key=_spell(user_path),
                )
            )
        return None, problems


def load_toml(path: Path, model: type[M]) -> M:
    """Parse and validate ``path``; raise the first ConfigError found."""
    config, problems = check_toml(path, model)
    if config is None:
        raise problems[0]
    return config
