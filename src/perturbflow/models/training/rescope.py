"""Reuse a finished run whose ``prior_scope`` changed to one that trains the same network.

``out_of_context`` and ``informed`` train the network alone and differ only in which keys
are predicted at the prior at inference, so switching between them should not retrain:
:func:`rescoped_run` relabels the finished run instead. A special case beside the run
digest (:func:`perturbflow.models.runs.run_dir.config_digest`), which covers everything a
run learns: changing the digest itself would retrain every existing run once.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from perturbflow.io_utils import atomic_path
from perturbflow.models.components.prior_scope import SCOPES
from perturbflow.models.runs.run_dir import (
    CONFIG,
    SUMMARY,
    WEIGHTS,
    config_digest,
    write_json,
    write_yaml,
)
from perturbflow.models.training.fit_loop import finished_summary

logger = logging.getLogger(__name__)


def rescoped_run(
    run: Path,
    identity: dict[str, Any],
    config: dict[str, Any],
    digest: str,
    sources: pd.DataFrame,
) -> dict[str, Any] | None:
    """A finished run that differs only in a ``prior_scope`` that trains the same network.

    The scopes but ``all`` train the network alone (the prior is fitted on all training
    keys, without cross-fitting, and only decides at inference which keys are predicted at
    it), so a run trained under ``out_of_context`` has the network ``informed`` would
    train, bit for bit. Such a run is reused instead of retrained: its ``config.yaml``,
    ``perturbation_sources.csv`` and ``run.json`` (digest, last) are rewritten for the new
    scope, each atomically, so the folder is what a fresh training would have written and
    a kill between the writes is repaired by the next call. A finetuned run of the old
    base then no longer matches its base's digest (it inherited the old scope) and says so
    when loaded.

    Args:
        run: The run folder.
        identity: The configuration the digest is computed on (no data path).
        config: The configuration to write (``config.yaml``).
        digest: ``identity``'s digest.
        sources: The run's key table with its prior sources under the new scope.

    Returns:
        The updated ``run.json``, or ``None`` when there is no such run.
    """
    scope = identity["training"]["model"].get("prior_scope", "all")
    old = None if scope == "all" else finished_summary(run, WEIGHTS)
    if old is None:
        return None
    for other in SCOPES:
        if other in ("all", scope):
            continue
        alike = copy.deepcopy(identity)
        alike["training"]["model"]["prior_scope"] = other
        if old.get("config_sha256") != config_digest(alike):
            continue
        summary = {**old, "config_sha256": digest}
        if rank_zero_only.rank == 0:
            write_yaml(run / CONFIG, config)
            with atomic_path(run / "perturbation_sources.csv") as tmp:
                sources.to_csv(tmp, index=False)
            write_json(run / SUMMARY, summary)
        logger.info(
            "%s: finished run with prior_scope %r found: the same network as %r (the scope "
            "decides at inference only), reused with its configuration updated.",
            run,
            other,
            scope,
        )
        return summary
    return None
