"""Quantization configs: validated dataclasses and per-layer overrides.

`QuantizationConfig` holds the model-wide defaults; `overrides` maps a layer
selector to the fields that change for the layers it selects. A selector is a
layer class (or its name, e.g. "Conv2D"), a regex matched against the whole
layer name, or an exact layer name; later kinds win (class < regex < name).
An override of `None` or `{"quantize": False}` keeps the layer float.

Example:
    >>> from autoqnn.config import QuantizationConfig
    >>> cfg = QuantizationConfig(scheme="pot", weight_bits=4,
    ...                          overrides={"dense_.*": {"weight_bits": 8}})
    >>> cfg.for_layer("dense_1", "Dense").weight_bits
    8
    >>> cfg.for_layer("conv2d", "Conv2D").weight_bits
    4
"""

from __future__ import annotations

import dataclasses
import re
import warnings

import keras

from autoqnn import defaults
from autoqnn.layers.quantizer import Quantizer
from autoqnn.schemes import GRANULARITIES, get_scheme, list_schemes
from autoqnn.schemes.base import scheme_class

LAYER_FIELDS = (
    "quantize",
    "scheme",
    "weight_bits",
    "activation_bits",
    "activation_scheme",
    "granularity",
    "scheme_options",
    "activation_options",
    "weight_quantizer",
    "activation_quantizer",
    "attention_activations",
)


def field_defaults(cls) -> dict:
    """`{field: its default}` of a dataclass (factories called)."""
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING
            else f.default for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """The resolved quantization settings of one layer.

    Args:
        quantize: False keeps the layer float.
        scheme: weight scheme name (see `autoqnn.list_schemes("weight")`).
        weight_bits: bits of the weights; None: the scheme's own default
            (8 for uniform, 1 for binary, 2 for ternary, ...).
        activation_bits: bits of the layer's output activations (None: float).
        activation_scheme: scheme of the activations ("uniform", "pact", ...).
        granularity: "per_channel" or "per_tensor" for weights.
        scheme_options: extra constructor arguments of the weight scheme.
        activation_options: extra constructor arguments of the activation scheme.
        weight_quantizer: `Quantizer` options of the weights beyond the
            scheme: `{"trainable_bits": True, "bits_range": (2, 8)}` (QPL),
            `{"candidates": [scheme, ...]}` (a DNAS mixture; replaces
            `scheme`), `{"sqnr_weight": 0.1}`.
        activation_quantizer: the same for the output activations, plus
            `{"range_axis": -1}` (per-channel ranges).
        attention_activations: for a MultiHeadAttention (or subclass):
            quantize the projected query, key and value, the scaled query, the
            scores, the attention probabilities and the context at
            `activation_bits`, so the attention core runs in integers. The
            rewrite does so whenever the layer's activations are quantized
            unless an override gives this field explicitly (`False` keeps the
            core float; the projections' inputs are quantized either way).
    """

    quantize: bool = True
    scheme: str = defaults.SCHEME
    weight_bits: int | None = None
    activation_bits: int | None = defaults.ACTIVATION_BITS
    activation_scheme: str = defaults.ACTIVATION_SCHEME
    granularity: str = defaults.GRANULARITY
    scheme_options: dict = dataclasses.field(default_factory=dict)
    activation_options: dict = dataclasses.field(default_factory=dict)
    weight_quantizer: dict = dataclasses.field(default_factory=dict)
    activation_quantizer: dict = dataclasses.field(default_factory=dict)
    attention_activations: bool = False
    _built: list = dataclasses.field(default_factory=list, init=False, repr=False,
                                     compare=False)

    def __post_init__(self):
        if not isinstance(self.quantize, bool):
            raise TypeError(f"quantize must be a bool, got {self.quantize!r}")
        if not isinstance(self.attention_activations, bool):
            raise TypeError(f"attention_activations must be a bool, got "
                            f"{self.attention_activations!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}"
            )
        for field in ("scheme_options", "activation_options", "weight_quantizer",
                      "activation_quantizer"):
            if not isinstance(getattr(self, field), dict):
                raise TypeError(f"{field} must be a dict, got {getattr(self, field)!r}")
        # Building the quantizers validates names, bits and options; the weight quantizer
        # built here is the one the layer gets (`take_weight_quantizer`), not rebuilt.
        self._built.append(self.weight_quantizer_spec())
        if self.activation_bits is not None:
            self.output_quantizer_spec()

    def weight_scheme(self):
        """The weight `Scheme` these settings describe."""
        return _build_scheme(
            "scheme",
            self.scheme,
            self.weight_bits,
            "weight",
            granularity=self.granularity,
            **self.scheme_options,
        )

    def take_weight_quantizer(self):
        """The weight `Quantizer` of one tensor: the one validation built, handed out once
        (the handler passes it to the layer as it is), then a new one per call (a layer
        with several weight tensors gets one each)."""
        return self._built.pop() if self._built else self.weight_quantizer_spec()

    def weight_quantizer_spec(self):
        """A new weight `Quantizer` (validated) these settings describe."""
        options = dict(self.weight_quantizer)
        scheme = None if "candidates" in options else self.weight_scheme()
        return _quantizer("weight_quantizer", self.weight_quantizer, options, scheme)

    def output_quantizer_spec(self, bits=None):
        """Keyword arguments of the output `ActivationQuantizer`, or None (float)."""
        scheme = self.output_scheme(bits)
        if scheme is None:
            return None
        options = dict(self.activation_quantizer)
        # A per-channel activation scheme (acd) gets one range per channel by default.
        per_channel = scheme.needs_range and scheme.granularity == "per_channel"
        range_axis = options.pop("range_axis", -1 if per_channel else None)
        if range_axis not in (None, -1):
            raise ValueError(f"activation_quantizer range_axis must be None or -1, got "
                             f"{range_axis!r}")
        quantizer = _quantizer("activation_quantizer", self.activation_quantizer, options, scheme)
        return {"quantizer": quantizer.get_config(), "range_axis": range_axis}

    def output_scheme(self, bits=None):
        """The activation `Scheme` (per-tensor), or None when activations stay float."""
        bits = self.activation_bits if bits is None else bits
        if bits is None:
            return None
        options = dict(self.activation_options)
        if self.activation_scheme == "uniform":
            options.setdefault("symmetric", False)
        return _build_scheme(
            "activation_scheme", self.activation_scheme, bits, "activation", **options
        )

    def replace(self, **changes) -> LayerConfig:
        return dataclasses.replace(self, **changes)


