"""Split configs: STATE/cell-load TOML files or the same sections given as params.

A config names which datasets train (``[training]``), which whole ``dataset.celltype``
contexts are held out (``[zeroshot]``) and which perturbations of a context are held out
(``[fewshot."dataset.celltype"]`` with ``val`` and ``test`` lists). See
:func:`perturbflow.splits.build_split_table` for how cells are labelled.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perturbflow.exceptions import InputError, suggest
from perturbflow.params import SplitSpec
from perturbflow.splits.paths import resolve_dataset_pattern

SECTIONS = ("datasets", "training", "zeroshot", "fewshot")
HELDOUT_LABELS = ("val", "test")
Context = tuple[str, str]


@dataclass(frozen=True)
class SplitConfig:
    """A parsed split config.

    Attributes:
        datasets: Dataset name -> resolved h5ad files (empty when built from params).
        training: Dataset name -> ``"train"``; empty means every dataset trains.
        zeroshot: ``(dataset, celltype)`` -> ``"val"`` or ``"test"``.
        fewshot: ``(dataset, celltype)`` -> ``{"val": [...], "test": [...]}``.
        source: Where the config comes from: a file path or ``"params:<name>"``.
    """

    datasets: dict[str, list[Path]] = field(default_factory=dict)
    training: dict[str, str] = field(default_factory=dict)
    zeroshot: dict[Context, str] = field(default_factory=dict)
    fewshot: dict[Context, dict[str, list[str]]] = field(default_factory=dict)
    source: str = "<unknown>"

    def __post_init__(self) -> None:
        """Check the rules that hold whatever the data: labels, overlaps."""
        where = f"Split config {self.source}"
        for dataset, value in self.training.items():
            if value != "train":
                raise InputError(
                    f"{where}: [training] {dataset} = {value!r}; the only allowed value is "
                    "'train' (hold data out with [zeroshot] or [fewshot])."
                )
        for (dataset, celltype), value in self.zeroshot.items():
            if value not in HELDOUT_LABELS:
                raise InputError(
                    f'{where}: [zeroshot] "{dataset}.{celltype}" = {value!r}; expected '
                    f"'val' or 'test'.{suggest(str(value), HELDOUT_LABELS)}"
                )
        for context, entry in self.fewshot.items():
            key = f'[fewshot."{context[0]}.{context[1]}"]'
            if context in self.zeroshot:
                raise InputError(
                    f"{where}: context '{context[0]}.{context[1]}' is in both [zeroshot] and "
                    f"{key}. Zero-shot holds out every cell of the context, controls "
                    "included; few-shot holds out some perturbations and keeps its controls "
                    "in training. Keep only one of the two."
                )
            unknown = set(entry) - set(HELDOUT_LABELS)
            if unknown:
                raise InputError(f"{where}: {key} has keys {sorted(unknown)}; allowed: val, test.")
            both = sorted(set(entry.get("val", [])) & set(entry.get("test", [])))
            if both:
                raise InputError(
                    f"{where}: {key} lists {both} in both val and test; "
                    "a perturbation can be held out in one of them only."
                )

    @property
    def contexts(self) -> list[Context]:
        """Every context named by ``[zeroshot]`` or ``[fewshot]``."""
        return [*self.zeroshot, *self.fewshot]

    @property
    def referenced_datasets(self) -> set[str]:
        """Datasets named anywhere in the config."""
        return set(self.datasets) | set(self.training) | {ds for ds, _ in self.contexts}


def _context_key(key: str, section: str, value: Any, where: str) -> Context:
    """Split a ``"dataset.celltype"`` key, explaining TOML's dotted-key pitfall."""
    if isinstance(value, dict) and "." not in key and section == "zeroshot":
        examples = ", ".join(
            f'"{key}.{sub}" = {json.dumps(val)}' for sub, val in list(value.items())[:3]
        )
        raise InputError(
            f"{where}: [zeroshot] key {key!r} holds a table: an unquoted dotted key "
            f"`{key}.<celltype> = ...` is a nested table in TOML. Quote the key: "
            f'"dataset.celltype", e.g. {examples}.'
        )
    if (
        isinstance(value, dict)
        and "." not in key
        and section == "fewshot"
        and any(isinstance(v, dict) for v in value.values())
    ):
        sub = next(s for s, v in value.items() if isinstance(v, dict))
        raise InputError(
            f"{where}: [fewshot.{key}.{sub}] is parsed by TOML as nested tables. Quote the "
            f'key: "dataset.celltype", i.e. write [fewshot."{key}.{sub}"].'
        )
    dataset, dot, celltype = key.partition(".")
    if not dot or not dataset or not celltype:
        raise InputError(
            f'{where}: [{section}] key {key!r} is not of the form "dataset.celltype" '
            f'(quote the key: "dataset.celltype").'
        )
    return dataset, celltype


