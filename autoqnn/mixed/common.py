"""What the mixed-precision strategies share: the settings of the retrain-free
quantization path (`PTQSettings`, validated on construction) and the model it builds, the
layers a user pins, and the activation-memory budget.

Example:
    >>> from autoqnn.mixed.common import PTQSettings
    >>> PTQSettings(candidate_bits=(8, 2, 4)).candidate_bits
    (2, 4, 8)
    >>> PTQSettings(scheme="binary", candidate_bits=(2, 4))
    Traceback (most recent call last):
    ...
    ValueError: candidate_bits (2, 4) include (2, 4), outside the range [1, 1] of scheme 'binary'
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from autoqnn import defaults
from autoqnn.config import QuantizationConfig, field_defaults
from autoqnn.core import quantize_config
from autoqnn.evaluate import task_loss
from autoqnn.finalize import set_bits
from autoqnn.finetune import finetune
from autoqnn.layers.activation import ActivationQuantizer
from autoqnn.ptq.apply import quantization_config, select_layers
from autoqnn.ptq.calibrate import calibrate
from autoqnn.ptq.config import PTQConfig
from autoqnn.schemes.base import scheme_class
from autoqnn.walk import iter_layers

_QUANTIZE_FIELDS = ("scheme", "granularity", "activation_scheme", "input_bits",
                    "fold_batchnorm", "scheme_options", "activation_options")
_PTQ_DECIDES = ("scheme", "granularity", "scheme_options", "calibration_method")
"""Settings a `ptq` recipe decides (given together with one, they raise)."""


def check_bits_list(name, bits) -> tuple:
    """`bits` as a sorted tuple of distinct positive ints; a ValueError naming `name`."""
    if isinstance(bits, (int, np.integer)) or not hasattr(bits, "__iter__"):
        raise ValueError(f"{name} must be a sequence of ints, got {bits!r}")
    bits = tuple(bits)
    if not bits or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1
                       for b in bits):
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {bits!r}")
    return tuple(sorted({int(b) for b in bits}))


def check_int(name, value, low=1):
    """Raises unless `value` is an int >= `low` (`name` in the message)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        kind = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class PTQSettings:
    """The retrain-free quantization path of the "sensitivity" and "rl" strategies: how
    every candidate model is quantized and calibrated (the `quantize` keywords, or a
    `PTQConfig` recipe), and the bits a layer may take.

    Attributes:
        candidate_bits: weight bits a layer may take (those its scheme accepts).
        candidate_activation_bits: activation bits tried for a memory budget.
        activation_bits: activation bits (None: float activations).
        scheme, granularity, activation_scheme, input_bits, fold_batchnorm,
            scheme_options, activation_options, calibration_method: as `quantize` takes
            them, for the searched model.
        ptq: a `PTQConfig` recipe (calibration, clipping, bias correction) instead of
            `scheme`, `granularity`, `scheme_options` and `calibration_method`; the
            search sets its bits.
        num_samples: calibration images (sensitivities and calibration; None: all).
    """

    candidate_bits: tuple = defaults.CANDIDATE_BITS
    candidate_activation_bits: tuple = defaults.CANDIDATE_ACTIVATION_BITS
    activation_bits: int | None = defaults.ACTIVATION_BITS
    scheme: str = defaults.SCHEME
    granularity: str = defaults.GRANULARITY
    activation_scheme: str = defaults.ACTIVATION_SCHEME
    input_bits: int | None = None
    fold_batchnorm: bool = defaults.FOLD_BATCHNORM
    scheme_options: dict = dataclasses.field(default_factory=dict)
    activation_options: dict = dataclasses.field(default_factory=dict)
    calibration_method: str = defaults.CALIBRATION_METHOD
    ptq: PTQConfig | None = None
    num_samples: int | None = defaults.SEARCH_SAMPLES

    def __post_init__(self):
        bits = check_bits_list("candidate_bits", self.candidate_bits)
        object.__setattr__(self, "candidate_bits", bits)
        object.__setattr__(self, "candidate_activation_bits", check_bits_list(
            "candidate_activation_bits", self.candidate_activation_bits))
        if self.num_samples is not None:
            check_int("num_samples", self.num_samples)
        if self.ptq is not None:
            unset = field_defaults(PTQSettings)
            given = [name for name in _PTQ_DECIDES if getattr(self, name) != unset[name]]
            if given:
                raise ValueError(f"{sorted(given)} conflict with ptq=: the PTQConfig decides "
                                 "the scheme, granularity and calibration")
            object.__setattr__(self, "ptq", PTQConfig.from_dict(self.ptq).replace(
                activation_bits=self.activation_bits))
        scheme = "uniform" if self.ptq is not None else self.scheme
        cls = scheme_class(scheme) if isinstance(scheme, str) else None
        if cls is None:
            raise ValueError(f"scheme must be a weight scheme name, got {scheme!r}")
        outside = [b for b in bits if not cls.min_bits <= b <= cls.max_bits]
        if outside:
            raise ValueError(f"candidate_bits {bits} include {tuple(outside)}, outside the "
                             f"range [{cls.min_bits}, {cls.max_bits}] of scheme {scheme!r}")
        self.quantization_config(model=None, bits=bits[-1], overrides={})  # validates

    def quantization_config(self, model, bits: int, overrides: dict) -> QuantizationConfig:
        """The `QuantizationConfig` of the searched model with every searched layer at
        `bits` (`overrides`: per-layer settings on top)."""
        quantize = {name: getattr(self, name) for name in _QUANTIZE_FIELDS}
        if self.ptq is None:
            return QuantizationConfig(weight_bits=bits, activation_bits=self.activation_bits,
                                      overrides=overrides, **quantize)
        base = quantization_config(model, self.ptq.replace(weight_bits=bits), overrides) \
            if model is not None else QuantizationConfig(weight_bits=bits)
        return dataclasses.replace(base, activation_scheme=self.activation_scheme,
                                   input_bits=self.input_bits,
                                   fold_batchnorm=self.fold_batchnorm)

    def build(self, model, data, weight_overrides: dict, config: dict | None, bits=None):
        """The quantized, calibrated model: every searched layer at `bits` (default: the
        largest candidate) unless `weight_overrides` says otherwise, the user's `config`
        on top."""
        bits = self.candidate_bits[-1] if bits is None else bits
        overrides = {**weight_overrides, **(config or {})}
        qconfig = self.quantization_config(model, bits, overrides)
        if self.ptq is not None:
            return quantize_config(model, qconfig, data, ptq=self.ptq.replace(weight_bits=bits),
                                   verbose=0)
        return quantize_config(model, qconfig, data, calibration_method=self.calibration_method,
                               calibration_samples=self.num_samples, verbose=0)

    @property
    def observer(self) -> str:
        """The calibration method the built models use."""
        return self.ptq.calibration_method if self.ptq is not None else self.calibration_method

    def to_dict(self) -> dict:
        """The settings as a dict (no deep copy: an executor or loss object stays itself)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["ptq"] = None if self.ptq is None else self.ptq.to_dict()
        return out


def pinned_paths(model, config, ptq=None) -> set:
    """The weighted layers outside the search: those the user's `config` selects and
    `ptq.keep_layers`."""
    pinned = set()
    if config:
        qc = QuantizationConfig(overrides=config)
        pinned = {path for path, layer in iter_layers(model)
                  if layer.weights and qc.matching_selectors(layer.name, type(layer), path)}
    if ptq is not None and ptq.keep_layers:
        pinned |= set(select_layers(model, ptq.keep_layers))
    return pinned


def inputs_of(data):
    """The inputs of `(x, y)` / `(x, y, w)` data, else the data itself."""
    if isinstance(data, tuple) and len(data) in (2, 3):
        return data[0]
    return data


def activation_memory(model) -> dict:
    """`{activation quantizer path: (elements per sample, bits)}`."""
    out = {}
    for path, layer in iter_layers(model):
        if isinstance(layer, ActivationQuantizer) and layer.built:
            shape = layer.input.shape[1:] if len(layer._inbound_nodes) == 1 else None
            if shape is None or None in shape:
                continue
            out[path] = (int(np.prod(shape)), layer.quantizer.scheme.bits)
    return out


def fit_memory(model, budget, candidates, data, method, num_samples, history) -> float:
    """Lowers activation bits until every quantized activation tensor fits `budget` bytes
    (None: no budget); recalibrates what changed. Returns the largest tensor's bytes."""
    tensors = activation_memory(model)
    if not tensors:
        if budget is not None:
            raise ValueError(f"memory_budget_bytes={budget!r}: the model has no quantized "
                             "activation whose size is known")
        return 0.0
    if budget is None:
        return max(n * b / 8 for n, b in tensors.values())
    smallest = max(n * candidates[0] / 8 for n, _ in tensors.values())
    if budget < smallest:
        raise ValueError(f"memory_budget_bytes={budget!r} is below the smallest achievable "
                         f"{smallest:.0f} bytes (the largest activation at "
                         f"{candidates[0]} bits)")
    changes = {}
    for path, (n, bits) in tensors.items():
        if n * bits / 8 > budget:
            fits = [b for b in candidates if n * b / 8 <= budget and b < bits]
            changes[path] = max(fits)
    if changes:
        set_bits(model, changes)
        calibrate(model, data, method=method, num_samples=num_samples)
        history.append({"step": "memory", "activation_bits": changes})
    return max(n * b / 8 for n, b in activation_memory(model).values())


def finetune_stage(final, train, val, model, *, epochs, learning_rate, batch_size, loss,
                   verbose) -> list[dict]:
    """The trained strategies' last stage: `autoqnn.finetune` of the derived model at a
    tenth of the search learning rate, distilled from the float `model`, best validation
    epoch kept. Returns one history record per epoch."""
    start = time.perf_counter()
    tuned = finetune(final, train, epochs=epochs, val_data=val, teacher=model,
                     learning_rate=learning_rate * 0.1, batch_size=batch_size,
                     loss=task_loss(model, loss), verbose=verbose)
    seconds = round((time.perf_counter() - start) / epochs, 2)
    return [{"step": "finetune", "epoch": epoch + 1, "loss": tuned["loss"][epoch],
             "seconds": seconds, "val_accuracy": tuned["val_accuracy"][epoch]}
            for epoch in range(epochs)]
