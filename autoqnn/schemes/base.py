"""The `Scheme` base class and the scheme registry.

A scheme is the rule that maps a float tensor to its quantized values. Schemes
are stateless and serialisable: their constructor arguments (bits, granularity,
options) are their whole config. State that must be learned or calibrated
(scales, clip values, ranges) lives on the Keras layer that uses the scheme:
the scheme creates it with `layer.add_weight` in `build` and receives it back
in `quantize`. So checkpoints and `.keras` files carry it, and a later search
layer (DNAS mixture, learnable bitwidth) can hold several schemes at once.

Example:
    >>> import autoqnn
    >>> scheme = autoqnn.get_scheme("uniform", bits=4)
    >>> scheme.bits, scheme.granularity
    (4, 'per_tensor')
    >>> "ternary" in autoqnn.list_schemes()
    True
"""

from __future__ import annotations

import abc
import math

import keras

GRANULARITIES = ("per_tensor", "per_channel")

_REGISTRY: dict[str, type[Scheme]] = {}


def register_scheme(name: str):
    """Class decorator: registers a scheme under `name` and with Keras saving.

    Args:
        name: the public name used by `get_scheme` and `quantize(scheme=...)`.

    Returns:
        The decorator.
    """

    def decorator(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"scheme name {name!r} is already registered by {_REGISTRY[name]}")
        cls.name = name
        _REGISTRY[name] = cls
        return keras.saving.register_keras_serializable(package="autoqnn")(cls)

    return decorator


def list_schemes(kind: str | None = None) -> list[str]:
    """Names of every registered scheme, sorted.

    Args:
        kind: None for all, "weight" for schemes that quantize weights,
            "activation" for schemes that quantize activations.

    Returns:
        A sorted list of names.
    """
    if kind not in (None, "weight", "activation"):
        raise ValueError(f"kind must be None, 'weight' or 'activation', got {kind!r}")
    names = []
    for name, cls in _REGISTRY.items():
        if kind == "weight" and not cls.supports_weights:
            continue
        if kind == "activation" and not cls.supports_activations:
            continue
        names.append(name)
    return sorted(names)


def scheme_class(name: str) -> type[Scheme] | None:
    """The class registered under `name`, or None."""
    return _REGISTRY.get(name)


def get_scheme(identifier, **kwargs) -> Scheme:
    """Returns a scheme instance from a name, a config dict or an instance.

    Args:
        identifier: a registered name ("uniform", "pot", ...), a dict
            `{"name": ..., **options}` or a `Scheme` instance (returned as is
            when no kwargs are given).
        **kwargs: constructor arguments (bits, granularity, options).

    Returns:
        A `Scheme`.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
        TypeError: an identifier of another type.
    """
    if isinstance(identifier, Scheme):
        if not kwargs:
            return identifier
        config = identifier.get_config()
        config.update(kwargs)
        return type(identifier).from_config(config)
    if isinstance(identifier, dict):
        config = dict(identifier)
        name = config.pop("name", None)
        config.update(kwargs)
        return get_scheme(name, **config)
    if not isinstance(identifier, str):
        raise TypeError(
            f"scheme must be a name, a dict or a Scheme, got {type(identifier).__name__}: "
            f"{identifier!r}"
        )
    if identifier not in _REGISTRY:
        raise ValueError(
            f"scheme must be one of {list_schemes()}, got {identifier!r}"
        )
    return _REGISTRY[identifier](**kwargs)


