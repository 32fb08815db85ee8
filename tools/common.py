"""Shared benchmark plumbing: data loading and cached training of the reference models.

Every benchmark trains (or reloads) the same float reference model, so numbers
from `benchmark.py`, `bench_tuner.py` and `bench_export.py` are comparable.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from autoqnn.data import load_demo_subset, load_npz, shared_data_path  # noqa: E402
from autoqnn.models import build_model  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def load_data(path=None, train_subset=None, test_subset=None):
    """`((x_train, y_train), (x_test, y_test))`.

    From `path`, else $AUTOQNN_DATA or ../shared/data, else the bundled demo subset.
    """
    path = path or shared_data_path()
    if path is None:
        (xt, yt), (xv, yv) = load_demo_subset()
        return (xt[:train_subset], yt[:train_subset]), (xv[:test_subset], yv[:test_subset])
    return load_npz(path, train_subset, test_subset)


def load_splits(path=None, train_subset=None, val_size=2000, test_subset=None):
    """`(train, val, test)`, each `(x, y)`, with the validation split carved from training data.

    `train` is the first `train_subset` training images (the same images `load_data`
    gives, so cached reference models are shared), `val` the next `val_size` training
    images: disjoint from `train`, never used to train the float model, and no test
    image. `test` is the test split (`test_subset` first images; None: all of it).
    When the file has fewer than `train_subset + val_size` training images (the bundled
    demo subset), `train` shrinks so that `val` keeps its size.
    """
    if val_size < 1:
        raise ValueError(f"val_size must be positive, got {val_size}")
    (x, y), test = load_data(path, None, test_subset)
    if len(x) <= val_size:
        raise ValueError(f"{len(x)} training images cannot spare a {val_size}-image validation "
                         "split")
    n = len(x) - val_size if train_subset is None else min(train_subset, len(x) - val_size)
    return (x[:n], y[:n]), (x[n:n + val_size], y[n:n + val_size]), test


def compile_model(model, learning_rate=1e-3):
    model.compile(keras.optimizers.Adam(learning_rate), LOSS, metrics=["accuracy"])
    return model


def accuracy(model, x, y, batch_size=256) -> float:
    compile_model(model)
    return float(model.evaluate(x, y, batch_size=batch_size, verbose=0)[1])


def train_reference(model_name, train, epochs=3, cache_dir="runs", seed=0, verbose=0):
    """Trains the reference model (or reloads it from `cache_dir`).

    Returns:
        (model, seconds spent training; 0 when reloaded).
    """
    x, y = train
    cache = Path(cache_dir) / f"{model_name}_e{epochs}_n{len(x)}_s{seed}.keras"
    if cache.is_file():
        return keras.models.load_model(cache), 0.0
    keras.utils.set_random_seed(seed)
    model = compile_model(build_model(model_name, x.shape[1:], int(y.max()) + 1))
    start = time.perf_counter()
    model.fit(x, y, epochs=epochs, batch_size=128, verbose=verbose)
    seconds = time.perf_counter() - start
    cache.parent.mkdir(parents=True, exist_ok=True)
    model.save(cache)
    return model, seconds


def reference_parser(description):
    """The arguments every multi-model tool shares: data, models, float epochs, subset, JSON."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default=None, help="npz file (default: ../shared or demo)")
    parser.add_argument("--model", nargs="+", default=["cnn", "mobilenet"])
    parser.add_argument("--epochs", type=int, default=5, help="float training epochs")
    parser.add_argument("--train-subset", type=int, default=20000)
    parser.add_argument("--json", default=None, help="write the results here")
    return parser


def write_json(path, data):
    """Writes `data` as indented JSON to `path` (folders created); no-op for None."""
    import json

    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1))


def step_seconds(model, x, y, steps=20, warmup=2):
    """Median seconds of one training step on `(x, y)` (Adam 1e-4, after `warmup` steps)."""
    import numpy as np

    compile_model(model, 1e-4)
    for _ in range(warmup):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def float_continued(model, train, val, test, epochs, learning_rate, batch_size=128) -> dict:
    """The float model trained `epochs` more with `autoqnn.finetune`'s optimizer (a copy),
    the best validation epoch kept: the "float + N ep" row QAT rows are compared with.

    Returns:
        `{"method", "accuracy" (test), "val_accuracy" (best), "seconds"}`.
    """
    import math

    from autoqnn.finetune import qat_optimizer

    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    steps = math.ceil(len(train[0]) / batch_size) * epochs
    copy.compile(qat_optimizer(learning_rate, steps), LOSS, metrics=["accuracy"])
    best, weights = -1.0, None
    for _ in range(epochs):
        copy.fit(*train, epochs=1, batch_size=batch_size, verbose=0)
        acc = float(copy.evaluate(*val, batch_size=256, verbose=0)[1])
        if acc > best:
            best, weights = acc, copy.get_weights()
    copy.set_weights(weights)
    return {"method": f"float + {epochs} ep (lr {learning_rate:g})",
            "accuracy": accuracy(copy, *test), "val_accuracy": best,
            "seconds": round(time.perf_counter() - start, 1)}
