"""Per-cell split tables: which cells train, validate, test or are not used.

Labelling rules (precedence low to high: training < zeroshot < fewshot):

* Every cell of a dataset in ``[training]`` is ``train`` (every dataset trains when
  ``[training]`` is empty); cells of other datasets are ``unused``.
* A zero-shot context sends **all** its cells, perturbed and control, to ``val``/``test``:
  nothing of the held-out cell type reaches training. Its control cells are the inputs
  a prediction for that context starts from.
* A few-shot context trains (even when its dataset is not in ``[training]``), except
  the cells of the listed perturbations, which go to ``val``/``test``. Its control cells
  stay ``train``: training needs them, and they are also the inputs of the predictions of
  the held-out perturbations; evaluation selects controls by context, not by split label.
* A context may not be both zero-shot and few-shot (see :class:`SplitConfig`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from perturbflow.design import read_design
from perturbflow.exceptions import InputError, suggest
from perturbflow.params import ColumnsParams, SplitsParams
from perturbflow.splits.config import HELDOUT_LABELS, SplitConfig, split_config_from_spec

SPLIT_LABELS = ("train", "val", "test", "unused")
DESIGN_COLUMNS = ("dataset", "celltype", "perturbation", "is_control")


def _require_complete(obs: pd.DataFrame, name: str | None, role: str) -> None:
    """Fail when the design column ``name`` (``columns.<role>``) has missing values."""
    if name is None:
        return
    missing = int(obs[name].isna().sum())
    if missing:
        raise InputError(f"obs column {name!r} (columns.{role}) has {missing} missing values.")


def design_table(obs: pd.DataFrame, columns: ColumnsParams) -> pd.DataFrame:
    """The design columns of a split table (``dataset``, ``celltype``, ``perturbation``, ...).

    ``is_control`` marks the control cells; a context is the (``dataset``, ``celltype``)
    pair.

    Args:
        obs: Cell metadata (``adata.obs``), one row per cell with unique index.
        columns: Where the design lives in ``obs``.

    Returns:
        A table indexed like ``obs``.

    Raises:
        InputError: If a column is missing or has missing values, the index has duplicates
            or the control label never occurs.
    """
    if not obs.index.is_unique:
        dupes = obs.index[obs.index.duplicated()].unique()[:3].tolist()
        raise InputError(
            f"Cell names (obs index) are not unique, e.g. {dupes}; "
            "call adata.obs_names_make_unique() first."
        )
    design = read_design(obs, columns)
    for role in ("pert_col", "celltype_col", "dataset_col"):
        _require_complete(obs, getattr(columns, role), role)
    pert = design["perturbation"]
    if not design["is_control"].any():
        raise InputError(
            f"Control label {columns.control_label!r} (columns.control_label) never occurs in "
            f"obs column {columns.pert_col!r}.{suggest(columns.control_label, pert.unique())}"
        )
    return pd.DataFrame(
        {
            "dataset": design["dataset"].astype("category"),
            "celltype": design["celltype"].astype("category"),
            "perturbation": pert.astype("category"),
            "is_control": design["is_control"].to_numpy(dtype=bool),
        },
        index=obs.index,
    )


def _check_datasets(design: pd.DataFrame, config: SplitConfig, columns: ColumnsParams) -> None:
    available = sorted(design["dataset"].unique())
    for dataset in sorted(config.referenced_datasets):
        if dataset not in available:
            origin = (
                f"obs column {columns.dataset_col!r}"
                if columns.dataset_col
                else "columns.dataset_name (dataset_col is null: one dataset)"
            )
            raise InputError(
                f"Split config {config.source}: dataset {dataset!r} is not in the data; "
                f"datasets from {origin}: {available}.{suggest(dataset, available)}"
            )


def _check_fewshot_perts(
    design: pd.DataFrame, config: SplitConfig, context: tuple[str, str], control: str
) -> None:
    dataset, celltype = context
    where = f'Split config {config.source}: [fewshot."{dataset}.{celltype}"]'
    in_context = (design["dataset"] == dataset) & (design["celltype"] == celltype)
    here = set(design.loc[in_context, "perturbation"].unique())
    everywhere = set(design["perturbation"].unique())
    for label in HELDOUT_LABELS:
        perts = config.fewshot[context][label]
        if control in perts:
            raise InputError(
                f"{where}.{label} lists the control label {control!r}; controls are never "
                "held out in a few-shot context (they stay in training as prediction inputs)."
            )
        for pert in perts:
            if pert not in everywhere:
                raise InputError(
                    f"{where}.{label}: perturbation {pert!r} is not in the data (names are "
                    f"matched exactly; combinations are single labels such as 'A+B')."
                    f"{suggest(pert, here - {control})}"
                )
        absent = [p for p in perts if p not in here]
        if absent:
            seen = design.loc[design["perturbation"].isin(absent), ["dataset", "celltype"]]
            where_seen = sorted({f"{d}.{c}" for d, c in seen.itertuples(index=False)})
            empty = "would be empty: " if len(absent) == len(perts) else ""
            raise InputError(
                f"{where}.{label} {empty}{absent} have no cells in context "
                f"'{dataset}.{celltype}' (they occur in {where_seen}); the {label} split of "
                "this context needs perturbations measured in it."
            )


def build_split_table(
    obs: pd.DataFrame, config: SplitConfig, columns: ColumnsParams
) -> pd.DataFrame:
    """Label every cell ``train``, ``val``, ``test`` or ``unused`` for one split config.

    Zero-shot contexts send all their cells, controls included, to ``val``/``test``: no
    cell of the held-out context is trained on, and its controls are the inputs of the
    predictions for that context. Few-shot contexts keep their control cells (and their
    unlisted perturbations) in ``train``: training needs them, and they are the inputs of
    the predictions of the held-out perturbations (evaluation selects controls by context,
    not by split label). See the module docstring for the full rules.

    Args:
        obs: Cell metadata (``adata.obs``) with unique index.
        config: The split config.
        columns: Where the design lives in ``obs``; the dataset of a cell is
            ``obs[columns.dataset_col]``, or ``columns.dataset_name`` when that is ``None``.

    Returns:
        A table indexed like ``obs`` with ``dataset``, ``celltype``,
        ``perturbation``, ``is_control`` and a categorical ``split``.

    Raises:
        InputError: On an unknown dataset, cell type or perturbation, a control listed as
            held out, a referenced split that ends up with no perturbed cell, no test
            perturbation, or no training cell at all.
    """
    design = design_table(obs, columns)
    _check_datasets(design, config, columns)
    dataset = design["dataset"].astype(str).to_numpy()
    celltype = design["celltype"].astype(str).to_numpy()
    pert = design["perturbation"]
    perturbed = ~design["is_control"].to_numpy()

    masks: dict[tuple[str, str], np.ndarray] = {}
    for ds, ct in config.contexts:
        mask = (dataset == ds) & (celltype == ct)
        if not mask.any():
            known = sorted(set(celltype[dataset == ds]))
            raise InputError(
                f"Split config {config.source}: cell type {ct!r} of context '{ds}.{ct}' is "
                f"not in dataset {ds!r}; its cell types (obs column {columns.celltype_col!r}): "
                f"{known}.{suggest(ct, known)}"
            )
        masks[ds, ct] = mask
    for context in config.fewshot:
        _check_fewshot_perts(design, config, context, columns.control_label)

    training = list(config.training) or sorted(config.datasets) or sorted(set(dataset))
    split = np.where(np.isin(dataset, training), "train", "unused").astype(object)
    for context, label in config.zeroshot.items():
        split[masks[context]] = label
    for context, entry in config.fewshot.items():
        split[masks[context]] = "train"
        for label in HELDOUT_LABELS:
            split[masks[context] & pert.isin(entry[label]).to_numpy()] = label

    referenced = [(c, label) for c, label in config.zeroshot.items()]
    referenced += [
        (c, label) for c, e in config.fewshot.items() for label in HELDOUT_LABELS if e[label]
    ]
    for (ds, ct), label in referenced:
        if not (masks[ds, ct] & perturbed & (split == label)).any():
            raise InputError(
                f"Split config {config.source}: the {label} split of context '{ds}.{ct}' "
                "has no perturbed cell (only controls); there is nothing to evaluate."
            )
    if not (perturbed & (split == "test")).any():
        raise InputError(
            f"Split config {config.source}: no perturbed cell is labelled test (no [zeroshot] "
            "context is 'test' and no [fewshot] context lists test perturbations), so there "
            "is nothing to predict or evaluate; hold out test perturbations or a test context."
        )
    if not (split == "train").any():
        raise InputError(
            f"Split config {config.source}: no cell is labelled train. Trained datasets: "
            f"{training}; every one of their contexts is held out by [zeroshot]."
        )
    table = design.copy()
    table["split"] = pd.Categorical(split, categories=SPLIT_LABELS)
    return table


def split_table_from_params(
    obs: pd.DataFrame, splits: SplitsParams, columns: ColumnsParams, *, project_root: Path
) -> pd.DataFrame:
    """Build the wide split table of every named split (stored as ``splits.parquet``).

    Args:
        obs: Cell metadata (``adata.obs``) with unique index.
        splits: The named splits (TOML files or inline sections).
        columns: Where the design lives in ``obs``.
        project_root: Directory TOML paths in the params are relative to.

    Returns:
        A table indexed like ``obs`` with ``dataset``, ``context``, ``perturbation``,
        ``is_control`` and one categorical column per named split (train/val/test/unused).

    Raises:
        InputError: If there is no split, a split is named like a design column, or a
            split config is invalid.
    """
    active = splits.active()
    if not active:
        raise InputError(
            "splits.splits names no active split (every entry is empty or null): name at "
            "least one split."
        )
    clash = sorted(set(active) & set(DESIGN_COLUMNS))
    if clash:
        raise InputError(
            f"Split names {clash} clash with the design columns {list(DESIGN_COLUMNS)}; "
            "rename them in the splits params."
        )
    table = design_table(obs, columns)
    for name, spec in active.items():
        config = split_config_from_spec(spec, name=name, project_root=project_root)
        table[name] = build_split_table(obs, config, columns)["split"]
    return table


def summarise_split_table(table: pd.DataFrame, split_names: list[str]) -> pd.DataFrame:
    """Count cells and perturbations per split name x split label x dataset x context.

    Args:
        table: A wide split table (see :func:`split_table_from_params`).
        split_names: The split columns to summarise.

    Returns:
        One row per non-empty combination with ``split_name``, ``split``, ``dataset``,
        ``celltype``, ``n_cells``, ``n_control_cells`` and ``n_perturbations`` (distinct
        non-control perturbations).

    Raises:
        InputError: If a split name is not a column of ``table``.
    """
    frames = []
    columns = ["split_name", "split", "dataset", "celltype"]
    for name in split_names:
        if name not in table.columns:
            raise InputError(
                f"Split {name!r} is not in the split table; it has "
                f"{[c for c in table.columns if c not in DESIGN_COLUMNS]}."
                f"{suggest(name, table.columns)}"
            )
        cells = pd.DataFrame(
            {
                "split_name": name,
                "split": pd.Categorical(table[name].astype(str), categories=SPLIT_LABELS),
                "dataset": table["dataset"].astype(str),
                "celltype": table["celltype"].astype(str),
                "is_control": table["is_control"].astype(bool),
                "perturbed": table["perturbation"].astype(str).where(~table["is_control"]),
            }
        )
        grouped = cells.groupby(columns, observed=True)
        frames.append(
            grouped.agg(
                n_cells=("is_control", "size"),
                n_control_cells=("is_control", "sum"),
                n_perturbations=("perturbed", "nunique"),
            ).reset_index()
        )
    if not frames:
        return pd.DataFrame(columns=[*columns, "n_cells", "n_control_cells", "n_perturbations"])
    summary = pd.concat(frames, ignore_index=True)
    summary["split"] = summary["split"].astype(str)
    return summary.astype({"n_cells": int, "n_control_cells": int, "n_perturbations": int})
