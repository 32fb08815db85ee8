"""`PTQConfig`: the post-training quantization recipe, validated on construction.

A PTQ config names every choice of a uniform-grid post-training quantization:
how activation ranges are calibrated (and on how many samples), the grid
(symmetric, asymmetric, symmetric with power-of-two scale), per-tensor or
per-channel weights, the weight clipping, the weight rounding (nearest, or
learned with AdaRound), bias correction, the bit widths and which layer
kinds stay at higher precision. `autoqnn.quantize(model,
calibration_data=..., ptq=PTQConfig(...))` applies it; `autoqnn.tune_ptq`
searches over a space of them.

Example:
    >>> from autoqnn.ptq.config import PTQConfig
    >>> cfg = PTQConfig(weight_bits=4, calibration_method="kl", keep_layers="first+last")
    >>> cfg.keep_layers
    ('first', 'last')
    >>> cfg.to_dict()["keep_layers"]
    'first+last'
    >>> PTQConfig(calibration_method="median")
    Traceback (most recent call last):
    ...
    ValueError: calibration_method must be one of ['kl', 'max', 'mse', 'percentile'], got 'median'
"""

from __future__ import annotations

import dataclasses
import warnings

from autoqnn import defaults
from autoqnn.ptq.calibrate import list_calibration_methods

GRIDS = ("symmetric", "asymmetric", "symmetric_pot", "symmetric_weights")
"""Grid variants: zero point 0; min/max with a zero point; zero point 0 and a power-of-two
step; symmetric weights with asymmetric activations (TFLite's int8 scheme, `quantize`'s
default: exported without requantizing)."""
GRANULARITIES = ("per_tensor", "per_channel")
WEIGHT_CLIPPINGS = ("max", "mse")
ROUNDINGS = ("nearest", "adaround")
"""Weight rounding: to the nearest level, or learned per layer (`autoqnn.ptq.adaround`)."""
DEFAULT_ADAROUND_ITERATIONS = 500
"""Adam steps per layer of AdaRound (seconds per layer on a CPU)."""
RENAMED = {"calibration": "calibration_method", "scheme": "grid"}
"""Old field names still accepted (with a DeprecationWarning) by `PTQConfig(...)`,
`PTQConfig.from_dict` and search spaces."""
LAYER_KINDS = ("first", "last", "depthwise", "pointwise", "conv", "dense")
"""Layer kinds `keep_layers` can name (see `autoqnn.ptq.apply.select_layers`)."""
BITS = range(2, 17)


def _check_bits(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value not in BITS:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an int in [2, 16]{extra}, got {value!r}")


def _choice(name, value, options):
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(options)}, got {value!r}")


def parse_keep_layers(value) -> tuple[str, ...]:
    """Normalises `keep_layers`: "first+last", ("last", "first"), "none" -> sorted tuple.

    Raises:
        ValueError: an unknown kind; the message lists the valid ones.
    """
    if value is None or value == "" or value == "none":
        return ()
    if isinstance(value, str):
        parts = value.split("+")
    elif isinstance(value, (list, tuple, set, frozenset)):
        parts = list(value)
    else:
        raise ValueError(
            f"keep_layers must be a '+'-joined string or a tuple of {list(LAYER_KINDS)}, "
            f"got {value!r}"
        )
    for part in parts:
        if part not in LAYER_KINDS:
            raise ValueError(
                f"keep_layers must name kinds in {list(LAYER_KINDS)}, got {part!r} in {value!r}"
            )
    return tuple(sorted(set(parts), key=LAYER_KINDS.index))


