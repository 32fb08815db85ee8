"""`autoqnn demo`: the product end to end on Fashion-MNIST (the bundled subset by default).

1. trains the reference `cnn` (an epoch line each);
2. the one call: `autoqnn.quantize(model, calibration_data=x, weight_bits_budget=3.0)`
   chooses each layer's bits under the budget;
3. fine-tunes it briefly (distilled from the float model) and keeps the fine-tuned
   weights only when they score better on a held-out slice of the training images;
4. exports a full-integer TFLite file and runs it with LiteRT on the test images;
5. prints a table (float, the one call, uniform PTQ at the same size) and writes the
   per-layer policy plot (when matplotlib is installed).
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from autoqnn.api import quantize
from autoqnn.data import load_demo_subset, load_npz
from autoqnn.evaluate import top1_accuracy
from autoqnn.export import ExportError, export_tflite, run_tflite
from autoqnn.finetune import finetune
from autoqnn.models import build_model

_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
_CALIBRATION = 512
_HELD_OUT = 1000


def _float_size(model):
    return sum(int(np.prod(v.shape)) for v in model.weights) * 4


def _row(method, qmodel, data, start, tflite=None):
    report = qmodel.autoqnn_report
    return {"method": method, "accuracy": top1_accuracy(qmodel, data),
            "weight_bits_avg": report.weight_bits_avg, "size_bytes": report.size_bytes,
            "seconds": time.perf_counter() - start, "tflite": tflite}


def _load(data_path, train_subset):
    if train_subset is not None and train_subset < 1:
        raise ValueError(f"train_subset must be a positive number of images, got "
                         f"{train_subset!r}")
    if data_path:
        return load_npz(data_path, train_subset)
    (x_train, y_train), test = load_demo_subset()
    return (x_train[:train_subset], y_train[:train_subset]), test


def run_demo(out_dir="autoqnn_demo", epochs=3, finetune_epochs=1, data_path=None, verbose=1,
             seed=0, train_subset=None, budget=3.0, time_budget=None):
    """Runs the demo and returns its rows (list of dicts).

    Args:
        out_dir: where the `.keras`, `.tflite` and `.png` files go.
        epochs: float training epochs.
        finetune_epochs: fine-tune epochs of the one call's model (0: none).
        data_path: optional `.npz` with x_train/y_train/x_test/y_test (default: the
            bundled 6,000 / 1,000 subset); all of it is used unless `train_subset`.
        verbose: 0 silent, 1 progress and the table.
        seed: random seed.
        train_subset: train on the first N training images (None: all).
        budget: average weight bits of the one call.
        time_budget: seconds the one call spends choosing a recipe (None: its default).

    Returns:
        One dict per row: method, accuracy, weight_bits_avg, size_bytes, seconds and
        tflite (the LiteRT accuracy of the exported file, or None).
    """
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = _load(data_path, train_subset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, test = [], (x_test, y_test)
    held = min(_HELD_OUT, len(x_train) // 5)
    x_fit, y_fit = x_train[:-held], y_train[:-held]
    val = (x_train[-held:], y_train[-held:])
    calibration = x_fit[:_CALIBRATION]

    def log(message):
        if verbose:
            print(message, flush=True)

    log(f"data: {len(x_fit)} train / {held} held-out / {len(x_test)} test images "
        f"({data_path or 'the bundled subset'})")
    log(f"1/5 training the float cnn for {epochs} epoch(s)...")
    start = time.perf_counter()
    model = build_model("cnn", x_train.shape[1:])
    model.compile(keras.optimizers.Adam(1e-3), _LOSS, metrics=["accuracy"])
    model.fit(x_fit, y_fit, epochs=epochs, batch_size=64, verbose=2 if verbose else 0)
    model.save(out / "cnn_float.keras")
    rows.append({"method": "float", "accuracy": top1_accuracy(model, test),
                 "weight_bits_avg": 32.0, "size_bytes": _float_size(model),
                 "seconds": time.perf_counter() - start, "tflite": None})

    log(f"2/5 the one call: autoqnn.quantize(model, calibration_data=x, "
        f"weight_bits_budget={budget:g})...")
    start = time.perf_counter()
    choice = {} if time_budget is None else {"time_budget_seconds": time_budget}
    qmodel = quantize(model, calibration_data=calibration, weight_bits_budget=budget,
                      verbose=verbose, **choice)
    label = f"one call, budget {budget:g}"
    rows.append(_row(label, qmodel, test, start))
    if finetune_epochs:
        log(f"3/5 fine-tuning {finetune_epochs} epoch(s), distilled from the float model...")
        before = top1_accuracy(qmodel, val)
        start = time.perf_counter()
        saved = qmodel.get_weights()
        finetune(qmodel, (x_fit, y_fit), epochs=finetune_epochs, val_data=val, teacher=model,
                 verbose=verbose)
        after = top1_accuracy(qmodel, val)
        log(f"    held-out top-1 {100 * before:.2f}% -> {100 * after:.2f}%: "
            f"{'kept' if after > before else 'not kept (no gain), weights restored'}")
        if after > before:
            rows.append(_row(f"{label} + {finetune_epochs} ep", qmodel, test, start))
        else:
            qmodel.set_weights(saved)
    qmodel.save(out / "cnn_budget.keras")

    log("4/5 exporting TFLite and running it with LiteRT...")
    tflite_path = out / "cnn_budget.tflite"
    try:
        try:
            export_tflite(qmodel, tflite_path)
        except ExportError as err:  # a recipe whose levels are not on the int8 grid
            if "inexact='requantize'" not in str(err):
                raise
            log(f"    not exact in int8 ({str(err).split(';')[0]}): exporting with "
                f"inexact='requantize' (error <= half an int8 step)")
            export_tflite(qmodel, tflite_path, inexact="requantize")
        logits = run_tflite(tflite_path, x_test, batch_size=256)
        rows[-1]["tflite"] = float(np.mean(np.argmax(logits, -1) == y_test))
        rows[-1]["tflite_bytes"] = tflite_path.stat().st_size
        log(f"    {tflite_path} ({tflite_path.stat().st_size:,} bytes), LiteRT top-1 "
            f"{100 * rows[-1]['tflite']:.2f}%")
    except ExportError as err:
        log(f"    export refused: {err}")

    uniform_bits = max(2, int(budget))
    log(f"5/5 the fixed recipe at the same size: uniform W{uniform_bits}A8 PTQ...")
    start = time.perf_counter()
    uniform = quantize(model, weight_bits=uniform_bits, calibration_data=calibration,
                       verbose=0)
    rows.append(_row(f"uniform W{uniform_bits}A8 PTQ", uniform, test, start))
    _plot(qmodel, out / "policy.png", budget, log)
    if verbose:
        print(format_table(rows))
        print(f"files in {out}/: cnn_float.keras, cnn_budget.keras, cnn_budget.tflite. Load a "
              f"quantized model in Python with `import autoqnn` first (it registers the "
              f"layers), then keras.models.load_model; from the shell: `autoqnn info "
              f"{out}/cnn_budget.keras`")
    return rows


def _plot(qmodel, path, budget, log):
    search = getattr(qmodel, "autoqnn_search", None)
    sensitivity = getattr(search, "sensitivity", None)
    try:
        from autoqnn.plots import plot_policy

        plot_policy(qmodel, path, budget=budget,
                    sensitivity=None if sensitivity is None else sensitivity.to_dict())
        log(f"policy plot: {path}")
    except ImportError as err:
        log(f"no policy plot: {err}")


def format_table(rows) -> str:
    """A plain-text table of demo/benchmark rows.

    Example:
        >>> print(format_table([{"method": "float", "accuracy": 0.9, "weight_bits_avg": 32.0,
        ...                      "size_bytes": 2048, "seconds": 1.0}]))
        method                        top-1  LiteRT top-1  w bits  size KiB  seconds
        float                        90.00%                 32.00       2.0      1.0
    """
    lines = [f"{'method':26s} {'top-1':>8s} {'LiteRT top-1':>13s} {'w bits':>7s} "
             f"{'size KiB':>9s} {'seconds':>8s}"]
    for r in rows:
        tflite = "" if r.get("tflite") is None else f"{100 * r['tflite']:.2f}%"
        lines.append(f"{r['method']:26s} {100 * r['accuracy']:7.2f}% {tflite:>13s} "
                     f"{r['weight_bits_avg']:7.2f} {r['size_bytes'] / 1024:9.1f} "
                     f"{r['seconds']:8.1f}")
    return "\n".join(lines)
