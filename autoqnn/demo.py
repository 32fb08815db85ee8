"""`autoqnn demo`: the main job on the bundled Fashion-MNIST subset.

Trains the reference `cnn` briefly, quantizes it with W8A8 post-training
quantization and W4A4 with a short quantization-aware training, prints a
table (accuracy, average weight bits, size) and writes the `.keras` files.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras

from autoqnn.api import quantize
from autoqnn.data import load_demo_subset, load_npz
from autoqnn.models import build_model, first_and_last_layers

_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _compile(model, learning_rate):
    model.compile(keras.optimizers.Adam(learning_rate), _LOSS, metrics=["accuracy"])
    return model


def _float_size(model):
    return sum(int(v.numpy().size) for v in model.weights) * 4


def run_demo(out_dir="autoqnn_demo", epochs=3, qat_epochs=1, data_path=None, verbose=1, seed=0,
             train_subset=6000):
    """Runs the demo and returns its rows (list of dicts).

    Args:
        out_dir: where the float and quantized `.keras` files go.
        epochs: float training epochs.
        qat_epochs: quantization-aware training epochs of the W4A4 model.
        data_path: optional `.npz` (default: the bundled subset).
        verbose: 0 silent, 1 table and progress.
        seed: random seed.
        train_subset: number of training images used.

    Returns:
        One dict per row: method, accuracy, weight_bits_avg, size_bytes, seconds.
    """
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = (
        load_npz(data_path, train_subset, 1000) if data_path else load_demo_subset()
    )
    x_train, y_train = x_train[:train_subset], y_train[:train_subset]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []

    def log(message):
        if verbose:
            print(message, flush=True)

    log(f"data: {len(x_train)} train / {len(x_test)} test images; training the float cnn...")
    start = time.perf_counter()
    model = _compile(build_model("cnn", x_train.shape[1:]), 1e-3)
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    model.save(out / "cnn_float.keras")
    rows.append({"method": "float", "accuracy": accuracy, "weight_bits_avg": 32.0,
                 "size_bytes": _float_size(model), "seconds": time.perf_counter() - start})

    start = time.perf_counter()
    w8a8 = quantize(model, weight_bits=8, activation_bits=8, calibration_data=x_train[:512])
    _compile(w8a8, 1e-4)
    rows.append(_row("W8A8 PTQ", w8a8, x_test, y_test, start))
    w8a8.save(out / "cnn_w8a8.keras")

    log("W4A4: quantize (first/last layer 8-bit), calibrate, short QAT...")
    start = time.perf_counter()
    first, last = first_and_last_layers(model)
    w4a4 = quantize(model, weight_bits=4, activation_bits=4, input_bits=8,
                    calibration_data=x_train[:512],
                    config={first: {"weight_bits": 8}, last: {"weight_bits": 8,
                                                              "activation_bits": 8}})
    _compile(w4a4, 2e-4)
    w4a4.fit(x_train, y_train, epochs=qat_epochs, batch_size=64, verbose=0)
    rows.append(_row(f"W4A4 QAT ({qat_epochs} ep)", w4a4, x_test, y_test, start))
    w4a4.save(out / "cnn_w4a4.keras")

    if verbose:
        print(format_table(rows))
        print(f"models written to {out}/ (load with keras.models.load_model; "
              f"`autoqnn info {out}/cnn_w4a4.keras` shows the per-layer report)")
    return rows


def _row(method, qmodel, x_test, y_test, start):
    report = qmodel.autoqnn_report
    return {
        "method": method,
        "accuracy": float(qmodel.evaluate(x_test, y_test, verbose=0)[1]),
        "weight_bits_avg": report.weight_bits_avg,
        "size_bytes": report.size_bytes,
        "seconds": time.perf_counter() - start,
    }


def format_table(rows) -> str:
    """A plain-text table of demo/benchmark rows."""
    lines = [f"{'method':22s} {'accuracy':>9s} {'w bits':>7s} {'size KiB':>9s} {'seconds':>8s}"]
    for r in rows:
        lines.append(f"{r['method']:22s} {100 * r['accuracy']:8.2f}% {r['weight_bits_avg']:7.2f} "
                     f"{r['size_bytes'] / 1024:9.1f} {r['seconds']:8.1f}")
    return "\n".join(lines)
