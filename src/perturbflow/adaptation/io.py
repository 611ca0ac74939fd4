"""Reading the adaptation's inputs: source files, control cells, perturbation lists.

Seed 003's script read the target's controls through the function that returns
*embeddings* and then encoded them a second time. Here the two are separate and named
for what they return: :func:`control_expression` gives control cells **in the model's
input space** (log1p expression of the run's genes, matched by name; counts refused, as
``perturbflow infer`` does), :func:`source_embeddings` gives ``basal_encoder`` outputs.

Files are opened backed and only the selected control rows are read into memory (the
script densified whole files). Several source files are a list or one glob pattern; a
pattern that matches nothing, a missing file, and a file without control cells are
errors that name them, raised before any encoding.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.adaptation.shift import embed
from perturbflow.exceptions import InputError
from perturbflow.loading._messages import listed
from perturbflow.models.inference.gene_space import aligned_matrix
from perturbflow.models.runs.run_dir import TrainedRun

logger = logging.getLogger(__name__)

PathSpec = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def resolve_files(spec: PathSpec, *, what: str = "source") -> list[Path]:
    """Expand a file list or glob pattern(s) into existing files, in a stable order.

    Args:
        spec: One path or glob pattern, or a list of them (``*``, ``?``, ``[...]``;
            shell braces ``{a,b}`` are not expanded: give a list instead).
        what: How to name the files in messages.

    Raises:
        InputError: Nothing given, braces, a pattern that matches nothing (named), or a
            file that does not exist.
    """
    entries = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    if not entries:
        raise InputError(f"No {what} file given.")
    out: list[Path] = []
    for entry in map(str, entries):
        if "{" in entry and "}" in entry:
            raise InputError(
                f"{what} file {entry!r}: brace expansion is not supported; list the files, "
                "or use a glob pattern (*, ?, [...])."
            )
        if glob.has_magic(entry):
            matches = sorted(glob.glob(entry))
            if not matches:
                raise InputError(f"The {what} pattern {entry!r} matches no file.")
            out += [Path(m) for m in matches]
        elif not Path(entry).is_file():
            raise InputError(f"{what} file {entry!r} does not exist.")
        else:
            out.append(Path(entry))
    return list(dict.fromkeys(out))


def _read_obs(path: Path) -> tuple[ad.AnnData, pd.DataFrame]:
    try:
        adata = ad.read_h5ad(path, backed="r")
    except (OSError, KeyError) as err:
        raise InputError(f"{path}: not a readable h5ad file ({err}).") from err
    return adata, adata.obs


def select_cells(
    obs: pd.DataFrame,
    *,
    source: str,
    pert_col: str,
    control_label: str | None,
    celltype_col: str | None,
    celltypes: Sequence[str] | None,
) -> np.ndarray:
    """Row indices (sorted) of the cells of ``celltypes`` (all without), controls only if asked.

    Raises:
        InputError: A missing column, or no cell selected (naming the file, the label and
            the cell types, and listing what the file has).
    """
    needed = [pert_col] + ([celltype_col] if celltypes is not None and celltype_col else [])
    absent = [c for c in needed if c not in obs.columns]
    if absent:
        raise InputError(f"{source}: obs lacks column(s) {absent} (obs has {list(obs.columns)}).")
    mask = np.ones(len(obs), dtype=bool)
    if control_label is not None:
        mask &= (obs[pert_col].astype(str) == control_label).to_numpy()
    if celltypes is not None:
        if not celltype_col:
            raise InputError(
                f"{source}: cell types {list(celltypes)} given but no cell-type column."
            )
        mask &= obs[celltype_col].astype(str).isin(list(celltypes)).to_numpy()
    if not mask.any():
        what = f"{pert_col} == {control_label!r}" if control_label is not None else "cells"
        where = f" in {celltype_col} {list(celltypes)}" if celltypes is not None else ""
        has = ""
        if celltypes is not None and celltype_col:
            has = f" ({celltype_col} has {listed(sorted(obs[celltype_col].astype(str).unique()))})"
        raise InputError(f"{source}: no {what}{where}: the control set is empty{has}.")
    return np.flatnonzero(mask)


@dataclass(frozen=True)
class TargetCells:
    """The target domain's cells, in memory, and the file they were read from.

    Attributes:
        cells: The target context's cells (controls and any perturbed cells).
        file: Their h5ad file (named in messages and in the shift's record).
    """

    cells: ad.AnnData
    file: str


def read_cells(path: str | os.PathLike[str], rows: np.ndarray) -> ad.AnnData:
    """The given rows of an h5ad, read from a backed file into memory."""
    adata, _ = _read_obs(Path(path))
    try:
        return adata[np.sort(rows)].to_memory()
    finally:
        adata.file.close()


def control_expression(adata: ad.AnnData, run: TrainedRun, *, source: str) -> np.ndarray:
    """Control cells' expression in the model's input space (the run's genes, by name).

    This is what the shift moves and what the basal encoder reads: log1p expression,
    never embeddings, never counts (``aligned_matrix`` refuses counts).
    """
    return aligned_matrix(adata, run, source=source)


@dataclass(frozen=True)
class SourceEmbeddings:
    """Basal-encoder embeddings of the source domain's control cells.

    Attributes:
        embeddings: Cells x embedding width (float32).
        files: Per file its path and number of control cells used.
    """

    embeddings: np.ndarray
    files: list[dict[str, object]]


def source_embeddings(
    spec: PathSpec,
    run: TrainedRun,
    *,
    pert_col: str,
    control_label: str,
    celltype_col: str | None = None,
    celltypes: Sequence[str] | None = None,
    max_cells_per_file: int | None = None,
    chunk_size: int = 4096,
    seed: int = 0,
    device: str = "cpu",
) -> SourceEmbeddings:
    """``basal_encoder(control cells)`` of every source file, computed in chunks.

    Every file is checked (exists, has the columns, has control cells of ``celltypes``)
    before any cell is encoded.

    Args:
        spec: Source h5ad files: a list or a glob pattern (:func:`resolve_files`).
        run: The trained run whose basal encoder embeds the cells.
        pert_col: Perturbation column; ``control_label`` marks the control cells.
        control_label: Value of ``pert_col`` of the control cells.
        celltype_col: Cell-type column (for ``celltypes``).
        celltypes: Keep only the control cells of these cell types (``None``: all).
        max_cells_per_file: Seeded subsample of each file's control cells.
        chunk_size: Cells per forward pass.
        seed: Seed of the subsample.
        device: Torch device of the encoder.

    Raises:
        InputError: See :func:`resolve_files` and :func:`select_cells`; genes that the
            model needs missing from a file; raw counts.
    """
    files = resolve_files(spec, what="source")
    rng = np.random.default_rng(seed)
    plan = []
    for path in files:
        adata, obs = _read_obs(path)
        try:
            rows = select_cells(
                obs,
                source=str(path),
                pert_col=pert_col,
                control_label=control_label,
                celltype_col=celltype_col,
                celltypes=celltypes,
            )
        finally:
            adata.file.close()
        if max_cells_per_file is not None and len(rows) > max_cells_per_file:
            rows = np.sort(rng.choice(rows, size=max_cells_per_file, replace=False))
        plan.append((path, rows))
    encoder = run.net.basal_encoder.to(device)
    blocks, info = [], []
    for path, rows in plan:
        X = control_expression(read_cells(path, rows), run, source=str(path))
        blocks.append(embed(encoder, X, chunk_size=chunk_size, device=device))
        info.append({"file": str(path), "n_controls": int(len(rows))})
        logger.info("Source %s: %d control cells embedded.", path, len(rows))
    return SourceEmbeddings(np.concatenate(blocks), info)


def read_perturbation_list(
    path: str | os.PathLike[str], *, column: str, control_label: str
) -> list[str]:
    """Perturbation labels from a CSV column, an h5ad obs column or a text file.

    Order of first appearance kept, duplicates and the control label dropped.

    Raises:
        InputError: A missing file or column, or no perturbation left.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Perturbation list {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".h5ad":
        adata, obs = _read_obs(path)
        adata.file.close()
        if column not in obs.columns:
            raise InputError(f"{path}: obs lacks column {column!r} (obs has {list(obs.columns)}).")
        values = obs[column].astype(str).tolist()
    elif suffix in (".csv", ".tsv"):
        frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str)
        if column not in frame.columns:
            raise InputError(f"{path}: no column {column!r} (columns: {list(frame.columns)}).")
        values = frame[column].dropna().astype(str).tolist()
    else:
        values = [v.strip() for v in path.read_text(encoding="utf-8").splitlines()]
    out = [v for v in dict.fromkeys(values) if v and v != control_label]
    if not out:
        raise InputError(f"{path}: no perturbation to predict (only {control_label!r} or empty).")
    return out
