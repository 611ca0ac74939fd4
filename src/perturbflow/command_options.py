"""The options of ``perturbflow train`` and ``perturbflow infer``, each with its help.

Tables of ``(flag, add_argument keywords)``, read by
:func:`perturbflow.commands.build_parser`: every option says what it is and its default
(tested).
"""

from __future__ import annotations

from typing import Any

INFER_DESCRIPTION = (
    "Predict perturbations of an AnnData from the control cells of each of its contexts. "
    "The output (--output) is cell-eval's form: each context's control cells, then the "
    "predicted cells; it carries every gene of --adata in its order, var['predicted'] "
    "marking the genes the model predicted (the others are those of the control cells "
    "each prediction started from, their mean with --control-mean), so it goes straight "
    "into `cell-eval run -ap OUTPUT -ar ADATA`."
)


Option = tuple[str, dict[str, Any]]

#: The options of ``perturbflow train``: flag and ``add_argument`` keywords.
TRAIN_OPTIONS: list[Option] = [
    ("--split", {"required": True, "help": "named split, a column of --split-table (required)"}),
    ("--env", {"default": "local", "help": "conf environment (default: %(default)s)"}),
    ("--conf", {"default": "conf", "help": "conf directory (default: %(default)s)"}),
    (
        "--params",
        {
            "action": "append",
            "default": [],
            "help": "parameter overrides key=value[,key=value] with dotted keys, e.g. "
            "training.devices=4; repeatable (default: none)",
        },
    ),
    (
        "--adata",
        {
            "default": "data/02_intermediate/preprocessed.h5ad",
            "help": "the preprocessed h5ad (default: %(default)s)",
        },
    ),
    (
        "--split-table",
        {
            "default": "data/03_primary/splits.parquet",
            "help": "the split table, one column per named split (default: %(default)s)",
        },
    ),
    (
        "--genes",
        {
            "default": "data/02_intermediate/hvg_genes.json",
            "help": "the model's genes, read when loader.obsm_key is set (default: %(default)s)",
        },
    ),
    (
        "--run",
        {
            "default": "data/06_models/st_training/<split>",
            "help": "run directory: checkpoints, logs and the model (default: %(default)s, "
            "the training pipeline's work folder, so that `kedro run` resumes or reuses it)",
        },
    ),
]

#: The options of ``perturbflow infer``: flag and ``add_argument`` keywords.
INFER_OPTIONS: list[Option] = [
    (
        "--run",
        {
            "required": True,
            "nargs": "+",
            "help": "a finished run directory, or a finetuned (adapter) run (required); "
            "several runs of a seed ensemble (e.g. st/fewshot st/fewshot.seed1 "
            "st/fewshot.seed2): their predicted cells are averaged",
        },
    ),
    (
        "--base",
        {"default": None, "help": "a finetuned run's base run (default: the path it recorded)"},
    ),
    (
        "--adata",
        {
            "required": True,
            "help": "input h5ad: log1p expression in X, genes by name in var_names, control "
            "cells in every context (required; never overwritten)",
        },
    ),
    ("--pert-col", {"required": True, "help": "obs column of the perturbations (required)"}),
    ("--control", {"required": True, "help": "control label of --pert-col (required)"}),
    ("--celltype-col", {"required": True, "help": "obs column of the cell types (required)"}),
    (
        "--batch-col",
        {
            "default": None,
            "help": "obs column of the batches (plates), for a model with a batch encoder and "
            "for --per-batch (default: none)",
        },
    ),
    (
        "--dataset-col",
        {
            "default": None,
            "help": "obs column of the datasets (default: the run's dataset column when "
            "--adata has it, else every cell in --dataset-name)",
        },
    ),
    (
        "--dataset-name",
        {
            "default": None,
            "help": "dataset of every cell without --dataset-col (default: the run's)",
        },
    ),
    (
        "--perturbations",
        {
            "default": None,
            "help": "perturbations to predict in every context: a text file (one per line), a "
            "CSV (its --pert-col column, else its first) or an h5ad (its --pert-col labels) "
            "(default: every non-control label of --adata)",
        },
    ),
    (
        "--cells-per-perturbation",
        {
            "type": int,
            "default": None,
            "help": "cells predicted per context and perturbation (default: as many as "
            "--adata has real ones, else the context's number of control cells)",
        },
    ),
    (
        "--control-mean",
        {
            "action": "store_true",
            "help": "start from the control mean (per batch) instead of control cells "
            "(default: off)",
        },
    ),
    (
        "--allow-unknown",
        {
            "action": "store_true",
            "help": "predict perturbations the model never trained and has no evidence for as "
            "the average training response (default: off, they are refused)",
        },
    ),
    (
        "--per-batch",
        {
            "action": "store_true",
            "help": "predict each batch (plate) of --batch-col from its own control cells "
            "(default: off)",
        },
    ),
    (
        "--control-offset",
        {
            "choices": ["keep", "subtract"],
            "default": "keep",
            "help": "subtract: remove what the model does to each control sentence as the "
            "control; keep: do not (default: %(default)s)",
        },
    ),
    (
        "--seed",
        {"type": int, "default": 0, "help": "seed of the control sampling (default: %(default)s)"},
    ),
    (
        "--output",
        {
            "required": True,
            "help": "output h5ad (required), in a folder that exists, never --adata itself: "
            "every gene of --adata, var['predicted'] marking the model's, ready for "
            "`cell-eval run`; how each perturbation was encoded goes to OUTPUT with the "
            "suffix .sources.csv",
        },
    ),
]
