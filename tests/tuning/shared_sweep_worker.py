"""One of several sweep workers on one shared study (the PostgreSQL test runs two).

Usage: ``python shared_sweep_worker.py PARAMS.json LOG SECONDS HANG_AT``. Each trial takes
``SECONDS`` and appends ``<pid> <trial number> <params>`` to ``LOG`` when it completes; this
process's ``HANG_AT``-th trial (1-based; 0: none) hangs after drawing its parameters (and
writes ``<pid> <trial number>`` to ``LOG.hanging``), so the test can kill the worker mid-trial.
"""

from __future__ import annotations

import json
import os
import sys
import time

from perturbflow.tuning.space import suggest
from perturbflow.tuning.study import open_study, run_study
from tests.tuning.sweep_worker import read_args, value_of


def main() -> None:
    tune, storage = read_args(sys.argv[1])
    log, seconds, hang_at = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    started = 0

    def objective(trial):
        nonlocal started
        started += 1
        values = suggest(trial, tune.space)
        if started == hang_at:
            with open(log + ".hanging", "w") as handle:  # tells the test which trial hangs
                handle.write(f"{os.getpid()} {trial.number}\n")
            time.sleep(3600)  # killed before it ends
        time.sleep(seconds)
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()} {trial.number} {json.dumps(values, sort_keys=True)}\n")
        return value_of(values)

    run_study(open_study(tune, storage), objective, n_trials=tune.n_trials, timeout=None)


if __name__ == "__main__":
    main()
