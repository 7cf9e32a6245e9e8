"""The one exception type that the CLI turns into a single-line message and a non-zero exit, and the checks of a
config section's values that raise it."""

from __future__ import annotations

import math
from typing import Any


class UserError(Exception):
    """A mistake in the user's input (paths, names, configs, checkpoints) with a message that says what to do."""


def check_at_least(section: Any, name: str, keys: tuple[str, ...], minimum: int) -> None:
    """Refuse any of ``keys`` (integers) below ``minimum``."""
    for key in keys:
        if getattr(section, key) < minimum:
            raise UserError(f"{name}.{key} must be at least {minimum}, got {getattr(section, key)}")


def check_off_or_positive(section: Any, name: str, keys: tuple[str, ...]) -> None:
    """Refuse any of ``keys`` (numbers where 0 means off, or a default) that is negative or NaN."""
    for key in keys:
        if not getattr(section, key) >= 0:
            raise UserError(f"{name}.{key} must be 0 (off) or positive, got {getattr(section, key)}")


def check_choice(section: Any, name: str, key: str, choices: tuple[str, ...]) -> None:
    """Refuse a value of ``key`` that is not one of ``choices`` (a registry above)."""
    if getattr(section, key) not in choices:
        raise UserError(f"{name}.{key} must be one of {', '.join(choices)}, got {getattr(section, key)!r}")


def check_positive(section: Any, name: str, keys: tuple[str, ...]) -> None:
    """Refuse any of ``keys`` (floats) that is not a finite number above 0 (NaN included)."""
    for key in keys:
        value = getattr(section, key)
        if not 0 < value < math.inf:
            raise UserError(f"{name}.{key} must be a positive number, got {value}")
