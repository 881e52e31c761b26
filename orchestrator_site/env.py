"""Strict readers for environment variables.

Every setting that comes from the environment goes through one of these, so a
malformed value stops the process at start with a message naming the variable
instead of surfacing later as a confusing runtime error.
"""

import os
from collections.abc import Iterable
from typing import overload

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@overload
def env_str(name: str, default: str) -> str: ...
@overload
def env_str(name: str, default: None = None) -> str | None: ...
def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None else value.strip()


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = float(value.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number


def env_list(name: str, default: Iterable[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: Iterable[str]) -> str:
    allowed = list(choices)
    value = (os.environ.get(name) or default).strip()
    if value not in allowed:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def rate_parse(text: str) -> tuple[int, int]:
    """``"10/hour"`` as (10, 3600): a count per second, minute, hour or day (DRF's notation)."""
    count, _, period = str(text).strip().partition("/")
    seconds = _PERIODS.get(period.strip().lower().removesuffix("s"))
    if not count.strip().isdigit() or int(count) < 1 or seconds is None:
        raise ValueError(f"{text!r} is not a rate like 10/hour (per second, minute, hour or day)")
    return int(count), seconds


def env_rate(name: str, default: str) -> str:
    value = (os.environ.get(name) or default).strip()
    try:
        rate_parse(value)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name}: {error}") from None
    return value
