"""perturbflow: reproducible single-cell perturbation-response prediction with Kedro."""

__version__ = "0.1.0"
