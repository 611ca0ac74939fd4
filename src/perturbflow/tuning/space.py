"""The search space: typed dimensions applied to dotted field paths of a frozen config.

A space maps a dotted path into a (nested, frozen) dataclass config, e.g. ``lora.rank`` or
``optimizer.lr`` of ``FinetuningParams``, to a :class:`~perturbflow.tuning.params.Dimension`.
:func:`check_space` validates every path and every endpoint against the base config before
the sweep; :func:`suggest` draws a trial's values; :func:`apply` returns the base config
with those values (``dataclasses.replace`` all the way down, so pydantic validates them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import optuna
from pydantic import ValidationError

from perturbflow.exceptions import InputError
from perturbflow.exceptions import suggest as did_you_mean
from perturbflow.tuning.params import (
    CategoricalDimension,
    Dimension,
    FloatDimension,
    IntDimension,
)


def _field_names(config: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(config)]


def _resolve(config: Any, path: str) -> Any:
    """The value at ``path`` (raises InputError naming the first unknown part)."""
    value = config
    walked = []
    for part in path.split("."):
        if not dataclasses.is_dataclass(value) or part not in _field_names(value):
            where = ".".join(walked) or type(config).__name__
            known = _field_names(value) if dataclasses.is_dataclass(value) else []
            raise InputError(
                f"tune.space: {path!r} is not a field path of {type(config).__name__}: "
                f"{where} has no field {part!r} (fields: {known}).{did_you_mean(part, known)}"
            )
        walked.append(part)
        value = getattr(value, part)
    return value


def apply(config: Any, values: Mapping[str, Any]) -> Any:
    """``config`` with the value at each dotted path replaced.

    Args:
        config: A (nested) dataclass instance; frozen ones are copied, never mutated.
        values: Dotted path -> new value.

    Returns:
        A new instance (pydantic dataclasses validate the new values).

    Raises:
        InputError: A path that is not a field path of ``config``.
    """
    for path in values:
        _resolve(config, path)
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    changes = dict(direct)
    for head, sub in nested.items():
        changes[head] = apply(getattr(config, head), sub)
    return dataclasses.replace(config, **changes)


def _check_dimension(path: str, dim: Dimension) -> None:
    if isinstance(dim, CategoricalDimension):
        if not dim.choices:
            raise InputError(f"tune.space.{path}: choices is empty.")
        return
    if not dim.low <= dim.high:
        raise InputError(f"tune.space.{path}: low ({dim.low}) is above high ({dim.high}).")
    if dim.log and dim.low <= 0:
        raise InputError(f"tune.space.{path}: a log scale needs low > 0 (got {dim.low}).")
    if isinstance(dim, FloatDimension) and not (math.isfinite(dim.low) and math.isfinite(dim.high)):
        raise InputError(f"tune.space.{path}: low and high must be finite.")


def endpoints(dim: Dimension) -> list[Any]:
    """The values that bound a dimension (its choices, or low and high)."""
    if isinstance(dim, CategoricalDimension):
        return list(dim.choices)
    return [dim.low, dim.high]


def check_space(config: Any, space: Mapping[str, Dimension]) -> None:
    """Fail before the sweep on a path, range or value the config would reject.

    Every path must be a field path of ``config``, and ``config`` with each endpoint (or
    choice) of each dimension must validate, so a float range on an integer field or a
    negative weight fails here, not after hours of trials.

    Raises:
        InputError: Naming the path and what is wrong with it.
    """
    if not space:
        raise InputError("tune.space is empty: give at least one dimension to search.")
    for path, dim in space.items():
        current = _resolve(config, path)
        if dataclasses.is_dataclass(current):
            raise InputError(
                f"tune.space: {path!r} is a group ({type(current).__name__}), not a value; "
                f"name one of its fields ({_field_names(current)})."
            )
        _check_dimension(path, dim)
        if isinstance(dim, FloatDimension) and type(current) is int:
            raise InputError(
                f"tune.space.{path}: a float range on an integer field (currently "
                f"{current!r}); use type int or categorical."
            )
        for value in endpoints(dim):
            try:
                apply(config, {path: value})
            except ValidationError as err:
                raise InputError(
                    f"tune.space.{path}: the value {value!r} is not valid for this field "
                    f"(currently {current!r}): {err.errors()[0]['msg']}."
                ) from err


def suggest(trial: optuna.Trial, space: Mapping[str, Dimension]) -> dict[str, Any]:
    """Draw one value per dimension from ``trial`` (parameter name = the dotted path).

    Args:
        trial: The Optuna trial.
        space: Dotted path -> dimension.

    Returns:
        Dotted path -> the value drawn.
    """
    values: dict[str, Any] = {}
    for path, dim in space.items():
        if isinstance(dim, FloatDimension):
            values[path] = trial.suggest_float(path, dim.low, dim.high, log=dim.log)
        elif isinstance(dim, IntDimension):
            values[path] = trial.suggest_int(path, dim.low, dim.high, log=dim.log)
        else:
            values[path] = trial.suggest_categorical(path, list(dim.choices))
    return values
