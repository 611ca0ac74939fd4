"""Search space: dotted paths into a frozen config, checked before the sweep."""

from __future__ import annotations

import optuna
import pytest

from perturbflow.exceptions import InputError
from perturbflow.tuning.params import (
    CategoricalDimension,
    FloatDimension,
    IntDimension,
    TuneParams,
)
from perturbflow.tuning.space import apply, check_space, suggest
from tests.models.support import training_params
from tests.tuning.support import as_dict, tune_params


def test_apply_replaces_nested_fields_and_leaves_the_base_alone():
    base = training_params()
    changed = apply(base, {"optimizer.lr": 0.5, "loss.delta_mse_weight": 2.0, "max_steps": 7})
    assert (changed.optimizer.lr, changed.loss.delta_mse_weight, changed.max_steps) == (
        0.5,
        2.0,
        7,
    )
    assert changed.optimizer.weight_decay == base.optimizer.weight_decay
    assert base.optimizer.lr == 3e-3 and base.max_steps == 150


def test_check_space_names_unknown_paths_and_bad_values():
    base = training_params()
    with pytest.raises(InputError, match="optimizer has no field 'learning_rate'"):
        check_space(base, {"optimizer.learning_rate": FloatDimension("float", 0.1, 1.0, False)})
    with pytest.raises(InputError, match="is a group"):
        check_space(base, {"optimizer": FloatDimension("float", 0.1, 1.0, False)})
    with pytest.raises(InputError, match=r"max_steps: a float range on an integer field"):
        check_space(base, {"max_steps": FloatDimension("float", 2.0, 10.0, False)})
    with pytest.raises(InputError, match=r"max_steps: the value 2.5 is not valid"):
        check_space(base, {"max_steps": CategoricalDimension("categorical", [10, 2.5])})
    with pytest.raises(InputError, match="log scale needs low > 0"):
        check_space(base, {"optimizer.lr": FloatDimension("float", 0.0, 1.0, True)})
    with pytest.raises(InputError, match="'nope' is not valid"):
        check_space(base, {"loss.name": CategoricalDimension("categorical", ["energy", "nope"])})
    check_space(
        base,
        {
            "optimizer.lr": FloatDimension("float", 1e-4, 1e-2, True),
            "max_steps": IntDimension("int", 10, 100, True),
            "loss.name": CategoricalDimension("categorical", ["energy", "mse"]),
        },
    )


def test_suggest_draws_within_the_dimensions_with_their_types():
    space = {
        "optimizer.lr": FloatDimension("float", 1e-4, 1e-2, True),
        "max_steps": IntDimension("int", 10, 100, False),
        "loss.name": CategoricalDimension("categorical", ["energy", "mse"]),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    base = training_params()
    for _ in range(20):
        trial = study.ask()
        values = suggest(trial, space)
        config = apply(base, values)
        assert 1e-4 <= config.optimizer.lr <= 1e-2
        assert isinstance(config.max_steps, int) and 10 <= config.max_steps <= 100
        assert config.loss.name in ("energy", "mse")
        study.tell(trial, 0.0)
    assert {"optimizer.lr", "max_steps", "loss.name"} == set(study.trials[0].params)


def test_yaml_shaped_space_builds_typed_dimensions(tmp_path):
    raw = as_dict(tune_params())
    raw["space"] = {
        "lora.rank": {"type": "categorical", "choices": [4, 8, 16]},
        "optimizer.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    }
    tune = TuneParams(**raw)
    assert tune.space["lora.rank"] == CategoricalDimension("categorical", [4, 8, 16])
    assert isinstance(tune.space["optimizer.lr"], FloatDimension)
    raw["space"] = {"optimizer.lr": {"type": "float", "low": 1e-5, "high": 1e-3}}
    with pytest.raises(ValueError, match="log"):
        TuneParams(**raw)
