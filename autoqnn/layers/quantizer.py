"""`Quantizer`: the quantizer of one tensor (a weight, or an activation).

A quantizer combines the pure scheme math (`autoqnn.schemes`) with the
tensor's state, which lives in its layer's weights (so checkpoints, `.keras`
files and `fit` carry it), and a bits specification:

* **fixed bits** (default): a Python int, the fast path that lowers to
  TensorFlow's fake-quant op and to TFLite integer kernels. `set_bits`
  changes it in place (same layer objects and variables; compiled
  functions are retraced);
* **trainable bits** (`trainable_bits=True`, QPL): a continuous variable
  `b` (`<name>_bits`) clipped to `bits_range`, reparameterised by linear
  interpolation between the quantizations at the two neighbouring integers,
  `q(b) = (1 - t) * Q_floor(b)(x) + t * Q_floor(b)+1(x)` with
  `t = b - floor(b)`, so `dq/db = Q_floor(b)+1(x) - Q_floor(b)(x)` reaches
  `b` at every point, integers included. Each neighbour is the scheme's
  quantization at that many bits: with the bits as a tensor for the schemes
  that take one (`Scheme.tensor_bits`: uniform, acd, pot, lsq, pact), so the graph holds
  two quantizations whatever the range (at integer `b` the forward is `Q_b(x)`
  up to float rounding: the math path of TensorFlow's fake-quant op); else the
  fixed-bits quantization selected with a switch (one branch runs, bit-exact
  `Q_b(x)` at integer `b`, which `finalize` keeps);
* **a mixture of candidate schemes** (`candidates=[...]`, DNAS):
  `q = sum_i softmax(logits / tau)_i * Q_i(x)` with trainable logits
  (`<name>_logits`) and a non-trainable temperature (`<name>_temperature`)
  that a search anneals. Each candidate keeps its own state
  (`<name>_c<i>_...`). A temperature of 0 is the **hard** mode: the forward
  uses the argmax candidate alone (one-hot weights, what `finalize` keeps)
  and the logits get the gradient of `softmax(logits)` (straight-through),
  so the network weights adapt to the discrete choice before it is fixed.

`autoqnn.finalize` turns trainable bits into rounded ints and a mixture into
its argmax candidate. `expected_bits()` is the differentiable bits a cost
loss uses; `sqnr_weight > 0` adds the quantization-noise term
`w * 10 * log10(sum((x - q)^2) / sum(x^2))` (minus w times the SQNR in dB)
to the layer's losses in training.

Example:
    >>> import numpy as np, keras
    >>> from autoqnn.layers import QuantDense
    >>> layer = QuantDense(2, weight_quantizers={
    ...     "kernel": {"scheme": {"name": "uniform", "bits": 3}, "trainable_bits": True}})
    >>> _ = layer(np.ones((1, 4), "float32"))
    >>> q = layer.weight_quantizers["kernel"]
    >>> round(q.bits, 2), q.bits_range
    (3.0, (2, 8))
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from autoqnn.schemes import Scheme, get_scheme, serialize_scheme

DEFAULT_MAX_TRAINABLE_BITS = 8


def _as_scheme(spec) -> Scheme:
    return get_scheme(spec)


class Quantizer:
    """The quantizer of one tensor (see the module docstring).

    Args:
        scheme: the scheme (name, config dict or `Scheme`); exclusive with
            `candidates`.
        candidates: a list of schemes to mix (DNAS); at least two.
        trainable_bits: learn the bitwidth (QPL).
        bits_range: `(min, max)` integer bounds of a trainable bitwidth
            (default: the schemes' own range, capped at 8 bits).
        initial_bits: starting value of a trainable bitwidth (default: the
            scheme's bits).
        temperature: starting softmax temperature of a mixture.
        sqnr_weight: weight of the SQNR loss (−SQNR in dB) added in training (0: none).
    """

    def __init__(self, scheme=None, *, candidates=None, trainable_bits=False,
                 bits_range=None, initial_bits=None, temperature=1.0, sqnr_weight=0.0):
        if (scheme is None) == (candidates is None):
            raise ValueError("Quantizer needs exactly one of scheme= or candidates=, got "
                             f"scheme={scheme!r}, candidates={candidates!r}")
        if candidates is not None:
            if not isinstance(candidates, (list, tuple)) or len(candidates) < 2:
                raise ValueError(f"candidates must be a list of at least 2 schemes, got "
                                 f"{candidates!r}")
            self.candidates = [_as_scheme(c) for c in candidates]
        else:
            self.candidates = [_as_scheme(scheme)]
        if not isinstance(trainable_bits, bool):
            raise TypeError(f"trainable_bits must be a bool, got {trainable_bits!r}")
        self.trainable_bits = trainable_bits
        low = max(c.min_bits for c in self.candidates)
        high = min(max(c.max_bits for c in self.candidates),
                   max(DEFAULT_MAX_TRAINABLE_BITS, low))
        if bits_range is None:
            bits_range = (low, high)
        if (not isinstance(bits_range, (list, tuple)) or len(bits_range) != 2
                or not all(isinstance(b, (int, np.integer)) for b in bits_range)
                or not bits_range[0] <= bits_range[1]):
            raise ValueError(f"bits_range must be (min, max) integers with min <= max, got "
                             f"{bits_range!r}")
        self.bits_range = (int(bits_range[0]), int(bits_range[1]))
        if trainable_bits:
            for c in self.candidates:
                if self.bits_range[1] < c.min_bits or self.bits_range[0] > c.max_bits:
                    raise ValueError(f"bits_range {self.bits_range} does not meet the range "
                                     f"[{c.min_bits}, {c.max_bits}] of scheme {c.name!r}")
        start = self.candidates[0].bits if initial_bits is None else initial_bits
        if not isinstance(start, (int, float, np.number)) or not np.isfinite(start):
            raise TypeError(f"initial_bits must be a number, got {initial_bits!r}")
        self.initial_bits = float(start)
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        self.temperature = float(temperature)
        if not (isinstance(sqnr_weight, (int, float)) and sqnr_weight >= 0):
            raise ValueError(f"sqnr_weight must be a number >= 0, got {sqnr_weight!r}")
        self.sqnr_weight = float(sqnr_weight)
        self.states = None
        self.claimed = False  # taken by a layer (`from_spec`): a second layer gets a copy
        self.bits_variable = None
        self.logits = None
        self.temperature_variable = None

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec) -> Quantizer:
        """A quantizer from a `Quantizer`, its config dict, or a scheme spec.

        A dict with a "name" key (or a name, or a `Scheme`) is a scheme: the
        quantizer then has fixed bits (the format of earlier versions). An unbuilt
        `Quantizer` no layer has taken yet is used as it is (built once, by its layer).
        """
        if isinstance(spec, Quantizer):
            if spec.states is None and not spec.claimed:  # handed over unbuilt: use it
                spec.claimed = True
                return spec
            return cls.from_config(spec.get_config())
        if isinstance(spec, dict) and "name" not in spec:
            return cls.from_config(spec)
        return cls(scheme=spec)

    def build(self, layer, name: str, shape, channel_axis, role: str = "weight"):
        """Creates the state on `layer` (variables named after `name`)."""
        self.name = name
        self.channel_axis = channel_axis
        if self.is_mixture:
            self.states = [c.build(layer, f"{name}_c{i}", shape, channel_axis, role=role)
                           for i, c in enumerate(self.candidates)]
            self.logits = layer.add_weight(name=f"{name}_logits", shape=(len(self.candidates),),
                                           initializer="zeros", trainable=True)
            self.temperature_variable = layer.add_weight(
                name=f"{name}_temperature", shape=(),
                initializer=keras.initializers.Constant(self.temperature), trainable=False)
        else:
            self.states = [self.candidates[0].build(layer, name, shape, channel_axis, role=role)]
        if self.trainable_bits:
            start = float(np.clip(self.initial_bits, *self.bits_range))
            self.bits_variable = layer.add_weight(
                name=f"{name}_bits", shape=(), initializer=keras.initializers.Constant(start),
                trainable=True)

    # --- properties ---------------------------------------------------------------------

    @property
    def is_mixture(self) -> bool:
        return len(self.candidates) > 1

    @property
    def is_final(self) -> bool:
        """One scheme with fixed bits: what export and the report expect."""
        return not self.is_mixture and not self.trainable_bits

    @property
    def scheme(self) -> Scheme:
        """The scheme (a mixture's current argmax; trainable bits rounded)."""
        if self.is_mixture:
            chosen = self.candidates[self.chosen_index()]
        else:
            chosen = self.candidates[0]
        if self.trainable_bits and self.bits_variable is not None:
            return chosen.with_bits(self._rounded_bits(chosen))
        return chosen

    @property
    def state(self) -> dict:
        """The state dict of `scheme` (the argmax candidate for a mixture)."""
        if self.states is None:
            return {}
        return self.states[self.chosen_index() if self.is_mixture else 0]

    @property
    def bits(self):
        """Fixed bits (int), or the current trainable value (float, read eagerly)."""
        if self.trainable_bits and self.bits_variable is not None:
            return float(ops.convert_to_numpy(self.bits_variable))
        return self.scheme.bits

    @property
    def variables(self) -> list:
        """Every variable this quantizer created or holds (state, bits, logits, temperature)."""
        out = [v for state in self.states or [] for v in state.values() if hasattr(v, "assign")]
        out += [v for v in (self.bits_variable, self.logits, self.temperature_variable)
                if v is not None]
        return out

    def chosen_index(self) -> int:
        if not self.is_mixture or self.logits is None:
            return 0
        return int(np.argmax(ops.convert_to_numpy(self.logits)))

    def mixture_weights(self):
        """Softmax of the logits at the current temperature (a tensor); at temperature 0
        the argmax one-hot forward with the gradient of `softmax(logits)`."""
        tau = self.temperature_variable
        hard_mode = ops.less_equal(tau, 0.0)
        soft = ops.softmax(self.logits / ops.where(hard_mode, 1.0, tau))
        hard = ops.one_hot(ops.argmax(self.logits), len(self.candidates), dtype=soft.dtype)
        straight_through = soft + ops.stop_gradient(hard - soft)
        return ops.where(hard_mode, straight_through, soft)

    def _bounds(self, scheme):
        return max(self.bits_range[0], scheme.min_bits), min(self.bits_range[1], scheme.max_bits)

    def _rounded_bits(self, scheme) -> int:
        low, high = self._bounds(scheme)
        value = float(ops.convert_to_numpy(self.bits_variable))
        return int(np.clip(math.floor(value + 0.5), low, high))

    def expected_bits(self):
        """Differentiable bits per element: the trainable value and/or the mixture average."""
        def bits_of(scheme):
            if self.trainable_bits:
                low, high = self._bounds(scheme)
                return ops.clip(self.bits_variable, float(low), float(high))
            return ops.convert_to_tensor(float(scheme.storage_bits()))

        if self.is_mixture:
            weights = self.mixture_weights()
            return sum(weights[i] * bits_of(c) for i, c in enumerate(self.candidates))
        return bits_of(self.candidates[0])

    # --- forward ------------------------------------------------------------------------

    def __call__(self, x, training=False):
        if self.states is None:
            raise ValueError("Quantizer is not built; its layer builds it")
        if not self.is_mixture:
            return self._quantize_one(0, x, training)
        weights = self.mixture_weights()
        out = None
        for i in range(len(self.candidates)):
            term = weights[i] * self._quantize_one(i, x, training)
            out = term if out is None else out + term
        return out

    def _quantize_one(self, i, x, training):
        scheme, state = self.candidates[i], self.states[i]

        def at_bits(value, bits):
            return scheme.quantize(value, state, channel_axis=self.channel_axis, bits=bits,
                                   training=training)

        if not self.trainable_bits:
            return at_bits(x, None)
        low, high = self._bounds(scheme)
        if low == high:
            return at_bits(x, low)
        b = ops.clip(ops.cast(self.bits_variable, x.dtype), float(low), float(high))
        lower = ops.minimum(ops.floor(ops.stop_gradient(b)), float(high - 1))
        frac = b - lower
        if scheme.tensor_bits:  # two quantizations in the graph, whatever the range
            k = ops.cast(lower, "int32")
            q0, q1 = at_bits(x, k), at_bits(x, k + 1)
            return q0 + frac * (q1 - q0)
        index = ops.cast(lower, "int32") - low
        # One static-bits quantization per neighbour (a switch runs one branch), so at
        # an integer b the forward is bit-exact the fixed-bits one (frac * (q1 - q0) = 0).
        q0 = ops.switch(index, [lambda v, k=k: at_bits(v, k) for k in range(low, high)], x)
        q1 = ops.switch(index, [lambda v, k=k: at_bits(v, k) for k in range(low + 1, high + 1)],
                        x)
        return q0 + frac * (q1 - q0)

    def noise_loss(self, x, q):
        """`sqnr_weight * 10 * log10(sum((x - q)^2) / sum(x^2))`: minus the weighted SQNR
        in dB (a relative floor of 1e-8 on the noise keeps it finite)."""
        signal = ops.sum(ops.square(ops.stop_gradient(x))) + 1e-12
        noise = ops.sum(ops.square(x - q)) + 1e-8 * signal
        return self.sqnr_weight * (10.0 / math.log(10.0)) * ops.log(noise / signal)

    def regularization_loss(self):
        """The schemes' own training losses on their state (e.g. ACD's clipping-value
        decay), mixture-weighted; None when no candidate has one."""
        terms = []
        for i, (scheme, state) in enumerate(zip(self.candidates, self.states or [])):
            term = scheme.regularization(state)
            if term is not None:
                terms.append(term * self.mixture_weights()[i] if self.is_mixture else term)
        return sum(terms[1:], terms[0]) if terms else None

    # --- data-dependent state -----------------------------------------------------------

    def initialize(self, stats: dict):
        """Initialises every candidate's data-dependent state (see `Scheme.initialize`)."""
        for scheme, state in zip(self.candidates, self.states or []):
            scheme.initialize(state, stats)

    def is_initialized(self) -> bool:
        return all(s.is_initialized(st) for s, st in zip(self.candidates, self.states or []))

    # --- changes ------------------------------------------------------------------------

    def set_bits(self, bits):
        """Sets the bits in place (a fixed quantizer's scheme, or the trainable value)."""
        if self.is_mixture and not self.trainable_bits:
            raise ValueError("set_bits on a scheme mixture needs trainable_bits=True, or "
                             "finalize the model first (autoqnn.finalize)")
        if self.trainable_bits:
            if not self.bits_range[0] <= bits <= self.bits_range[1]:
                raise ValueError(f"bits must be in {list(self.bits_range)} (the trainable "
                                 f"range), got {bits!r}")
            self.bits_variable.assign(float(bits))
            return
        self.candidates = [self.candidates[0].with_bits(bits)]

    def finalized(self):
        """`(config, renames)`: the fixed one-scheme quantizer this one collapses to,
        and `{old variable name: new name}` for the state kept (others are dropped)."""
        index = self.chosen_index()
        scheme = self.scheme
        renames = {}
        for variable in self.states[index].values():
            if not hasattr(variable, "assign"):
                continue
            old = variable.name
            prefix = f"{self.name}_c{index}_"
            new = f"{self.name}_" + old[len(prefix):] if old.startswith(prefix) else old
            renames[old] = new
        return {"scheme": serialize_scheme(scheme), "sqnr_weight": self.sqnr_weight}, renames

    # --- serialisation ------------------------------------------------------------------

    def get_config(self) -> dict:
        config = {}
        if self.is_mixture:
            config["candidates"] = [serialize_scheme(c) for c in self.candidates]
            config["temperature"] = self.temperature
        else:
            config["scheme"] = serialize_scheme(self.candidates[0])
        if self.trainable_bits:
            config["trainable_bits"] = True
            config["bits_range"] = list(self.bits_range)
            config["initial_bits"] = self.initial_bits
        if self.sqnr_weight:
            config["sqnr_weight"] = self.sqnr_weight
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "bits_range" in config:
            config["bits_range"] = tuple(config["bits_range"])
        return cls(**config)

    def __repr__(self):
        return f"Quantizer({self.get_config()})"
