"""``python -m perturbflow`` / ``perturbflow``.

* ``perturbflow train ...`` and ``perturbflow infer ...`` run the library outside a Kedro
  session (:mod:`perturbflow.commands`: multi-GPU training, inference on any AnnData);
* ``perturbflow run [OPTIONS]`` is ``kedro run [OPTIONS]`` for this project;
* ``perturbflow [OPTIONS]`` with no command is also ``kedro run`` (the convention of a
  packaged Kedro project, so ``python -m perturbflow --pipelines training`` works);
* ``perturbflow --help`` lists the commands, then the options of ``run``.
"""

from __future__ import annotations

import sys
from pathlib import Path

OVERVIEW = """\
perturbflow: single-cell perturbation prediction (Kedro project and library).

Commands:
  perturbflow train --split NAME [...]   train the ST model of one named split outside Kedro
                                         (multi-GPU / multi-node through Lightning DDP)
  perturbflow infer --run DIR [...]      predict perturbations of any AnnData from its
                                         control cells
  perturbflow run [OPTIONS]              kedro run for this project (also: perturbflow
                                         [OPTIONS] with no command)
  perturbflow train --help, perturbflow infer --help: their options.

Options of run:
"""


def main(*args: str, **kwargs: object) -> object:
    """Dispatch to :mod:`perturbflow.commands` or to the project's ``kedro run``."""
    from perturbflow.commands import COMMANDS, run_cli

    argv = list(args) if args else sys.argv[1:]
    if argv and argv[0] in COMMANDS:
        sys.exit(run_cli(argv))
    if argv and argv[0] == "run":
        argv = argv[1:]
    elif argv and argv[0] in ("-h", "--help"):
        print(OVERVIEW)
    elif argv and not argv[0].startswith("-"):
        print(
            f"perturbflow: unknown command {argv[0]!r}; expected one of "
            f"{[*COMMANDS, 'run']} or kedro run options (perturbflow --help).",
            file=sys.stderr,
        )
        sys.exit(2)
    from kedro.framework.cli.utils import find_run_command
    from kedro.framework.project import configure_project

    package_name = Path(__file__).parent.name
    configure_project(package_name)
    interactive = hasattr(sys, "ps1")
    kwargs["standalone_mode"] = not interactive
    run = find_run_command(package_name)
    return run(argv, **kwargs)


if __name__ == "__main__":
    main()
