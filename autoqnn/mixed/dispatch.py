"""`autoqnn.search`: automatic per-layer precision under a budget.

One entry point for the strategies, each in its own module with its own validated config:

* "sensitivity" (`autoqnn.mixed.sensitivity.SensitivityConfig`): retrain-free, no labels;
* "dnas", "qpl", "dnas+qpl" (`autoqnn.mixed.dnas_qpl.DifferentiableConfig`): trained;
* "rl" (`autoqnn.mixed.rl.RLConfig`): HAQ-style reinforcement learning.

`strategy` is a name, with the strategy's settings as keywords, or a config object. A
keyword the chosen strategy does not use raises an error naming the strategies that use it.

Example:
    >>> import keras, numpy as np, autoqnn
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(32, activation="relu", name="a")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(4, name="b")(x))
    >>> data = np.random.default_rng(0).random((64, 8), dtype=np.float32)
    >>> options = autoqnn.SensitivityConfig(candidate_bits=(2, 4, 8), metric="mse")
    >>> result = autoqnn.search(model, calibration_data=data, strategy=options,
    ...                         weight_bits_budget=3.0, verbose=0)
    >>> result.average_weight_bits <= 3.0
    True
    >>> autoqnn.search(model, calibration_data=data, weight_bits_budget=3.0, epochs=2)
    Traceback (most recent call last):
    ...
    ValueError: epochs= is not a setting of strategy 'sensitivity'; it is used by 'dnas', ...
"""

from __future__ import annotations

import dataclasses
import warnings

from autoqnn import defaults
from autoqnn.mixed import dnas_qpl, rl, sensitivity
from autoqnn.mixed.budget import Budget
from autoqnn.mixed.dnas_qpl import DifferentiableConfig
from autoqnn.mixed.result import SearchResult
from autoqnn.mixed.rl import RLConfig
from autoqnn.mixed.sensitivity import SensitivityConfig
from autoqnn.rewrite.qag import check_model

STRATEGIES = ("sensitivity", "dnas", "qpl", "dnas+qpl", "rl")
_CONFIGS = {"sensitivity": SensitivityConfig, "dnas": DifferentiableConfig,
            "qpl": DifferentiableConfig, "dnas+qpl": DifferentiableConfig, "rl": RLConfig}
_RUNS = {SensitivityConfig: sensitivity.run, DifferentiableConfig: dnas_qpl.run,
         RLConfig: rl.run}
_RENAMED = {"rl_config": "agent", "rl_finetune_steps": "finetune_steps"}
"""Old keyword names still accepted (with a DeprecationWarning)."""


def _fields(cls) -> set:
    return {f.name for f in dataclasses.fields(cls)} - {"strategy"}


def strategy_config(strategy: str, settings: dict):
    """The validated config of `strategy` from keyword `settings`; a keyword it does not
    use raises a ValueError naming the strategies that do."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)} or a strategy config, "
                         f"got {strategy!r}")
    settings = dict(settings)
    for old, new in _RENAMED.items():
        if old in settings:
            warnings.warn(f"{old}= is deprecated; use {new}=", DeprecationWarning, stacklevel=3)
            settings[new] = settings.pop(old)
    cls = _CONFIGS[strategy]
    for name in settings:
        if name not in _fields(cls):
            users = [s for s in STRATEGIES if name in _fields(_CONFIGS[s])]
            where = "it is used by " + ", ".join(repr(s) for s in users) if users else \
                "no strategy uses it"
            raise ValueError(f"{name}= is not a setting of strategy {strategy!r}; {where}")
    if cls is DifferentiableConfig:
        settings["strategy"] = strategy
    return cls(**settings)


def search(model, train_data=None, val_data=None, *, strategy="sensitivity",
           calibration_data=None, weight_bits_budget: float | None = None,
           size_budget_bytes: float | None = None, memory_budget_bytes: float | None = None,
           latency_budget_ms: float | None = None, config: dict | None = None,
           checkpoint_dir=None, verbose: int = defaults.VERBOSE,
           **settings) -> SearchResult:
    """Searches per-layer weight bits (and, for a memory budget, activation bits).

    Args:
        model: the trained float Keras model (not changed).
        train_data: labelled `(x, y)` training data ("dnas", "qpl", "dnas+qpl"; "rl"
            fine-tunes on it); its inputs calibrate when `calibration_data` is not given.
        val_data: labelled validation data of the trained strategies and "rl" (default:
            the last 10 % of a labelled `train_data`); "sensitivity" refuses it.
        strategy: a name in `STRATEGIES` (its settings as keywords) or a config object
            (`SensitivityConfig`, `DifferentiableConfig`, `RLConfig`).
        calibration_data: inputs (no labels needed), e.g. a few hundred images.
        weight_bits_budget: parameter-weighted average weight bits to stay under.
        size_budget_bytes: model size (as the report counts it; with
            `target="litert"`, the bytes of the `.tflite` file) to stay under.
        memory_budget_bytes: largest quantized activation tensor (batch 1) to stay
            under; activation bits are lowered through `candidate_activation_bits`.
        latency_budget_ms: LiteRT latency of the `.tflite` file on this machine (batch 1)
            to stay under; strategy "sensitivity" with `target="litert"` only.
        config: per-layer overrides (`quantize`'s); the layers they select are pinned:
            kept as configured, out of the search, in the budget.
        checkpoint_dir: keep the strategy's checkpoints there, in a folder keyed by the
            model, the data and every setting: the same call resumes or returns its
            result, another setting starts fresh beside it.
        verbose: 1 shows progress (probes, epochs, episodes).
        **settings: the strategy's settings (the fields of its config), e.g.
            `candidate_bits`, `scheme`, `ptq`, `metric`, `target` ("sensitivity":
            `target="litert"` searches the `.tflite` file, `autoqnn.mixed.target`); `epochs`,
            `candidates`, `finetune_epochs` (the differentiable ones); `episodes`,
            `agent`, `executor` ("rl").

    Returns:
        A `SearchResult` (`result.model` is quantized and calibrated; also
        `result.model.autoqnn_search`).

    Raises:
        ValueError: unknown strategy, a setting the strategy does not use, no budget, a
            budget no policy meets (the message states the achievable minimum), no data,
            bad bits.
    """
    check_model(model)
    budget = Budget(weight_bits_budget, size_budget_bytes, memory_budget_bytes,
                    latency_budget_ms)
    if isinstance(strategy, str):
        options = strategy_config(strategy, settings)
    elif type(strategy) in _RUNS:
        if settings:
            raise ValueError(f"{sorted(settings)} given beside strategy={strategy!r}: set "
                             "them in the config")
        options = strategy
    else:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)} or a strategy config, "
                         f"got {strategy!r}")
    if latency_budget_ms is not None and not isinstance(options, SensitivityConfig):
        raise ValueError(f"latency_budget_ms={latency_budget_ms!r} is searched by strategy "
                         "'sensitivity' with target='litert' only")
    return _RUNS[type(options)](model, train_data, val_data, options=options, budget=budget,
                                calibration_data=calibration_data, config=config,
                                checkpoint_dir=checkpoint_dir, verbose=verbose)
