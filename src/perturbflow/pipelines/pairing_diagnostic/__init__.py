"""``pairing_diagnostic`` pipeline: the pairing a strategy makes and the screen's vocabulary.

A diagnostic: training pairs controls itself (the same strategies); nothing reads these.
"""

from perturbflow.pipelines.pairing_diagnostic.pipeline import create_pipeline

__all__ = ["create_pipeline"]
