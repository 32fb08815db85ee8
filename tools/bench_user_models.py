"""Benchmark: keras.io-style user models (autoqnn.user_models) through autoqnn.

For each style: float accuracy, W8A8 and W4A8 accuracy, a search under
`weight_bits_budget` (default 3.0), the full-integer TFLite accuracy (export
with default arguments, no representative data) and its agreement with the
Keras W8A8 model, the `.keras` round trip (plain `keras.models.load_model`),
the fraction of weight parameters quantized (`QuantizationReport.
quantized_fraction`: biases count as float, quantizer state is left out), and
Keras 3's own `model.quantize("int8")` where it applies.
Errors are recorded per cell, never hidden. Validation (for search) is carved
from the training data; the test split only measures.

Usage:
    python tools/bench_user_models.py --train 3000 --test 1000 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

import autoqnn
from autoqnn.data import load_npz
from autoqnn.export.tflite import run_tflite
from autoqnn.user_models import STYLES


def accuracy(model, x, y) -> float:
    return float((np.asarray(model.predict(x, verbose=0)).argmax(-1) == y).mean())




def cell(fn):
    """`fn()` or `{"error": ...}`: a failing cell is recorded, not hidden."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - the row says what failed
        return {"error": f"{type(err).__name__}: {str(err)[:300]}"}


def keras_int8(model, x, y):
    """Keras 3's own `model.quantize("int8")`, in place (so it runs last in a row:
    `clone_model` cannot copy layers without **kwargs)."""
    model.quantize("int8")
    return accuracy(model, x, y)


def bench_style(name, data, args):
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    model = STYLES[name](x_train)
    model.compile(keras.optimizers.Adam(args.learning_rate), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    start = time.time()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0)
    row = {"style": name, "params": int(model.count_params()),
           "train_seconds": round(time.time() - start, 1),
           "float": accuracy(model, x_test, y_test)}
    calibration = x_train[:args.calibration]
    w8a8 = cell(lambda: autoqnn.quantize(model, calibration_data=calibration))
    if isinstance(w8a8, dict):
        row["w8a8"] = w8a8
    else:
        row["w8a8"] = accuracy(w8a8, x_test, y_test)
        row["quantized_fraction"] = w8a8.autoqnn_report.quantized_fraction
        row["float_layers"] = {r.name: r.reason for r in w8a8.autoqnn_report.float_layers}

        def tflite():
            path = os.path.join(tempfile.mkdtemp(), f"{name}.tflite")
            info = autoqnn.export_tflite(w8a8, path)
            lite = run_tflite(path, x_test, batch_size=100)
            keras_out = w8a8.predict(x_test, verbose=0)
            keras_pred = keras_out.argmax(-1)
            differ = lite.argmax(-1) != keras_pred
            top2 = np.sort(keras_out[differ], axis=-1)[:, -2:]
            return {"accuracy": float((lite.argmax(-1) == y_test).mean()),
                    "agreement": float((~differ).mean()),
                    "disagreements": int(differ.sum()),
                    # Images whose Keras output has two equal top probabilities (its
                    # argmax is the lower class index): a tie, not a different answer.
                    "keras_ties": int((top2[:, 0] == top2[:, 1]).sum()),
                    "bytes": info.size_bytes}

        row["tflite"] = cell(tflite)

        def round_trip():
            path = os.path.join(tempfile.mkdtemp(), f"{name}.keras")
            w8a8.save(path)
            loaded = keras.models.load_model(path, safe_mode=False)
            diff = np.abs(loaded.predict(x_test[:100], verbose=0)
                          - w8a8.predict(x_test[:100], verbose=0)).max()
            return {"max_abs_difference": float(diff)}

        row["keras_round_trip"] = cell(round_trip)
    row["w4a8"] = cell(lambda: accuracy(autoqnn.quantize(model, weight_bits=4,
                                                         calibration_data=calibration),
                                        x_test, y_test))

    def search():
        result = autoqnn.search(model, calibration_data=calibration,
                                weight_bits_budget=args.budget, verbose=0)
        return {"accuracy": accuracy(result.model, x_test, y_test),
                "weight_bits_avg": result.model.autoqnn_report.weight_bits_avg}

    row["search"] = cell(search)
    row["keras_int8"] = cell(lambda: keras_int8(model, x_test, y_test))
    del x_val, y_val  # carved for the record: the default search needs no labels
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/fashion_mnist.npz")
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--val", type=int, default=500, help="carved from the training data")
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--styles", nargs="*", default=list(STYLES))
    parser.add_argument("--out", default="results/user_models.json")
    args = parser.parse_args(argv)
    (x, y), (x_test, y_test) = load_npz(args.data, args.train + args.val, args.test)
    data = ((x[:args.train], y[:args.train]), (x[args.train:], y[args.train:]),
            (x_test, y_test))
    rows = []
    for name in args.styles:
        rows.append(bench_style(name, data, args))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "rows": rows},
                              indent=2))


if __name__ == "__main__":
    main()
