"""Per-layer sensitivity: how much the model's output moves when one layer drops its bits.

The table is measured on a quantized model whose weighted layers all start at
the largest candidate bitwidth (activations as they will be deployed). For
each layer and each smaller candidate, `autoqnn.set_bits` lowers that layer
alone, in place (no re-clone), the calibration images run through the model
(one traced pass over weights held fake-quantized: `autoqnn.mixed.probe`),
and the distortion of the outputs against the float model's outputs is
recorded; then the layer goes back. The sensitivity of `(layer, bits)` is the
distortion increase over the all-largest start:

    s(l, b) = D(f_float(x), f_{l at b}(x)) - D(f_float(x), f_start(x))

with D the mean KL divergence `KL(softmax(z_float) || softmax(z_q))` of the
logits (default, `metric="kl"`: what a classifier's accuracy depends on; it
weighs changes of the likely classes, unlike MSE of raw logits) or the mean
squared error (`metric="mse"`, for regression outputs). A whole policy is
scored by the sum of its layers' sensitivities (a first-order, additive model
of the interactions; `tools/bench_sensitivity.py` checks that it ranks random
policies as their accuracy does). The budget solver (`autoqnn.mixed.budget`)
minimises that sum.

Example:
    >>> import keras, numpy as np, autoqnn
    >>> from autoqnn.mixed.table import measure_sensitivity
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(16, activation="relu", name="a")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(4, name="b")(x))
    >>> data = np.random.default_rng(0).random((64, 8), dtype=np.float32)
    >>> qmodel = autoqnn.quantize(model, weight_bits=8, calibration_data=data, verbose=0)
    >>> table = measure_sensitivity(qmodel, model, data, candidate_bits=(2, 8))
    >>> table.layers, table.values["a"][8]
    (['a', 'b'], 0.0)
    >>> table.values["a"][2] > 0
    True
"""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np

from autoqnn.data import iterate_batches
from autoqnn.finalize import set_bits
from autoqnn.layers.quantized import QuantizedWeightsMixin
from autoqnn.mixed.probe import WeightProbe
from autoqnn.report import float_reasons, quantization_report
from autoqnn.walk import iter_layers

METRICS = ("kl", "mse")


@dataclasses.dataclass
class SensitivityTable:
    """The measured sensitivities (see the module docstring).

    Attributes:
        layers: paths of the searchable weighted layers, in graph order.
        candidates: `{path: sorted candidate bits}` (those its scheme accepts).
        values: `{path: {bits: sensitivity}}` (0 at the largest candidate).
        params: `{path: quantized parameters}` (what weight bits multiply).
        metric: "kl" or "mse".
        start_distortion: D of the all-largest start against float.
        seconds: measuring time.
    """

    layers: list
    candidates: dict
    values: dict
    params: dict
    metric: str
    start_distortion: float
    seconds: float

    def total(self, policy: dict) -> float:
        """Predicted distortion increase of a policy `{path: bits}` (sum over layers)."""
        return float(sum(self.values[path][int(policy[path])] for path in self.layers))

    def to_dict(self) -> dict:
        return {"layers": list(self.layers),
                "candidates": {k: list(v) for k, v in self.candidates.items()},
                "values": {k: {str(b): v for b, v in d.items()} for k, d in self.values.items()},
                "params": dict(self.params), "metric": self.metric,
                "start_distortion": self.start_distortion, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict) -> SensitivityTable:
        return cls(list(data["layers"]),
                   {k: tuple(v) for k, v in data["candidates"].items()},
                   {k: {int(b): float(v) for b, v in d.items()} for k, d in data["values"].items()},
                   dict(data["params"]), data["metric"], float(data["start_distortion"]),
                   float(data["seconds"]))


def searchable_layers(qmodel) -> list:
    """`(path, layer)` of the quantized weighted layers with fixed-bits quantizers."""
    return [(path, layer) for path, layer in iter_layers(qmodel)
            if isinstance(layer, QuantizedWeightsMixin) and layer.weight_quantizers
            and all(q.is_final for q in layer.weight_quantizers.values())]


def layer_candidates(layer, candidate_bits) -> tuple:
    """The candidate bits every quantizer of `layer` accepts (sorted)."""
    schemes = [q.scheme for q in layer.weight_quantizers.values()]
    return tuple(sorted(b for b in set(candidate_bits)
                        if all(s.min_bits <= b <= s.max_bits for s in schemes)))


