"""Merging several screens into one AnnData (shared genes only)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import anndata as ad
import pandas as pd

from perturbflow.exceptions import InputError
from perturbflow.preprocess.validation import detect_expression_kind

logger = logging.getLogger(__name__)

#: Separator between the dataset name and the original cell name in merged obs names.
NAME_SEP = ":"


def _dataset_labels(adata: ad.AnnData, name: str, dataset_col: str) -> pd.Series:
    """Each cell's dataset: the file's own ``dataset_col`` when it has one, else ``name``.

    A file may hold several datasets (the shipped PerturBench file holds norman19 and
    mcfaline23): its column is kept, and cells with a missing value get ``name``.
    """
    labels = pd.Series(name, index=adata.obs_names, dtype=object)
    if dataset_col in adata.obs.columns:
        own = adata.obs[dataset_col].astype(object)
        labels = own.where(own.notna(), name).astype(str)
    return labels


def merge_datasets(adatas: Mapping[str, ad.AnnData], *, dataset_col: str = "dataset") -> ad.AnnData:
    """Concatenate screens on their shared genes.

    * Genes: inner join, in the order of the first dataset's ``var_names``; ``var``
      annotations identical in all inputs are kept. An empty intersection fails; one
      smaller than half the smallest input is logged as a warning.
    * ``obs[dataset_col]`` is set to the mapping key, unless an input already has that
      column: a file may hold several datasets, and its own labels are then kept. A
      dataset name that occurs in two inputs fails (its cells would be ambiguous).
    * Cell names are always ``"<dataset>:<original name>"``: a cell's name then does not
      depend on which other files it was merged with, and the original is recoverable
      by splitting on the first ``":"``. Duplicates inside one input are made unique by
      anndata (``-1``, ``-2`` suffixes) with a warning.
    * Every input must hold the same kind of values (:func:`detect_expression_kind`):
      merging raw counts with log1p data fails, naming which dataset is which.

    Args:
        adatas: Datasets keyed by name (e.g. the file stem); not modified.
        dataset_col: ``obs`` column recording each cell's dataset.

    Returns:
        The merged AnnData (a new object).

    Raises:
        InputError: No input, an empty or duplicated gene set, no shared gene, a
            dataset name found in two inputs, or different kinds of values.
    """
    if not adatas:
        raise InputError("merge_datasets: no dataset to merge.")
    items = [(str(name), adata) for name, adata in adatas.items()]
    _check_inputs(items)
    labels = {name: _dataset_labels(adata, name, dataset_col) for name, adata in items}
    owner = _dataset_owners(labels, dataset_col)
    kind = _common_kind(items)
    genes = _shared_genes(items)
    merged = _concat(items, genes, labels, dataset_col)
    merged.obs[dataset_col] = pd.Categorical(
        merged.obs[dataset_col].astype(str), categories=list(owner)
    )
    logger.info(
        "Merged %d datasets (%s): %d cells x %d shared genes (%s values)",
        len(items),
        ", ".join(f"{name}: {adata.n_obs} cells" for name, adata in items),
        merged.n_obs,
        merged.n_vars,
        kind,
    )
    return merged


def _check_inputs(items: list[tuple[str, ad.AnnData]]) -> None:
    """Fail on an empty input or one whose gene names repeat."""
    for name, adata in items:
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise InputError(f"{name}: the AnnData is empty ({adata.n_obs} x {adata.n_vars}).")
        if not adata.var_names.is_unique:
            dup = adata.var_names[adata.var_names.duplicated()].unique()
            raise InputError(
                f"{name}: {len(dup)} gene names occur more than once (e.g. {list(dup[:5])}); "
                "make them unique before merging."
            )


def _dataset_owners(labels: dict[str, pd.Series], dataset_col: str) -> dict[str, str]:
    """The input each dataset name comes from (in order); fails when two inputs share one."""
    owner: dict[str, str] = {}
    for name, values in labels.items():
        for dataset in values.unique():
            if dataset in owner:
                raise InputError(
                    f"merge_datasets: dataset {dataset!r} occurs in both {owner[dataset]!r} "
                    f"and {name!r} (obs column {dataset_col!r} or the file name); give each "
                    "input distinct dataset names so every cell's dataset is unambiguous."
                )
            owner[dataset] = name
    return owner


def _common_kind(items: list[tuple[str, ad.AnnData]]) -> str:
    """The kind of values every input holds (:func:`detect_expression_kind`); fails on a mix."""
    names = [name for name, _ in items]
    kinds = {name: detect_expression_kind(adata.X) for name, adata in items}
    if len(set(kinds.values())) > 1:
        by_kind = {k: [n for n in names if kinds[n] == k] for k in sorted(set(kinds.values()))}
        raise InputError(
            f"merge_datasets: the datasets hold different kinds of values: {by_kind}. "
            "Merge raw counts with raw counts (then normalise once) or log1p with log1p."
        )
    return kinds[names[0]]


def _shared_genes(items: list[tuple[str, ad.AnnData]]) -> list[str]:
    """The genes of every input, in the first one's order; warns when few are shared."""
    sizes = {name: int(adata.n_vars) for name, adata in items}
    shared = set.intersection(*(set(adata.var_names) for _, adata in items))
    genes = [g for g in items[0][1].var_names if g in shared]
    if not genes:
        raise InputError(
            f"merge_datasets: the datasets share no gene (genes per dataset: {sizes}); check "
            "that they use the same gene identifiers (symbols vs Ensembl IDs)."
        )
    if len(genes) < 0.5 * min(sizes.values()):
        logger.warning(
            "Only %d genes are shared (genes per dataset: %s): less than half of the smallest "
            "dataset; check the gene identifiers",
            len(genes),
            sizes,
        )
    return genes


def _concat(
    items: list[tuple[str, ad.AnnData]],
    genes: list[str],
    labels: dict[str, pd.Series],
    dataset_col: str,
) -> ad.AnnData:
    """Concatenate the inputs' shared genes: cells named ``"<key>:<name>"``, datasets set."""
    parts = []
    for name, adata in items:
        part = adata[:, genes].copy()
        if not part.obs_names.is_unique:
            logger.warning("%s: duplicated cell names made unique before merging", name)
            part.obs_names_make_unique()
        part.obs_names = name + NAME_SEP + part.obs_names.astype(str)
        part.obs[dataset_col] = labels[name].to_numpy()
        parts.append(part)
    return ad.concat(parts, join="inner", merge="same", uns_merge="same")
