"""Per-layer LiteRT latency of each candidate container, timed on this machine.

For each searched layer with more than one stored candidate (`autoqnn.mixed.target`),
a one-layer model is built from the float layer (same configuration, weights and input
shape, batch 1), quantized with 8-bit activations at each candidate container's bits,
exported with `export_tflite` (storage "narrow", so an int4 convolution is stored int4
and runs on LiteRT's reference kernel, an int8 one on XNNPACK), and all these files are
timed together with LiteRT (`autoqnn.export.latency.time_files`: median of rounds x
invokes, interleaved). The search uses the differences between a layer's candidates;
the start file itself is timed whole (`autoqnn.mixed.target_search`).

Measured latencies are cached in `<cache_dir>/litert_latency.json` under the machine
key (CPU, cores, LiteRT version, threads) and, per layer, its class, configuration,
input shape, granularity and container: the same layer on the same machine is timed
once.

Example:
    >>> import keras, numpy as np
    >>> from autoqnn.mixed.latency_table import one_layer_model
    >>> inputs = keras.Input((8, 8, 3))
    >>> model = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="c")(inputs))
    >>> one_layer_model(model.get_layer("c")).input_shape
    (1, 8, 8, 3)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import keras
import numpy as np

from autoqnn.config import QuantizationConfig
from autoqnn.core import quantize_config
from autoqnn.export.latency import machine_key, time_files
from autoqnn.mixed.target import tflite_file
from autoqnn.walk import iter_layers

CACHE_FILE = "litert_latency.json"


def one_layer_model(layer) -> keras.Model:
    """A model of `layer` alone (a fresh copy with its weights) on its input shape, batch 1.

    Raises:
        ValueError: the layer has no single input shape (called more than once, or on
            several inputs).
    """
    try:
        shape = tuple(layer.input.shape)
    except (AttributeError, ValueError) as err:
        raise ValueError(f"target='litert': layer {layer.name!r} has no single input "
                         f"({err}); its latency cannot be timed alone") from None
    inputs = keras.Input(shape[1:], batch_size=1, name="x")
    twin = type(layer).from_config(layer.get_config())
    outputs = twin(inputs)
    twin.set_weights(layer.get_weights())
    return keras.Model(inputs, outputs, name=f"one_{layer.name}")


def layer_key(layer, granularity: str, container: int) -> str:
    """The cache key of one layer and container: class, configuration (without the
    name), input shape, granularity and container."""
    config = {k: v for k, v in layer.get_config().items() if k not in ("name", "trainable")}
    return json.dumps([type(layer).__name__, config, list(layer.input.shape)[1:], granularity,
                       container], sort_keys=True, default=str)


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, machine: str, entries: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read_cache(path)  # another process may have added entries meanwhile
    data.setdefault(machine, {}).update(entries)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".litert_latency.",
                                     delete=False) as handle:
        json.dump(data, handle)
    os.replace(handle.name, path)


def one_layer_file(layer, container: int, granularity: str) -> bytes:
    """The `.tflite` of `layer` alone with `container`-bit weights and int8 activations.

    Raises:
        RuntimeError: the file does not store the weights in a `container`-bit tensor.
    """
    model = one_layer_model(layer)
    data = np.random.default_rng(0).random((8,) + tuple(model.input_shape[1:]),
                                          dtype=np.float32)
    qmodel = quantize_config(model, QuantizationConfig(
        weight_bits=container, activation_bits=8, granularity=granularity), data, verbose=0)
    return tflite_file(qmodel)


def layer_latencies(float_model, stored: dict, target, granularity: str = "per_channel",
                    verbose: int = 0) -> tuple[dict, dict]:
    """`({path: {bits: ms}}, info)`: LiteRT latency of each layer at each stored candidate.

    Args:
        float_model: the float model searched (its layers are copied).
        stored: `{path: {bits: StoredCandidate}}` (`autoqnn.mixed.target.stored_candidates`).
        target: the `LiteRTTarget` (threads, timing, cache folder).
        granularity: the searched model's weight granularity.
        verbose: 1 prints what is timed.

    Returns:
        The latencies (layers with one candidate get 0.0: nothing to choose) and
        `{"machine": key, "timed": files timed now, "cached": entries reused}`.
    """
    machine = machine_key(target.num_threads)
    cache = Path(target.cache_dir) / CACHE_FILE if target.cache_dir else None
    known = _read_cache(cache).get(machine, {}) if cache is not None else {}
    float_layers = dict(iter_layers(float_model))
    keys, files = {}, {}
    for path, candidates in stored.items():
        if len(candidates) < 2:
            continue
        if path not in float_layers:
            raise ValueError(f"target='litert': layer {path!r} is not in the float model")
        layer = float_layers[path]
        for bits, candidate in candidates.items():
            key = layer_key(layer, granularity, candidate.container)
            keys[(path, bits)] = key
            if key not in known and key not in files:
                files[key] = one_layer_file(layer, candidate.container, granularity)
    if verbose and files:
        print(f"target='litert': timing {len(files)} one-layer files with LiteRT "
              f"({target.num_threads} thread(s))")
    measured = time_files(files, num_threads=target.num_threads, rounds=target.rounds,
                          invokes=target.invokes) if files else {}
    if cache is not None and measured:
        _write_cache(cache, machine, measured)
    every = {**known, **measured}
    latencies = {path: ({bits: every[keys[(path, bits)]] for bits in candidates}
                        if len(candidates) > 1 else dict.fromkeys(candidates, 0.0))
                 for path, candidates in stored.items()}
    return latencies, {"machine": machine, "timed": len(measured),
                       "cached": len({k for k in keys.values() if k in known})}
