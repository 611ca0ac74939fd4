"""Kedro project settings (https://docs.kedro.org/en/stable/kedro_project_setup/settings.html)."""

import warnings

from kedro.config import OmegaConfigLoader

from perturbflow.error_report import ErrorReportHooks
from perturbflow.hooks import ConsoleLoggingHooks

# Kedro 1.7 itself calls OmegaConf's deprecated register_new_resolver(); the warning is
# not about this project and buries the run's own log, so it is silenced here only.
warnings.filterwarnings(
    "ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning
)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (conf/test, conf/local) overrides single keys of a params group
    # instead of replacing the whole group; the typed params then still see every key.
    "merge_strategy": {"parameters": "soft"},
}

# Plain log lines off a terminal and Lightning's lines once (perturbflow.logs); errors a user
# can fix (bad input, a stopped run) as one short block, not a traceback (error_report).
HOOKS = (ConsoleLoggingHooks(), ErrorReportHooks())
