"""Pasted YAML for the project form: the only module that imports ``yaml``.

The browser has no YAML parser of ours, so the form sends the text here and
gets back the same value ``JSON.parse`` would have given it; the page then
checks its shape (a list of tasks, or an object with ``tasks``) exactly as
it does for pasted JSON, and the API validates the tasks when the project
is sent. Only ``yaml.safe_load`` reads the text, so no tag can build a
Python object. The text is bounded (the pure-Python loader reads about
250 kB a second), and the value is copied into JSON's types under a node
budget, so anchors and aliases that would expand into a huge answer (a
"billion laughs" text) are refused instead of serialized.
"""

import datetime
import math
from typing import Any

import yaml

MAX_YAML_CHARS = 128_000
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64


class TasksYamlInvalid(ValueError):
    """The text is not YAML the form can use; the message is for the person who pasted it."""


def tasks_yaml_read(text: str) -> Any:
    """The JSON-typed value of ``text``, or ``TasksYamlInvalid`` saying what is wrong and where."""
    if len(text) > MAX_YAML_CHARS:
        raise TasksYamlInvalid(
            f"the YAML is {len(text):,} characters; at most {MAX_YAML_CHARS:,} are read here "
            "(paste a larger project as JSON)"
        )
    try:
        value = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        raise TasksYamlInvalid(_located(error)) from None
    except yaml.YAMLError as error:
        raise TasksYamlInvalid(f"not valid YAML: {error}") from None
    except RecursionError:
        raise TasksYamlInvalid("not usable YAML: it is nested too deeply") from None
    return _Copier().copy(value, depth=0)


def _located(error: yaml.MarkedYAMLError) -> str:
    problem = error.problem or error.context or "unreadable"
    mark = error.problem_mark or error.context_mark
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"not valid YAML: {problem}{where}"


class _Copier:
    """Copies a loaded value into JSON's types, counting nodes as aliases expand."""

    def __init__(self) -> None:
        self.nodes = 0

    def copy(self, value: Any, *, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_YAML_NODES:
            raise TasksYamlInvalid(
                f"not usable YAML: it expands to more than {MAX_YAML_NODES:,} values "
                "(anchors and aliases count once per use)"
            )
        if depth > MAX_YAML_DEPTH:
            raise TasksYamlInvalid(f"not usable YAML: nested more than {MAX_YAML_DEPTH} deep")
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise TasksYamlInvalid(f"not usable YAML: {value} is not a number JSON can hold")
            return value
        if isinstance(value, datetime.date):  # a datetime is a date too
            return value.isoformat()
        if isinstance(value, list):
            return [self.copy(item, depth=depth + 1) for item in value]
        if isinstance(value, dict):
            return {_key(key): self.copy(item, depth=depth + 1) for key, item in value.items()}
        raise TasksYamlInvalid(
            f"not usable YAML: a {type(value).__name__} value (tags such as !!binary and "
            "!!set have no JSON equivalent)"
        )


def _key(key: Any) -> str:
    """A mapping key as JSON would write it (``1`` → ``"1"``, ``true`` → ``"true"``)."""
    if isinstance(key, bool) or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    if isinstance(key, str | int | float | datetime.date):
        return key.isoformat() if isinstance(key, datetime.date) else str(key)
    raise TasksYamlInvalid(f"not usable YAML: a {type(key).__name__} as a mapping key")