@dataclasses.dataclass(frozen=True, init=False)
class PTQConfig:
    """A post-training quantization recipe (uniform integer grids).

    Args:
        weight_bits: bits of the weights, 2..16.
        activation_bits: bits of the activations, 2..16, or None (float).
        calibration_method: activation range observer: "max", "percentile", "kl"
            (entropy) or "mse", or any method added with `register_observer` (the
            name `quantize` uses; `calibration=` is its deprecated alias).
        calibration_samples: calibrate on at most this many samples (None: all).
        grid: "symmetric", "asymmetric" or "symmetric_pot" (symmetric with a
            power-of-two step), for weights and activations, or "symmetric_weights"
            (symmetric weights, asymmetric activations: TFLite's int8 scheme; asymmetric
            weights do not export to TFLite exactly), on the uniform scheme
            (`scheme=` is its deprecated alias: `quantize`'s `scheme` names a scheme).
        granularity: "per_channel" or "per_tensor" weights.
        weight_clipping: "max" (range of the weights) or "mse" (per-channel
            clip ratio minimising the weight quantization error).
        rounding: "nearest" or "adaround": learn, per layer, whether each
            weight rounds down or up so that the layer's outputs on the
            calibration data change least (`autoqnn.ptq.adaround`; needs
            calibration data; seconds per layer).
        adaround_iterations: Adam steps per layer of "adaround" (default 500).
        bias_correction: subtract the mean output error that weight
            quantization causes from each layer's bias (uses calibration data;
            with "adaround", done by it for the layers it rounds).
        keep_layers: layer kinds kept at `keep_bits`: any of "first", "last",
            "depthwise", "pointwise", "conv", "dense", as a tuple or a
            "+"-joined string ("none" or "" for none).
        keep_bits: bits of the kept layers (weights and outputs), or None to
            keep them float.
        percentile: the percentile used by the "percentile" observer.
    """

    weight_bits: int = 8
    activation_bits: int | None = defaults.ACTIVATION_BITS
    calibration_method: str = defaults.CALIBRATION_METHOD
    calibration_samples: int | None = defaults.PTQ_CALIBRATION_SAMPLES
    grid: str = "asymmetric"
    granularity: str = defaults.GRANULARITY
    weight_clipping: str = "max"
    rounding: str = "nearest"
    adaround_iterations: int = DEFAULT_ADAROUND_ITERATIONS
    bias_correction: bool = False
    keep_layers: tuple = ()
    keep_bits: int | None = 8
    percentile: float = 99.99

    def __init__(self, weight_bits: int = 8, activation_bits: int | None = defaults.ACTIVATION_BITS,
                 calibration_method: str = defaults.CALIBRATION_METHOD,
                 calibration_samples: int | None = defaults.PTQ_CALIBRATION_SAMPLES,
                 grid: str = "asymmetric", granularity: str = defaults.GRANULARITY,
                 weight_clipping: str = "max", rounding: str = "nearest",
                 adaround_iterations: int = DEFAULT_ADAROUND_ITERATIONS,
                 bias_correction: bool = False, keep_layers: tuple = (),
                 keep_bits: int | None = 8, percentile: float = 99.99, **renamed):
        values = {"weight_bits": weight_bits, "activation_bits": activation_bits,
                  "calibration_method": calibration_method,
                  "calibration_samples": calibration_samples, "grid": grid,
                  "granularity": granularity, "weight_clipping": weight_clipping,
                  "rounding": rounding, "adaround_iterations": adaround_iterations,
                  "bias_correction": bias_correction, "keep_layers": keep_layers,
                  "keep_bits": keep_bits, "percentile": percentile}
        for old, value in renamed.items():
            if old not in RENAMED:
                raise TypeError(f"PTQConfig got an unexpected keyword argument {old!r}")
            warnings.warn(f"PTQConfig {old}= is deprecated; use {RENAMED[old]}=",
                          DeprecationWarning, stacklevel=2)
            values[RENAMED[old]] = value
        for name, value in values.items():
            object.__setattr__(self, name, value)
        self.__post_init__()

    def __post_init__(self):
        _check_bits("weight_bits", self.weight_bits)
        _check_bits("activation_bits", self.activation_bits, allow_none=True)
        _check_bits("keep_bits", self.keep_bits, allow_none=True)
        _choice("calibration_method", self.calibration_method, list_calibration_methods())
        samples = self.calibration_samples
        if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)
                                    or samples < 1):
            raise ValueError(f"calibration_samples must be a positive int or None, got {samples!r}")
        _choice("grid", self.grid, GRIDS)
        _choice("granularity", self.granularity, GRANULARITIES)
        _choice("weight_clipping", self.weight_clipping, WEIGHT_CLIPPINGS)
        _choice("rounding", self.rounding, ROUNDINGS)
        iterations = self.adaround_iterations
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"adaround_iterations must be a positive int, got {iterations!r}")
        if not isinstance(self.bias_correction, bool):
            raise ValueError(f"bias_correction must be a bool, got {self.bias_correction!r}")
        object.__setattr__(self, "keep_layers", parse_keep_layers(self.keep_layers))
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) or \
                not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be a number in (50, 100], got {self.percentile!r}")

    @property
    def scheme_options(self) -> dict:
        """Options of the "uniform" weight scheme for this grid variant."""
        return {
            "symmetric": self.grid != "asymmetric",
            "power_of_two_scale": self.grid == "symmetric_pot",
        }

    @property
    def activation_scheme_options(self) -> dict:
        """Options of the "uniform" activation scheme for this grid variant."""
        return {
            "symmetric": self.grid not in ("asymmetric", "symmetric_weights"),
            "power_of_two_scale": self.grid == "symmetric_pot",
        }

    def to_dict(self) -> dict:
        """Plain-JSON form (keep_layers as a "+"-joined string, "none" if empty)."""
        out = dataclasses.asdict(self)
        out["keep_layers"] = "+".join(self.keep_layers) or "none"
        return out

    @classmethod
    def from_dict(cls, values: dict) -> PTQConfig:
        """Inverse of `to_dict`; unknown keys raise a ValueError naming them."""
        if isinstance(values, cls):
            return values
        if not isinstance(values, dict):
            raise ValueError(f"ptq must be a PTQConfig or a dict, got {values!r}")
        old = [k for k in values if k in RENAMED]
        if old:
            warnings.warn(f"PTQConfig fields {old} are deprecated names; use "
                          f"{[RENAMED[k] for k in old]}", DeprecationWarning, stacklevel=2)
        values = {RENAMED.get(k, k): v for k, v in values.items()}
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown PTQConfig fields {sorted(unknown)}; valid: "
                f"{[f.name for f in dataclasses.fields(cls)]}"
            )
        return cls(**values)

    def replace(self, **changes) -> PTQConfig:
        return dataclasses.replace(self, **changes)
