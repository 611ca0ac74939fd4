"""Doses in the ST model's perturbation inputs: drug identity plus a log-dose channel.

A drug screen labels a perturbation with its dose (``"drugX@10nM"``, ``"drugX_1uM"``, a
STATE/Tahoe literal; see :mod:`perturbflow.perturbations`). How
:class:`~perturbflow.models.components.inputs.PerturbationInputs` treats doses is its ``dose`` mode:

``log``
    one identity slot per *drug name* (all doses of a drug share it) plus a dose block of
    the same width holding ``x(d) * e``, with ``x(d) = log1p(d / d_ref) / s``: ``d_ref`` the
    smallest positive training dose of the unit and ``s = log1p(d_max / d_ref)``, so the
    training doses span ``x`` in ``[log 2 / s, 1]``, nearly linearly in log dose, and dose 0
    (a vehicle) gives ``x = 0``. An unseen dose of a trained drug is *not* unknown: it gets
    the drug's slot and its own ``x``, between its neighbours', and the network interpolates.
    A combination sums its components' ``e`` and ``x e``.
``none``
    doses are parsed and dropped: one slot per drug name, every dose the same vector (the
    model learns one average response per drug and cannot tell doses apart).
``label``
    every component *label* is its own identity (``drugX@1uM`` and ``drugX@10uM`` are two
    unrelated slots; an unseen dose is unknown). What runs saved before doses were read do.
``auto``
    ``log`` when the training components carry more than one distinct dose, else ``label``
    (a screen without doses encodes exactly as before).

One reference per unit (not per drug) keeps the same concentration at the same ``x`` for
every drug. Doses are converted to µM for concentrations by the parser, so ``10nM`` and
``0.01uM`` are the same dose.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from perturbflow.exceptions import InputError
from perturbflow.perturbations import components, parse_perturbation

logger = logging.getLogger(__name__)

DOSE_MODES = ("auto", "log", "none", "label")
DoseMode = Literal["log", "none", "label"]
_UNITLESS = ""  # JSON key of doses without a unit
# The dose fields of the inputs params, and their value for runs saved before them (those
# runs encoded every label as its own identity).
_SAVED_DEFAULTS: dict[str, Any] = {"dose": "label", "dose_interpolation": 0.0}


@dataclass(frozen=True)
class DoseEncoding:
    """The fitted dose handling of a run (saved in ``perturbation_inputs.json``).

    Attributes:
        mode: ``log``, ``none`` or ``label`` (``auto`` is resolved at fit time).
        control_label: The control's label (its components encode nothing).
        references: Per unit (``""`` for unitless), the smallest positive training dose.
        scales: Per unit, ``log1p(max / reference)`` of the training doses (at least log 2).
        dosed: Names trained with a dose (they need one at encoding).
    """

    mode: DoseMode
    control_label: str
    references: dict[str, float] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)
    dosed: frozenset[str] = frozenset()
    _control_names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names: frozenset[str] = frozenset()
        if self.mode != "label":
            try:
                names = frozenset(c.name for c in parse_perturbation(self.control_label))
            except InputError:
                names = frozenset()
        object.__setattr__(self, "_control_names", names)

    @property
    def uses_dose(self) -> bool:
        """Whether the vectors carry a dose block."""
        return self.mode == "log"

    def parts(self, perturbation: str) -> list[tuple[str, float | None]]:
        """The non-control components of a label as ``(name, x)``.

        ``x`` is the dose coordinate (``None`` without the dose block or for a component
        without dose). In ``label`` mode the name is the raw component label.

        Raises:
            InputError: A malformed label, a dose in a unit the run was not trained with, a
                dose for a name trained without one, or no dose for a drug trained with one.
        """
        if self.mode == "label" or perturbation == self.control_label:
            return [(c, None) for c in components(perturbation) if c != self.control_label]
        out = []
        for comp in parse_perturbation(perturbation):
            if comp.name in self._control_names or comp.name == self.control_label:
                continue
            if self.mode == "none":
                out.append((comp.name, None))
                continue
            out.append((comp.name, self._coordinate(comp.name, comp.dose, comp.unit, perturbation)))
        return out

    def _coordinate(
        self, name: str, dose: float | None, unit: str | None, label: str
    ) -> float | None:
        if dose is None:
            if name in self.dosed:
                raise InputError(
                    f"Perturbation {label!r}: {name!r} was trained with doses, so it needs one "
                    f"(e.g. '{name}@1uM'); units of this run: {sorted(self.references)}."
                )
            return None
        key = unit or _UNITLESS
        if key not in self.references:
            if name in self.dosed:
                raise InputError(
                    f"Perturbation {label!r}: dose unit {unit!r} was never trained; this run "
                    f"knows {sorted(self.references)} (concentrations are read in uM)."
                )
            return None  # an untrained name: it has no slot, its dose is not read
        return math.log1p(dose / self.references[key]) / self.scales[key]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "mode": self.mode,
            "references": dict(self.references),
            "scales": dict(self.scales),
            "dosed": sorted(self.dosed),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, control_label: str) -> DoseEncoding:
        """Read :meth:`to_dict` (``None``: a run saved before doses, i.e. ``label``)."""
        if data is None:
            return cls("label", control_label)
        if data.get("mode") not in ("log", "none", "label"):
            raise InputError(f"dose mode {data.get('mode')!r} is not log, none or label.")
        return cls(
            data["mode"],
            control_label,
            {str(k): float(v) for k, v in data.get("references", {}).items()},
            {str(k): float(v) for k, v in data.get("scales", {}).items()},
            frozenset(map(str, data.get("dosed", []))),
        )


def fit_dose_encoding(
    perturbations: Iterable[str], *, control_label: str, mode: str, identity: bool
) -> DoseEncoding:
    """Resolve the dose mode and fit the per-unit references on the training labels.

    Args:
        perturbations: The training perturbation labels.
        control_label: The control's label.
        mode: ``auto``, ``log``, ``none`` or ``label``.
        identity: Whether the identity part is on (the dose block scales its slots).

    Raises:
        InputError: An unknown mode, ``log`` without identity, or (``log``/``none``) a
            label that does not parse.
    """
    if mode not in DOSE_MODES:
        raise InputError(
            f"training.model.inputs.dose must be one of {list(DOSE_MODES)}, not {mode!r}."
        )
    labels = sorted({str(p) for p in perturbations} - {control_label})
    if mode == "label":
        return DoseEncoding("label", control_label)
    if mode == "log" and not identity:
        raise InputError(
            "training.model.inputs.dose 'log' scales the identity slots by the log dose: "
            "switch identity on, or set dose to 'none' or 'label'."
        )
    try:
        control = {c.name for c in parse_perturbation(control_label)}
        comps = [c for p in labels for c in parse_perturbation(p) if c.name not in control]
    except InputError as err:
        if mode == "auto":
            logger.info("Perturbation labels are not dose syntax (%s): doses not read.", err)
            return DoseEncoding("label", control_label)
        raise
    doses = {(c.dose, c.unit) for c in comps if c.dose is not None}
    if mode == "auto":
        mode = "log" if len(doses) > 1 and identity else "label"
    if mode != "log":
        return DoseEncoding(mode, control_label)  # type: ignore[arg-type]
    by_unit: dict[str, list[float]] = {}
    for dose, unit in doses:
        by_unit.setdefault(unit or _UNITLESS, []).append(dose)
    references, scales = {}, {}
    for unit, values in sorted(by_unit.items()):
        positive = [v for v in values if v > 0]
        ref = min(positive) if positive else 1.0
        references[unit] = ref
        scales[unit] = max(math.log1p(max(values) / ref), math.log(2.0))
    dosed = frozenset(c.name for c in comps if c.dose is not None)
    logger.info(
        "Dose-aware perturbation inputs: %d dosed names, units %s (reference %s).",
        len(dosed),
        sorted(references),
        references,
    )
    return DoseEncoding("log", control_label, references, scales, dosed)


def interpolation_rate(params: Any) -> float:
    """``dose_interpolation`` of the inputs params."""
    return float(params.dose_interpolation)


def check_interpolation(rate: float, dose: DoseEncoding | None) -> None:
    """Dose interpolation blends log-dose coordinates: it needs the ``log`` encoding.

    Raises:
        InputError: A rate outside [0, 1], or a positive rate without the dose block.
    """
    if not 0.0 <= rate <= 1.0:
        raise InputError(f"training.model.inputs.dose_interpolation must be in [0, 1], got {rate}.")
    if rate > 0 and (dose is None or not dose.uses_dose):
        mode = "label" if dose is None else dose.mode
        raise InputError(
            "training.model.inputs.dose_interpolation needs dose-aware inputs (dose 'log', "
            f"or 'auto' on a screen with several doses); the inputs resolved dose {mode!r}."
        )


def dose_param_values(params: Any) -> dict[str, Any]:
    """The dose fields an inputs params object has (saved with the run's inputs)."""
    return {k: getattr(params, k) for k in _SAVED_DEFAULTS if hasattr(params, k)}


def params_for_class(saved: dict[str, Any], cls: type) -> dict[str, Any]:
    """Saved inputs params, adapted to the fields ``cls`` declares.

    A run saved before the dose fields existed gets their neutral values (``label``, 0); a
    run saved with them is read by a params class without them by dropping them (the
    fitted dose handling itself is stored apart, under ``"dose"``). Other keys are kept,
    so a genuinely unknown key still fails.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    out = {k: v for k, v in saved.items() if k in names or k not in _SAVED_DEFAULTS}
    for key, value in _SAVED_DEFAULTS.items():
        if key in names:
            out.setdefault(key, value)
    return out
