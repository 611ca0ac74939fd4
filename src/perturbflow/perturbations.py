"""Parsing perturbation labels into their components and doses.

Combinations are written ``A+B`` (as in PerturBench and Norman et al. 2019); a single
perturbation is a combination of one. :func:`parse_perturbation` also reads doses; the
accepted syntaxes of a label are:

* ``"KLF1"``: a name without a dose (``Component("KLF1", None, None)``).
* ``"KLF1+MAP2K6"``: a combination; each component is parsed on its own, so
  ``"drugX@10nM+drugY_1uM"`` is a combination of two dosed drugs.
* ``"drugX@10nM"``, ``"drugX@10"``, ``"drugX @ 0.5 mg/kg"``: a name, ``@``, a number and an
  optional unit (any unit; unitless doses keep ``unit=None``).
* ``"drugX_1.0uM"``: a name, ``_``, a number and a *concentration* unit (``pM``, ``nM``,
  ``uM``, ``µM``, ``μM``, ``mM``, ``M``). Without such a unit the underscore belongs to the
  name (``"DMSO_TF"``, ``"HLA_2"``).
* Names are plain text: quotes, brackets, backslashes and control characters are refused
  outside the literal syntax below (so a label such as ``"__import__('os')"`` is an error).
  Parentheses are allowed (``"(S)-crizotinib"``).
* ``"[('DMSO_TF', 0.0, 'uM')]"``: STATE / Tahoe-100M style, a Python-literal list (or one
  tuple) of ``(name, dose, unit)`` tuples; several tuples are a combination. It is read with
  :func:`ast.literal_eval`, which accepts literals only and never runs code.

A separate dose column (``dose="1+1"``, as PerturBench's ``dose`` beside ``condition``) gives
one dose per component, split on the same separator: ``"<number>[unit]"`` each. A dose both in
the label and in the column must agree. Numbers are written without a ``+`` in an exponent
(``1e3``, not ``1e+3``) since ``+`` separates components.

Concentrations are converted to :data:`CANONICAL_UNIT` (µM, written ``"uM"``); other units
are kept as written. Doses must be finite and non-negative.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

from perturbflow.exceptions import InputError

COMBINATION_SEP = "+"
CANONICAL_UNIT = "uM"
# Factor to µM of each known concentration unit (micro written u, µ (U+00B5) or μ (U+03BC)).
UNIT_TO_UM: dict[str, float] = {
    "pM": 1e-6,
    "nM": 1e-3,
    "uM": 1.0,
    "\u00b5M": 1.0,
    "\u03bcM": 1.0,
    "mM": 1e3,
    "M": 1e6,
}

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_DOSE = re.compile(rf"^\s*(?P<value>{_NUMBER})\s*(?P<unit>[^\d\s.+\-][^\s]*)?\s*$")
_UNITS = "|".join(sorted((re.escape(u) for u in UNIT_TO_UM), key=len, reverse=True))
_UNDERSCORE_DOSE = re.compile(rf"^(?P<name>.+?)_(?P<dose>{_NUMBER}\s*(?:{_UNITS}))$")
# Quotes, brackets, backslashes and control characters belong to the literal syntax only: a
# plain name holding one is a malformed literal (or code), not a name.
_FORBIDDEN = re.compile(r"['\"\[\]\\\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Component:
    """One component of a perturbation.

    Attributes:
        name: The perturbation's name (gene, guide target, drug).
        dose: Its dose, in ``unit``; ``None`` when the label gives none.
        unit: The dose unit (:data:`CANONICAL_UNIT` for concentrations); ``None`` when the
            dose has no unit or there is no dose.
    """

    name: str
    dose: float | None = None
    unit: str | None = None


def components(label: str, *, sep: str = COMBINATION_SEP) -> tuple[str, ...]:
    """Split a perturbation label into its components, in order, blanks dropped.

    Args:
        label: A perturbation label such as ``"KLF1+MAP2K6"``.
        sep: The combination separator.

    Returns:
        The components, e.g. ``("KLF1", "MAP2K6")``; ``("KLF1",)`` for a single.
    """
    return tuple(part.strip() for part in str(label).split(sep) if part.strip())


def parse_perturbation(
    label: str, *, dose: str | None = None, sep: str = COMBINATION_SEP
) -> tuple[Component, ...]:
    """Parse a perturbation label (and optionally its dose column value) into components.

    See the module docstring for the accepted syntaxes.

    Args:
        label: The perturbation label, e.g. ``"KLF1+MAP2K6"``, ``"drugX@10nM"`` or
            ``"[('DMSO_TF', 0.0, 'uM')]"``.
        dose: The value of a separate dose column for this label (``"1"``, ``"1+1"``,
            ``"10nM+1uM"``), one part per component; ``None`` when there is none.
        sep: The combination separator.

    Returns:
        The components in label order, doses converted to µM where the unit is a known
        concentration.

    Raises:
        InputError: The label or dose is malformed, or the dose has a different number of
            parts than the label has components, or disagrees with a dose in the label.
    """
    if not isinstance(label, str):
        if label is None or (isinstance(label, float) and math.isnan(label)):
            raise InputError(f"Missing perturbation label ({label!r}); every cell needs one.")
        label = str(label)
    text = label.strip()
    if not text:
        raise InputError(f"Perturbation label {label!r} is empty.")
    if text[0] == "[" or (text[0] == "(" and _FORBIDDEN.search(text)):
        parsed = _parse_literal(text, label)
    else:
        parts = [part.strip() for part in text.split(sep)]
        if any(not part for part in parts):
            raise InputError(
                f"Perturbation label {label!r} has an empty component (separator {sep!r})."
            )
        parsed = tuple(_parse_component(part, label) for part in parts)
    if dose is None:
        return parsed
    return _apply_dose_column(parsed, dose, label, sep)


def parse_dose(text: str, *, label: str | None = None) -> tuple[float, str | None]:
    """Parse a dose ``"<number>[unit]"`` and convert a known concentration to µM.

    Args:
        text: The dose, e.g. ``"10nM"``, ``"1.5 uM"``, ``"1"``, ``"0.5 mg/kg"``.
        label: The label it belongs to, named in errors.

    Returns:
        ``(value, unit)``; ``unit`` is :data:`CANONICAL_UNIT` for a concentration, the unit as
        written otherwise, ``None`` without a unit.

    Raises:
        InputError: Not a number with an optional unit, or not finite and non-negative.
    """
    where = f" of perturbation {label!r}" if label is not None else ""
    match = _DOSE.match(str(text))
    if match is None:
        raise InputError(
            f"Dose {text!r}{where} is not a number with an optional unit "
            "(e.g. '1', '10nM', '0.5 uM')."
        )
    return _normalise(float(match["value"]), match["unit"], label, text)


def _normalise(
    value: float, unit: str | None, label: str | None, text: object
) -> tuple[float, str | None]:
    """Check a dose and convert a known concentration unit to µM."""
    if not math.isfinite(value) or value < 0:
        where = f" of perturbation {label!r}" if label is not None else ""
        raise InputError(f"Dose {text!r}{where} must be a finite number >= 0.")
    if unit in UNIT_TO_UM:
        return value * UNIT_TO_UM[unit], CANONICAL_UNIT
    return value, unit


def _parse_component(part: str, label: str) -> Component:
    """Parse one component: ``name``, ``name@dose[unit]`` or ``name_dose<conc unit>``."""
    if _FORBIDDEN.search(part):
        raise InputError(
            f"Perturbation label {label!r}: component {part!r} holds a quote, bracket, "
            "backslash or control character; names are plain text, and a STATE/Tahoe style "
            "label is a list of tuples such as \"[('DMSO_TF', 0.0, 'uM')]\"."
        )
    if "@" in part:
        name, _, dose_text = part.rpartition("@")
        if not name.strip():
            raise InputError(f"Perturbation label {label!r}: component {part!r} has no name.")
        return Component(name.strip(), *parse_dose(dose_text, label=label))
    match = _UNDERSCORE_DOSE.match(part)
    if match:
        return Component(match["name"], *parse_dose(match["dose"], label=label))
    return Component(part)


def _parse_literal(text: str, label: str) -> tuple[Component, ...]:
    """Parse a STATE/Tahoe literal ``[(name, dose, unit), ...]`` without running code."""
    expected = "a list of (name, dose, unit) tuples such as \"[('DMSO_TF', 0.0, 'uM')]\""
    try:
        value = ast.literal_eval(text)  # literals only: a call or a name is refused
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        raise InputError(f"Perturbation label {label!r} is not {expected}.") from err
    if isinstance(value, tuple) and value and isinstance(value[0], str):
        value = [value]  # a single tuple
    if not isinstance(value, list | tuple) or not value:
        raise InputError(f"Perturbation label {label!r} is not {expected}.")
    parsed = []
    for item in value:
        ok = isinstance(item, tuple | list) and len(item) == 3
        name, dose, unit = item if ok else (None, None, None)
        ok = ok and isinstance(name, str) and bool(name.strip())
        ok = ok and isinstance(dose, int | float) and not isinstance(dose, bool)
        if not ok or not (unit is None or isinstance(unit, str)):
            raise InputError(f"Perturbation label {label!r}: {item!r} is not {expected}.")
        unit = (unit.strip() or None) if isinstance(unit, str) else None
        parsed.append(Component(name.strip(), *_normalise(float(dose), unit, label, item)))
    return tuple(parsed)


def _apply_dose_column(
    parsed: tuple[Component, ...], dose: str, label: str, sep: str
) -> tuple[Component, ...]:
    """Attach the doses of a dose column value to the components (they must agree)."""
    parts = [p.strip() for p in str(dose).split(sep)]
    if len(parts) != len(parsed):
        raise InputError(
            f"Dose {dose!r} has {len(parts)} part(s) but perturbation {label!r} has "
            f"{len(parsed)} component(s); write one dose per component, joined by {sep!r}."
        )
    out = []
    for comp, part in zip(parsed, parts, strict=True):
        value, unit = parse_dose(part, label=label)
        if comp.dose is not None and (
            comp.unit != unit or not math.isclose(comp.dose, value, rel_tol=1e-9, abs_tol=0.0)
        ):
            raise InputError(
                f"Perturbation {label!r}: component {comp.name!r} has dose {comp.dose} "
                f"{comp.unit or ''} in the label but {part!r} in the dose column."
            )
        out.append(Component(comp.name, value, unit))
    return tuple(out)