def distortion(reference: np.ndarray, outputs: np.ndarray, metric: str) -> float:
    """Mean distortion of `outputs` against `reference` (rows: samples)."""
    if metric == "mse":
        return float(np.mean((reference - outputs) ** 2))
    ref = reference.reshape(len(reference), -1).astype("float64")
    out = outputs.reshape(len(outputs), -1).astype("float64")
    log_p = ref - ref.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    log_q = out - out.max(axis=1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(axis=1, keepdims=True))
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))


def _outputs(model, batches) -> np.ndarray:
    parts = [keras.ops.convert_to_numpy(model(b, training=False)) for b in batches]
    return np.concatenate(parts, axis=0)


def measure_sensitivity(qmodel, float_model, data, candidate_bits=(2, 3, 4, 8), *,
                        metric: str = "kl", num_samples: int | None = 512,
                        refine=None, exclude=(), caps: dict | None = None,
                        allowed: dict | None = None, verbose: int = 0) -> SensitivityTable:
    """Measures the sensitivity table of `qmodel` (see the module docstring).

    Args:
        qmodel: a quantized, calibrated model; its searchable layers are set to
            their largest candidate first (and left there).
        float_model: the float model it was quantized from (the reference).
        data: calibration inputs (no labels needed).
        candidate_bits: weight bits to try per layer.
        metric: "kl" (logits of a classifier) or "mse".
        num_samples: images used (None: all).
        refine: optional `refine(layer)` run after each bit change (e.g. the
            PTQ weight-clip search of that layer) and once per layer on the
            way back.
        exclude: layer paths left as they are (pinned by the user).
        caps: `{path: bits}`: a layer's candidates stop there (the DNAS/QPL
            repair only lowers bits); its start is then its cap.
        allowed: `{path: bits}`: a layer's candidates, instead of those of
            `candidate_bits` its scheme accepts (a target's stored widths,
            `autoqnn.mixed.target`).
        verbose: 1 shows a progress bar over the probes.

    Returns:
        A `SensitivityTable`.

    Raises:
        ValueError: unknown metric, empty data, or no searchable layer.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    start = time.perf_counter()
    batches = list(iterate_batches(qmodel, data, 256, num_samples, "calibration_data"))
    if not batches:
        raise ValueError("calibration_data is empty: no image to measure sensitivity on")
    layers = [(p, layer) for p, layer in searchable_layers(qmodel) if p not in set(exclude)]
    if not layers:
        raise ValueError(f"model {qmodel.name!r} has no quantized weighted layer to search")
    candidates = {path: tuple(allowed[path]) if allowed is not None and path in allowed
                  else layer_candidates(layer, candidate_bits) for path, layer in layers}
    if caps:
        candidates = {path: tuple(b for b in bits if b <= caps.get(path, b)) or bits[:1]
                      for path, bits in candidates.items()}
    for path, bits in candidates.items():
        if not bits:
            raise ValueError(f"candidate_bits {tuple(candidate_bits)} are all outside the bit "
                             f"range of layer {path!r}'s scheme")
    set_bits(qmodel, {path: candidates[path][-1] for path, _ in layers}, update_report=False)
    if refine is not None:
        for _, layer in layers:
            refine(layer)
    reference = _outputs(float_model, batches)
    probes = sum(len(c) - 1 for c in candidates.values())
    bar = keras.utils.Progbar(probes, unit_name="probe") if verbose and probes else None
    values = {}
    with WeightProbe(qmodel, [layer for _, layer in layers]) as probe:
        start_d = distortion(reference, probe.outputs(batches), metric)
        for path, layer in layers:
            top = candidates[path][-1]
            values[path] = {top: 0.0}
            for bits in candidates[path][:-1]:
                with probe.changing(layer):
                    set_bits(qmodel, {path: bits}, update_report=False)
                    if refine is not None:
                        refine(layer)
                values[path][bits] = distortion(reference, probe.outputs(batches),
                                                 metric) - start_d
                if bar is not None:
                    bar.add(1)
            with probe.changing(layer):
                set_bits(qmodel, {path: top}, update_report=False)
                if refine is not None:
                    refine(layer)
    qmodel.autoqnn_report = quantization_report(qmodel, float_reasons(qmodel))
    params = {path: int(sum(np.prod(getattr(layer, attr).shape)
                            for attr in layer.weight_quantizers)) for path, layer in layers}
    return SensitivityTable([p for p, _ in layers], candidates, values, params, metric,
                            start_d, time.perf_counter() - start)
