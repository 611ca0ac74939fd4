"""The State Transition (ST) model, laid out as in lightning-hydra-template.

* ``components/``: the network and what it is built from (``network``: the transformer over
  cell sentences; ``inputs``: the perturbation encoder; ``losses``; ``lora``; ``dose``;
  ``prior``: the baseline response the network departs from);
* ``st_module.py``: the LightningModule (losses, validation pearson_delta, optimiser);
* ``training/``: ``train_st`` and ``finetune_st`` over one fit loop (``fit_loop``), the
  trainer (``trainer``: checkpoints, logger, precision), stopping and resuming (``fit``),
  atomic checkpoints, the progress display;
* ``runs/``: the run folder a training writes and inference reads (``run_dir``), LoRA
  adapters (``adapter``);
* ``inference/``: predictions from control cells on a split (``predict``), on any AnnData
  (``infer``: ``perturbflow infer``), per plate (``plates``), the genes in and out
  (``gene_space``), and whether predicted cells look like cells (``quality``).

No module here imports Kedro or :mod:`perturbflow.evaluation`.
"""