class Scheme(abc.ABC):
    """Base class of all quantization schemes.

    Subclasses set the class attributes and implement `quantize`; those with
    learned or calibrated parameters also implement `build`.

    Attributes:
        name: registry name (set by `register_scheme`).
        min_bits, max_bits: valid bit range (inclusive).
        default_bits: bits used when none are given.
        supports_weights: can quantize weight tensors.
        supports_activations: can quantize activation tensors.
        needs_range: activation schemes that use an observed `[min, max]`
            range (calibration / moving average) kept by the layer.
        is_uniform: levels are evenly spaced (`uniform_grid` works).
        tensor_bits: `quantize` also takes `bits` as a scalar int tensor, so a
            trainable bitwidth traces two quantizations (its floor and ceiling)
            instead of a switch branch per integer of its range.
    """

    name = "base"
    min_bits = 1
    max_bits = 16
    default_bits = 8
    supports_weights = True
    supports_activations = False
    needs_range = False
    is_uniform = False
    tensor_bits = False

    def __init__(self, bits: int | None = None, granularity: str = "per_tensor"):
        bits = self.default_bits if bits is None else bits
        if isinstance(bits, bool) or not isinstance(bits, (int, float)) or int(bits) != bits:
            raise TypeError(f"bits must be an integer, got {bits!r}")
        bits = int(bits)
        if not self.min_bits <= bits <= self.max_bits:
            raise ValueError(
                f"bits must be in [{self.min_bits}, {self.max_bits}] for scheme "
                f"{self.name!r}, got {bits}"
            )
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.bits = bits
        self.granularity = granularity

    @property
    def per_channel(self) -> bool:
        return self.granularity == "per_channel"

    def channel_axis(self, layer_channel_axis):
        """The layer's channel axis when per-channel, else None (per-tensor)."""
        return layer_channel_axis if self.per_channel else None

    def build(self, layer, name: str, shape, channel_axis, role: str = "weight") -> dict:
        """Creates the scheme's state on `layer` for a tensor of `shape`.

        Args:
            layer: the Keras layer that owns the state (`layer.add_weight`).
            name: prefix for the variable names (e.g. "kernel").
            shape: shape of the tensor to quantize (for activations, without
                the batch axis it is the per-sample shape).
            channel_axis: axis (or axes) of channels in that tensor.
            role: "weight" or "activation" (the layer asking).

        Returns:
            A dict of variables, passed back as `state` to `quantize`.
        """
        del layer, name, shape, channel_axis, role
        return {}

    def initialize(self, state: dict, stats: dict):
        """Sets data-dependent state from statistics of the tensor (no-op by default).

        Called for weights when the quantized layer receives its weights, and
        for activations by calibration (`autoqnn.calibrate`), never inside a
        forward pass.

        Args:
            state: the dict returned by `build`.
            stats: numpy statistics of the tensor, shaped like the state's
                channels (scalars per tensor): "min", "max" (the observed or
                calibrated range) and "mean_abs".
        """
        del state, stats

    def regularization(self, state: dict):
        """A training loss on the scheme's state (e.g. a decay of learned clips), or None.

        The layer adds it to its losses in training (default: none).
        """
        del state
        return None

    def is_initialized(self, state: dict) -> bool:
        """Whether data-dependent state was set (True for schemes without any)."""
        del state
        return True

    def with_bits(self, bits) -> Scheme:
        """A copy of this scheme with other bits (validated)."""
        return get_scheme(self, bits=bits)

    @abc.abstractmethod
    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        """Fake-quantizes `x` (values on the scheme's grid, STE gradient).

        Args:
            x: float tensor.
            state: the dict returned by `build` (may be empty).
            channel_axis: the channel axis of `x` (used when per-channel).
            bits: overrides `self.bits` (a Python int, or a tensor for a
                learnable bitwidth where the scheme supports it).
            training: whether the model is training.

        Returns:
            Tensor like `x`.
        """

    def __call__(self, x, state=None, **kwargs):
        return self.quantize(x, state or {}, **kwargs)

    def num_levels(self, bits: int | None = None) -> int:
        """Upper bound on the number of distinct values per channel."""
        return 2 ** (self.bits if bits is None else bits)

    def storage_bits(self) -> float:
        """Bits needed to store one quantized value (index into the levels)."""
        return float(max(1, math.ceil(math.log2(max(2, self.num_levels())))))

    def get_config(self) -> dict:
        return {"bits": self.bits, "granularity": self.granularity}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))


def serialize_scheme(scheme: Scheme) -> dict:
    """Plain-JSON form of a scheme: `{"name": ..., **config}`."""
    return {"name": scheme.name, **scheme.get_config()}


def deserialize_scheme(config) -> Scheme:
    """Inverse of `serialize_scheme`."""
    return get_scheme(config)
