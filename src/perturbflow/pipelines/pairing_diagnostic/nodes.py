"""Nodes of the ``pairing_diagnostic`` pipeline: thin wrappers over :mod:`perturbflow.loading`.

A diagnostic: training pairs controls inside its DataModule (the same strategies, by
``loader.pairing``), so nothing downstream reads these outputs. They let a user look at the
pairing a strategy makes (fallbacks, pairs per context and batch) and the vocabulary the
screen has, before training on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from perturbflow.design import read_design
from perturbflow.loading.categories import CategoryMap
from perturbflow.loading.encodings import PerturbationEncoder
from perturbflow.loading.h5reader import h5ad_identity
from perturbflow.loading.pairing import get_pairing_strategy
from perturbflow.loading.pairing_cache import PairingCache
from perturbflow.loading.pairing_design import PairingDesign
from perturbflow.loading.pairing_table import pairing_index_frame
from perturbflow.params import ColumnsParams, LoaderParams

logger = logging.getLogger(__name__)


def _identity(adata: ad.AnnData) -> dict:
    """The file's identity when backed, else a digest of the in-memory cell names."""
    if adata.isbacked and adata.filename is not None:
        return h5ad_identity(adata.filename)
    names = "\n".join(map(str, adata.obs_names)).encode()
    return {"in_memory": True, "obs_names_sha256": hashlib.sha256(names).hexdigest()}


def pair_controls(
    preprocessed_adata: ad.AnnData,
    columns: ColumnsParams,
    loader: LoaderParams,
    pairing_cache: Path,
) -> tuple[pd.DataFrame, dict]:
    """Pair every perturbed cell with a control (or a mean group) of its context.

    The pairing is cached in the ``pairing_cache`` folder by a content hash of what it reads
    (obs codes, strategy and options, seed, the file's identity): a changed file, obs,
    option or seed never reuses a stale pairing.

    Args:
        preprocessed_adata: The preprocessed screen (backed: only ``obs`` is read).
        columns: Where the design lives in ``obs``.
        loader: The pairing strategy, its options and the seed.
        pairing_cache: The cache folder (a catalog work folder).

    Returns:
        The pairing index (one row per perturbed cell) and its statistics.
    """
    design = PairingDesign.from_obs(preprocessed_adata.obs, columns)
    strategy = get_pairing_strategy(loader.pairing, **dict(loader.pairing_kwargs))
    cache = PairingCache(pairing_cache)
    rows = np.flatnonzero(~design.is_control)
    identity = _identity(preprocessed_adata)
    key = cache.key(design, strategy, seed=loader.seed, identity=identity, pert_rows=rows)
    result = cache.get_or_pair(
        design, strategy, seed=loader.seed, identity=identity, pert_rows=rows
    )
    table = pairing_index_frame(design, rows, result, preprocessed_adata.obs_names)
    stats = {
        "strategy": strategy.name,
        "options": dict(loader.pairing_kwargs),
        "seed": loader.seed,
        "cache_key": key,
        **result.stats,
    }
    logger.info(
        "pairing %s: %d perturbed cells, %d fallbacks",
        strategy.name,
        len(table),
        int(table["fallback"].sum()),
    )
    return table, stats


def build_encodings(
    preprocessed_adata: ad.AnnData, columns: ColumnsParams
) -> tuple[dict, dict, dict]:
    """Perturbation encoder, cell-type map and batch map of the screen, as JSON documents.

    Computed once here so that training, inference and users share one vocabulary; no
    pickles (STATE saves these maps as ``.pkl``/``.pt``, which run code when loaded).

    Args:
        preprocessed_adata: The preprocessed screen (backed: only ``obs`` is read).
        columns: Where the design lives in ``obs``.

    Returns:
        The perturbation encoder (components of every perturbation label, combinations as
        sums), the cell-type map and the batch map (empty without a batch column: Kedro
        saves no ``None``).
    """
    obs = preprocessed_adata.obs
    design = read_design(obs, columns)
    encoder = PerturbationEncoder.fit(design["perturbation"], control_label=columns.control_label)
    celltypes = CategoryMap.fit(design["celltype"], name="cell types")
    batches = (
        CategoryMap.fit(obs[columns.batch_col].astype(str), name="batches")
        if columns.batch_col
        else None
    )
    return (
        json.loads(encoder.to_json()),
        json.loads(celltypes.to_json()),
        {"index": {}} if batches is None else json.loads(batches.to_json()),
    )