def _as_table(raw: Any, section: str, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(f"{where}: [{section}] must be a table, got {raw!r}.")
    return raw


def _fewshot_entry(key: str, raw: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        raise InputError(
            f'{where}: [fewshot."{key}"] must be a table with val and test lists, got {raw!r}.'
        )
    entry: dict[str, list[str]] = {}
    for label, perts in raw.items():
        if label not in HELDOUT_LABELS:
            raise InputError(
                f'{where}: [fewshot."{key}"] has key {label!r}; allowed: val, test.'
                f"{suggest(label, HELDOUT_LABELS)}"
            )
        if not isinstance(perts, list) or not all(isinstance(p, str) for p in perts):
            raise InputError(
                f'{where}: [fewshot."{key}"].{label} must be a list of perturbation names, '
                f'e.g. {label} = ["GENE1", "GENE2"]; got {perts!r}.'
            )
        entry[label] = list(dict.fromkeys(perts))
    return {label: entry.get(label, []) for label in HELDOUT_LABELS}


def parse_sections(
    training: Any, zeroshot: Any, fewshot: Any, *, source: str
) -> tuple[dict[str, str], dict[Context, str], dict[Context, dict[str, list[str]]]]:
    """Check and convert the ``training``, ``zeroshot`` and ``fewshot`` sections.

    Args:
        training: ``{dataset: "train"}`` or ``None``.
        zeroshot: ``{"dataset.celltype": "val" | "test"}`` or ``None``.
        fewshot: ``{"dataset.celltype": {"val": [...], "test": [...]}}`` or ``None``.
        source: The config's origin, used in error messages.

    Returns:
        ``training``, ``zeroshot`` and ``fewshot`` keyed by ``(dataset, celltype)``.

    Raises:
        InputError: On a malformed key or value.
    """
    where = f"Split config {source}"
    train = {str(k): v for k, v in _as_table(training, "training", where).items()}
    zero = {
        _context_key(k, "zeroshot", v, where): v
        for k, v in _as_table(zeroshot, "zeroshot", where).items()
    }
    few = {
        _context_key(k, "fewshot", v, where): _fewshot_entry(k, v, where)
        for k, v in _as_table(fewshot, "fewshot", where).items()
    }
    return train, zero, few


def _syntax_error(path: Path, text: str, error: tomllib.TOMLDecodeError) -> InputError:
    """Quote the offending line under tomllib's message (it has line and column)."""
    message = f"Split config {path}: TOML syntax error: {error}."
    lines = text.splitlines()
    found = re.search(r"line (\d+), column (\d+)", str(error))
    if found:
        line, column = int(found.group(1)), int(found.group(2))
    elif "end of document" in str(error) and lines:
        line, column = len(lines), len(lines[-1]) + 1
    else:
        return InputError(message)
    if 0 < line <= len(lines):
        pad = " " * len(str(line))
        message += f"\n  {line} | {lines[line - 1]}\n  {pad} | {' ' * (column - 1)}^"
    return InputError(message)


def _resolve_datasets(
    raw: dict[str, Any], base_dir: Path, where: str, check_files: bool
) -> dict[str, list[Path]]:
    datasets: dict[str, list[Path]] = {}
    for name, value in raw.items():
        patterns = value if isinstance(value, list) else [value]
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise InputError(
                f"{where}: [datasets] {name} must be a path, directory, glob or brace pattern "
                f"(a string), got {value!r}."
            )
        files: set[Path] = set()
        for pattern in patterns:
            found, unmatched = resolve_dataset_pattern(pattern, base_dir, check_files=check_files)
            if check_files and unmatched:
                raise InputError(
                    f"{where}: [datasets] {name} = {pattern!r} matches no file for "
                    f"{unmatched} (relative paths are taken from {base_dir})."
                )
            files.update(found)
        datasets[name] = sorted(files)
    return datasets


def load_split_toml(path: str | Path, *, check_files: bool = True) -> SplitConfig:
    """Read a STATE/cell-load split TOML file.

    ``[datasets]`` is optional here (without it the data's dataset names are used);
    when present, every dataset named in the other sections must be declared in it.

    Args:
        path: The TOML file.
        check_files: Fail when a ``[datasets]`` pattern matches no file.

    Returns:
        The parsed config; ``source`` is the file path.

    Raises:
        InputError: On a missing file, a syntax error, an unknown section, a malformed
            key or value, an undeclared dataset or a pattern that matches nothing.
    """
    path = Path(path)
    where = f"Split config {path}"
    if not path.is_file():
        raise InputError(f"{where} does not exist (or is not a file).")
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _syntax_error(path, text, error) from None
    for section in raw:
        if section not in SECTIONS:
            raise InputError(
                f"{where}: unknown section [{section}]; allowed: {', '.join(SECTIONS)}."
                f"{suggest(section, SECTIONS)}"
            )
    training, zeroshot, fewshot = parse_sections(
        raw.get("training"), raw.get("zeroshot"), raw.get("fewshot"), source=str(path)
    )
    declared = _as_table(raw.get("datasets"), "datasets", where)
    if declared:
        used = [*training, *(ds for ds, _ in zeroshot), *(ds for ds, _ in fewshot)]
        for dataset in dict.fromkeys(used):
            if dataset not in declared:
                raise InputError(
                    f"{where}: dataset {dataset!r} is used but not declared in [datasets] "
                    f"(declared: {sorted(declared)}).{suggest(dataset, declared)}"
                )
    datasets = _resolve_datasets(declared, path.resolve().parent, where, check_files)
    return SplitConfig(datasets, training, zeroshot, fewshot, source=str(path))


def split_config_from_spec(spec: SplitSpec, *, name: str, project_root: Path) -> SplitConfig:
    """Build the config of one named split from its params.

    Args:
        spec: A TOML path (relative to ``project_root``) or the sections inline.
        name: The split's name (used in ``source`` and in error messages).
        project_root: Directory a relative ``spec.toml`` is resolved against.

    Returns:
        The parsed config; ``source`` is the TOML path or ``"params:<name>"``.

    Raises:
        InputError: If both a TOML file and inline sections are given, or the config is
            invalid.
    """
    if spec.toml is not None:
        inline = [s for s in ("training", "zeroshot", "fewshot") if getattr(spec, s)]
        if inline:
            raise InputError(
                f"Split {name!r}: give either a TOML file (toml: {spec.toml}) or inline "
                f"sections, not both; set {inline} to {{}} or toml to null."
            )
        path = Path(spec.toml)
        return load_split_toml(path if path.is_absolute() else Path(project_root) / path)
    fewshot = {key: {"val": e.val, "test": e.test} for key, e in spec.fewshot.items()}
    source = f"params:{name}"
    training, zeroshot, few = parse_sections(
        dict(spec.training), dict(spec.zeroshot), fewshot, source=source
    )
    return SplitConfig({}, training, zeroshot, few, source=source)
