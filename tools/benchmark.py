"""The numbers in the README: float vs PTQ vs QAT on the reference models.

    python tools/benchmark.py --data ../shared/data/fashion_mnist.npz --model cnn \
        --epochs 5 --qat-epochs 2 --train-subset 20000 --export --json results/bench_cnn.json

Trains (or reloads from runs/) the reference model, then measures W8A8 PTQ,
W4A8 PTQ, W4A4 QAT and W2A2 QAT (first and last layer kept at 8 bits) on the
test split (QAT with the uniform scheme and with LSQ for weights and
activations), plus two speed ratios: a QAT training step against a float one,
and `quantize` with 512 calibration images. `--tuner` and `--export` add the
PTQ-tuner and TFLite-export measurements (tools/bench_tuner.py,
tools/bench_export.py).

Like for like:
- QAT rows train `--qat-epochs` more epochs than the float model had, so there is a
  "float + N ep" row for each QAT learning rate: the float model trained on for the same
  epochs with the same optimizer (Adam, that learning rate, batch 128, same images). The
  QAT rows start from the reference float model, not from that one.
- LSQ activations take their signedness from calibration (`signed=None`, the default):
  every quantized activation of the reference models follows a ReLU / ReLU6 or is the
  [0, 1] input image and gets the unsigned grid (all 2^b levels on [0, 2^b - 1]); the
  logits' quantizer sees negative values and stays signed (the JSON lists the signed ones).
- QAT trains with BatchNorm unfolded (`fold_batchnorm=False`): measured better at W2A2 and
  within 0.3 % at W4A4 (results/quantizer.json); with per-channel weights, folding it
  afterwards (`autoqnn.finalize`, `export_tflite`) leaves the function unchanged.
- Nothing is chosen on the test split: calibration images are training images, the
  learning rates and epochs are fixed arguments, and the test split is only evaluated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import accuracy, compile_model, load_data, step_seconds, train_reference  # noqa: E402

import autoqnn  # noqa: E402
from autoqnn.models import MODELS, first_and_last_layers  # noqa: E402

QAT_SETTINGS = ((4, 2e-4), (2, 1e-3))
"""(bits, learning rate) of the W4A4 and W2A2 QAT rows."""


def low_bit_config(model):
    """First and last weighted layers at 8 bits (the logits' output quantizer too)."""
    first, last = first_and_last_layers(model)
    return {first: {"weight_bits": 8}, last: {"weight_bits": 8, "activation_bits": 8}}


def run_row(method, qmodel, test, seconds, activation_bits):
    report = qmodel.autoqnn_report
    return {
        "method": method,
        "weight_bits_avg": round(report.weight_bits_avg, 3),
        "activation_bits": activation_bits,
        "accuracy": accuracy(qmodel, *test),
        "size_bytes": int(report.size_bytes),
        "seconds": round(seconds, 2),
    }


def ptq_run(model, bits_w, bits_a, calib, test, config=None):
    start = time.perf_counter()
    q = autoqnn.quantize(
        model, weight_bits=bits_w, activation_bits=bits_a, calibration_data=calib, config=config
    )
    return run_row(f"W{bits_w}A{bits_a} PTQ", q, test, time.perf_counter() - start, bits_a)


def qat_run(model, bits_w, bits_a, calib, train, test, epochs, learning_rate, verbose,
            scheme="uniform"):
    """QAT from the float weights; `scheme` is used for weights and activations."""
    start = time.perf_counter()
    q = autoqnn.quantize(model, scheme=scheme, weight_bits=bits_w, activation_bits=bits_a,
                         activation_scheme=scheme, input_bits=8, calibration_data=calib,
                         fold_batchnorm=False, config=low_bit_config(model))
    compile_model(q, learning_rate)
    q.fit(*train, epochs=epochs, batch_size=128, verbose=verbose)
    seconds = time.perf_counter() - start
    final = autoqnn.finalize(q)  # BN folded: the deployable model (accuracy and size)
    row = run_row(f"W{bits_w}A{bits_a} QAT {scheme} ({epochs} ep)", final, test, seconds, bits_a)
    row["trained_accuracy"] = accuracy(q, *test)  # before the fold (per-channel: the same)
    row["learning_rate"] = learning_rate
    row["fold_batchnorm"] = False
    signed = [layer.name for layer in autoqnn.activation_quantizers(q)
              if "signed" in layer.state and float(np.asarray(layer.state["signed"])) > 0]
    if scheme == "lsq":
        row["lsq_signed_activations"] = signed  # from calibration: only the logits'
    return row


def float_continued_run(model, train, test, epochs, learning_rate, verbose):
    """The float model trained `epochs` more with the QAT rows' optimizer settings (a copy:
    the QAT rows start from the reference model)."""
    start = time.perf_counter()
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    compile_model(copy, learning_rate)
    copy.fit(*train, epochs=epochs, batch_size=128, verbose=verbose)
    return {
        "method": f"float + {epochs} ep (lr {learning_rate:g})",
        "weight_bits_avg": 32,
        "activation_bits": 32,
        "accuracy": accuracy(copy, *test),
        "size_bytes": int(copy.count_params() * 4),
        "seconds": round(time.perf_counter() - start, 2),
        "learning_rate": learning_rate,
    }


def timing(model, train, calib):
    x, y = train[0][:128], train[1][:128]
    float_step = step_seconds(model, x, y)
    qat_model = autoqnn.quantize(model, weight_bits=4, activation_bits=4, calibration_data=calib)
    qat_step = step_seconds(qat_model, x, y)
    # Folding removes the BN work, which flatters the ratio: measure unfolded too.
    unfolded = autoqnn.quantize(
        model, weight_bits=4, activation_bits=4, calibration_data=calib, fold_batchnorm=False
    )
    unfolded_step = step_seconds(unfolded, x, y)
    autoqnn.quantize(model, calibration_data=calib[:64])  # warm-up of the tracing caches
    start = time.perf_counter()
    autoqnn.quantize(model, calibration_data=calib[:512])
    quantize_seconds = time.perf_counter() - start
    return {
        "float_step_s": round(float_step, 4),
        "qat_step_s": round(qat_step, 4),
        "qat_step_ratio": round(qat_step / float_step, 3),
        "qat_step_unfolded_bn_s": round(unfolded_step, 4),
        "qat_step_ratio_unfolded_bn": round(unfolded_step / float_step, 3),
        "quantize_with_512_calibration_s": round(quantize_seconds, 3),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default=None,
        help="fashion_mnist.npz (default: $AUTOQNN_DATA, ../shared/data, else the bundled subset)",
    )
    parser.add_argument("--model", choices=MODELS, default="cnn")
    parser.add_argument("--epochs", type=int, default=5, help="float training epochs")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=20000)
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--tuner", action="store_true", help="add the PTQ tuner measurements")
    parser.add_argument("--export", action="store_true", help="add the TFLite export measurements")
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args(argv)

    train, test = load_data(args.data, args.train_subset, args.test_subset)
    calib = train[0][:512]
    model, train_seconds = train_reference(args.model, train, args.epochs, verbose=args.verbose)
    result = {
        "model": args.model,
        "command": "python tools/benchmark.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": {"train": len(train[0]), "test": len(test[0])},
        "epochs": args.epochs,
        "qat_epochs": args.qat_epochs,
        "float": {
            "accuracy": accuracy(model, *test),
            "size_bytes": int(model.count_params() * 4),
            "train_seconds": round(train_seconds, 1),
        },
        "runs": [],
    }
    print(f"{args.model}: float accuracy {100 * result['float']['accuracy']:.2f}%", flush=True)
    runs = result["runs"]
    runs.append(ptq_run(model, 8, 8, calib, test))
    runs.append(ptq_run(model, 4, 8, calib, test))
    for learning_rate in sorted({lr for _, lr in QAT_SETTINGS}):
        runs.append(float_continued_run(model, train, test, args.qat_epochs, learning_rate,
                                        args.verbose))
    for bits, learning_rate in QAT_SETTINGS:
        for scheme in ("uniform", "lsq"):
            runs.append(qat_run(model, bits, bits, calib, train, test, args.qat_epochs,
                                learning_rate, args.verbose, scheme))
    for row in runs:
        print(
            f"  {row['method']:30s} acc {100 * row['accuracy']:6.2f}%  w bits "
            f"{row['weight_bits_avg']:5.2f}  size {row['size_bytes'] / 1024:8.1f} KiB  "
            f"{row['seconds']:7.1f}s",
            flush=True,
        )
    result["timing"] = timing(model, train, calib)
    print(f"  timing: {result['timing']}", flush=True)
    if args.tuner:
        from bench_tuner import run_tuner_bench

        result["tuner"] = run_tuner_bench(args.data, models=(args.model,), epochs=args.epochs,
                                          train_subset=args.train_subset,
                                          test_subset=args.test_subset, verbose=args.verbose)
    if args.export:
        from bench_export import run_export_bench

        result["export"] = run_export_bench(args.model, model, test, calib)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