def _quantizer(argument, given, options, scheme):
    """A `Quantizer` from the `Quantizer` options of a config field (`given`, for messages):
    a mixture when they name candidates, else `scheme` with those options."""
    try:
        if "candidates" in options:
            return Quantizer(**options)
        return Quantizer(scheme=scheme, **options)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{argument}={given!r}: {err}") from None


def _build_scheme(argument, name, bits, kind, **options):
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a scheme name, got {name!r}")
    valid = list_schemes(kind)
    if name not in valid:
        raise ValueError(f"{argument} must be one of {valid}, got {name!r}")
    bits_arg = "weight_bits" if kind == "weight" else "activation_bits"
    try:
        return get_scheme(name, bits=bits, **options)
    except TypeError as err:
        if "bits" in str(err):
            raise TypeError(f"{bits_arg}: {err}") from None
        raise TypeError(f"{argument}={name!r}: invalid options {options}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{bits_arg if 'bits' in str(err) else argument}: {err}") from None


@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
    """Model-wide quantization settings.

    Args:
        scheme, weight_bits, activation_bits, activation_scheme, granularity,
            scheme_options, activation_options: defaults of every layer
            (see `LayerConfig`).
        input_bits: bits of the model-input quantizers (default:
            `activation_bits`); e.g. 8 with 2-bit activations elsewhere.
        fold_batchnorm: fold BatchNormalization into the preceding
            Conv/Dense/Depthwise layer before quantizing its weights (what
            the TFLite converter does, so exported weights stay on the grid).
        overrides: {selector: dict of LayerConfig fields, or None for float}.
    """

    scheme: str = defaults.SCHEME
    weight_bits: int | None = None
    activation_bits: int | None = defaults.ACTIVATION_BITS
    activation_scheme: str = defaults.ACTIVATION_SCHEME
    granularity: str = defaults.GRANULARITY
    scheme_options: dict = dataclasses.field(default_factory=dict)
    activation_options: dict = dataclasses.field(default_factory=dict)
    input_bits: int | None = None
    fold_batchnorm: bool = defaults.FOLD_BATCHNORM
    overrides: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        base = self.default_layer_config()  # validates the defaults
        if self.input_bits is not None and self.activation_bits is not None:
            base.output_scheme(self.input_bits)
        if not isinstance(self.fold_batchnorm, bool):
            raise TypeError(f"fold_batchnorm must be a bool, got {self.fold_batchnorm!r}")
        if not isinstance(self.overrides, dict):
            raise TypeError(f"config must be a dict of layer selectors, got {self.overrides!r}")
        for selector, value in self.overrides.items():
            if not isinstance(selector, (str, type)):
                raise TypeError(
                    f"config keys must be layer names, regexes or layer classes, got {selector!r}"
                )
            if isinstance(selector, str):
                try:
                    re.compile(selector)
                except re.error as err:
                    raise ValueError(
                        f"config key {selector!r} is not a valid regex: {err}"
                    ) from None
            if value is None or value is False:
                continue
            if not isinstance(value, dict):
                raise TypeError(f"config[{selector!r}] must be a dict or None, got {value!r}")
            unknown = set(value) - set(LAYER_FIELDS)
            if unknown:
                raise ValueError(
                    f"config[{selector!r}] has unknown keys {sorted(unknown)}; "
                    f"valid: {list(LAYER_FIELDS)}"
                )
            try:
                base.replace(**_implied_bits(base, value))
            except (TypeError, ValueError) as err:
                raise type(err)(f"config[{selector!r}]: {err}") from None

    @property
    def effective_input_bits(self):
        return self.activation_bits if self.input_bits is None else self.input_bits

    def default_layer_config(self) -> LayerConfig:
        return LayerConfig(
            scheme=self.scheme,
            weight_bits=self.weight_bits,
            activation_bits=self.activation_bits,
            activation_scheme=self.activation_scheme,
            granularity=self.granularity,
            scheme_options=dict(self.scheme_options),
            activation_options=dict(self.activation_options),
        )

    def matching_selectors(self, layer_name: str, layer_class, layer_path: str | None = None
                           ) -> list:
        """Selectors that apply to a layer, lowest priority first.

        A name selector matches the layer's path in nested models
        ("inner/conv") or its bare name ("conv"); a regex matches either.
        """
        class_name = layer_class if isinstance(layer_class, str) else layer_class.__name__
        path = layer_name if layer_path is None else layer_path
        by_class, by_regex, by_name = [], [], []
        for selector in self.overrides:
            if isinstance(selector, type):
                if not isinstance(layer_class, str) and issubclass(layer_class, selector):
                    by_class.append(selector)
            elif selector in (layer_name, path):
                by_name.append(selector)
            elif selector == class_name:
                by_class.append(selector)
            elif re.fullmatch(selector, path) or re.fullmatch(selector, layer_name):
                by_regex.append(selector)
        return by_class + by_regex + by_name

    def unmatched_selectors(self, model) -> list:
        """The override selectors that select no layer of `model` (nested models and the
        sublayers of composite layers included, by name and by "outer/inner" path).

        Example:
            >>> import keras
            >>> inputs = keras.Input((4,))
            >>> model = keras.Model(inputs, keras.layers.Dense(2, name="head")(inputs))
            >>> QuantizationConfig(overrides={"head": None, "conv2d_1": None,
            ...                               "dense_.*": None}).unmatched_selectors(model)
            ['conv2d_1', 'dense_.*']
        """
        layers = list(_layer_paths(model, ""))
        return [s for s in self.overrides
                if not any(s in self.matching_selectors(name, cls, path)
                           for name, cls, path in layers)]

    def warn_unmatched(self, model) -> list:
        """Warns (one `UserWarning`) about the selectors `unmatched_selectors` finds and
        returns them; the warning lists the model's layer names to choose from."""
        unmatched = self.unmatched_selectors(model)
        if unmatched:
            names = [path for _, _, path in _layer_paths(model, "")]
            shown = ", ".join(names[:12]) + (f", ... ({len(names)} layers)"
                                             if len(names) > 12 else "")
            labels = ", ".join(repr(s) if isinstance(s, str) else s.__name__
                               for s in unmatched)
            warnings.warn(f"config: {labels} match(es) no layer of model {model.name!r}, so "
                          f"nothing changes for them; its layers: {shown}", UserWarning,
                          stacklevel=3)
        return unmatched

    def for_layer(self, layer_name: str, layer_class, layer_path: str | None = None,
                  base: LayerConfig | None = None) -> LayerConfig:
        """The resolved `LayerConfig` of one layer (`layer_path`: its path in nested models).

        `base` (default: the model-wide defaults) is what the overrides apply to: a
        sublayer of a composite layer starts from its parent's resolved config.
        """
        config = self.default_layer_config() if base is None else base
        for selector in self.matching_selectors(layer_name, layer_class, layer_path):
            value = self.overrides[selector]
            if value is None or value is False:
                config = config.replace(quantize=False)
            else:  # a settings dict of a later (more specific) selector re-enables the layer
                config = config.replace(**{"quantize": True, **_implied_bits(config, value)})
        return config


def _layer_paths(layer, prefix):
    """(name, class, path) of every layer under `layer` (nested models, composite
    layers' sublayers), the path joined by "/"."""
    children = getattr(layer, "layers", None)
    if children is None:
        children = [v for v in vars(layer).values() if isinstance(v, keras.layers.Layer)]
    for child in children:
        path = f"{prefix}{child.name}"
        yield child.name, type(child), path
        yield from _layer_paths(child, path + "/")


def _implied_bits(config: LayerConfig, override: dict) -> dict:
    """An override that switches scheme without giving bits keeps the inherited bits
    when the new scheme accepts them, else takes the new scheme's default
    (`{"scheme": "ternary"}` under `weight_bits=4` means 2-bit ternary)."""
    if "scheme" not in override or "weight_bits" in override or config.weight_bits is None:
        return override
    scheme_cls = scheme_class(override["scheme"]) if isinstance(override["scheme"], str) else None
    if scheme_cls is not None and not scheme_cls.min_bits <= config.weight_bits <= \
            scheme_cls.max_bits:
        return {**override, "weight_bits": None}
    return override

