"""Accuracy at <= 4 bits (issue 9): QAT variants with and without distillation, ASD, AdaRound.

    python tools/bench_lowbit.py --data ../shared/data/fashion_mnist.npz \
        --model cnn mobilenet --qat-epochs 5 --json results/lowbit.json

On each reference model (the float model of tools/benchmark.py, trained 5 epochs on the
first 20k training images), one run measures:

- **QAT** at W4A4 and W2A2, `autoqnn.finetune` for `--qat-epochs` epochs, each with and
  without distillation from the float model:
  * `per-tensor`: uniform weights and activations, one range per tensor (BatchNorm
    folded while training: a per-tensor grid cannot follow a later fold);
  * `per-channel`: uniform per-channel weights, per-tensor activations (BatchNorm unfolded);
  * `acd+sqnr`: ACD (SAWB-initialised learned per-channel weight clips, learned per-channel
    activation clips with asymmetric decay, started from MSE calibration; BatchNorm
    unfolded) and the SQNR term (`--sqnr-weight`). Its
    accuracy is given as trained (per-channel activation ranges) and after
    `per_tensor_activations` (recalibrated per-tensor ranges at the same bits, and at 8
    bits: what TFLite can run);
  * `acd-pt+sqnr`: the same with one learned activation clip pair per tensor (ACD's decay
    and SQNR term), which TFLite runs as trained.
  The first and last weighted layers stay at 8 bits in every QAT row (as in benchmark.py).
  A "float + N ep" row trains the float model the same epochs with the same optimizer
  (`autoqnn.finetune.qat_optimizer`, same learning rate, best validation epoch kept).
- **ASD vs uniform weight-only PTQ** (no retraining): accuracy, size, adders.
- **nearest vs AdaRound PTQ** at W4A8 and W3A8: accuracy and calibration seconds.

Nothing is chosen on the test split: the validation split (2000 training images after the
first 20k) picks the best epoch; learning rates, epochs and γ are fixed arguments; the
test split is only evaluated.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import keras  # noqa: E402
from common import (  # noqa: E402
    accuracy,
    float_continued,
    load_splits,
    reference_parser,
    train_reference,
    write_json,
)

import autoqnn  # noqa: E402
from autoqnn.models import first_and_last_layers  # noqa: E402

LEARNING_RATES = {4: 2e-4, 2: 1e-3}
"""Peak learning rate per bits (benchmark.py's QAT settings)."""
METHODS = ("per-tensor", "per-channel", "acd+sqnr", "acd-pt+sqnr")


def keep_ends(model):
    first, last = first_and_last_layers(model)
    return {first: {"weight_bits": 8}, last: {"weight_bits": 8, "activation_bits": 8}}


def quantize_for(method, model, bits, calib):
    """Per-channel weights train with BatchNorm unfolded (folding afterwards is exact);
    per-tensor weights train folded (a per-tensor grid cannot follow a later fold). ACD
    clips start from MSE calibration (better than max on the validation split at W2A2)."""
    common = dict(weight_bits=bits, activation_bits=bits, input_bits=8, calibration_data=calib,
                  config=keep_ends(model))
    if method == "per-tensor":
        return autoqnn.quantize(model, granularity="per_tensor", fold_batchnorm=True, **common)
    if method == "per-channel":
        return autoqnn.quantize(model, granularity="per_channel", fold_batchnorm=False, **common)
    options = {"granularity": "per_tensor"} if method == "acd-pt+sqnr" else None
    return autoqnn.quantize(model, scheme="acd", activation_scheme="acd", fold_batchnorm=False,
                            calibration_method="mse", activation_options=options, **common)


def float_row(model, train, val, test, epochs, learning_rate):
    return {**float_continued(model, train, val, test, epochs, learning_rate), "bits": 32}


def qat_row(method, distill, model, bits, train, val, test, calib, epochs, sqnr_weight):
    keras.utils.set_random_seed(0)  # same shuffles for every row (runs differ by a few %)
    start = time.perf_counter()
    q = quantize_for(method, model, bits, calib)
    history = autoqnn.finetune(q, train, epochs=epochs, val_data=val,
                               teacher=model if distill else None,
                               sqnr_weight=sqnr_weight if "sqnr" in method else 0.0,
                               learning_rate=LEARNING_RATES[bits], verbose=0)
    seconds = time.perf_counter() - start
    final = autoqnn.finalize(q)
    row = {"method": f"W{bits}A{bits} {method}" + (" + KD" if distill else ""), "bits": bits,
           "distill": distill, "accuracy": accuracy(final, *test),
           "val_accuracy": max(history["val_accuracy"]),
           "weight_bits_avg": round(final.autoqnn_report.weight_bits_avg, 3),
           "size_bytes": int(final.autoqnn_report.size_bytes),
           "learning_rate": LEARNING_RATES[bits], "seconds": round(seconds, 1),
           "history": {k: [round(v, 5) for v in vals] for k, vals in history.items()}}
    if method == "acd+sqnr":
        flat = autoqnn.per_tensor_activations(final, calibration_data=calib)
        row["accuracy_per_tensor_activations"] = accuracy(flat, *test)
        int8 = autoqnn.per_tensor_activations(final, calibration_data=calib, bits=8)
        row["accuracy_per_tensor_int8_activations"] = accuracy(int8, *test)
    if "sqnr" in method:
        row["sqnr_weight"] = sqnr_weight
    return row


def asd_rows(model, calib, test):
    rows = []
    for name, scheme, bits in (("uniform", "uniform", 4), ("asd", "asd", 4), ("asd", "asd", 5),
                               ("asd", "asd", 6)):
        start = time.perf_counter()
        q = autoqnn.quantize(model, scheme=scheme, weight_bits=bits, activation_bits=None,
                             calibration_data=calib)
        row = {"method": f"W{bits} {name} PTQ (weights only)", "bits": bits,
               "accuracy": accuracy(q, *test), "size_bytes": int(q.autoqnn_report.size_bytes),
               "seconds": round(time.perf_counter() - start, 2)}
        if scheme == "asd":
            adders = autoqnn.adder_report(q)
            row["adders_per_sample"] = int(adders.adders)
            row["digits_per_weight"] = round(sum(r.nonzero_digits for r in adders.layers)
                                             / max(1, sum(r.weights for r in adders.layers)), 3)
        rows.append(row)
    return rows


def rounding_rows(model, calib, test):
    rows = []
    for bits in (4, 3):
        for rounding in ("nearest", "adaround"):
            ptq = autoqnn.PTQConfig(weight_bits=bits, activation_bits=8, rounding=rounding)
            start = time.perf_counter()
            q = autoqnn.quantize(model, calibration_data=calib, ptq=ptq)
            rows.append({"method": f"W{bits}A8 PTQ {rounding}", "bits": bits,
                         "accuracy": accuracy(q, *test),
                         "calibration_seconds": round(time.perf_counter() - start, 2)})
    return rows


def main(argv=None):
    parser = reference_parser(__doc__.splitlines()[0])
    parser.add_argument("--qat-epochs", type=int, default=5)
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--distill", choices=["both", "yes", "no"], default="both")
    parser.add_argument("--sqnr-weight", type=float, default=0.02)
    parser.add_argument("--skip", nargs="*", default=[], choices=["qat", "asd", "rounding"])
    args = parser.parse_args(argv)
    train, val, test = load_splits(args.data, args.train_subset)
    calib = train[0][:512]
    distills = {"both": (False, True), "yes": (True,), "no": (False,)}[args.distill]
    out = {"command": "python tools/bench_lowbit.py " + " ".join(argv or sys.argv[1:]),
           "data": {"train": len(train[0]), "val": len(val[0]), "test": len(test[0])},
           "models": {}}
    for name in args.model:
        model, _ = train_reference(name, train, args.epochs)
        result = {"float_accuracy": accuracy(model, *test), "rows": []}
        out["models"][name] = result
        if "asd" not in args.skip:
            result["rows"] += asd_rows(model, calib, test)
        if "rounding" not in args.skip:
            result["rows"] += rounding_rows(model, calib, test)
        if "qat" not in args.skip:
            for lr in sorted({LEARNING_RATES[b] for b in args.bits}):
                result["rows"].append(float_row(model, train, val, test, args.qat_epochs, lr))
                write_json(args.json, out)
            for bits in args.bits:
                for method in args.methods:
                    for distill in distills:
                        row = qat_row(method, distill, model, bits, train, val, test, calib,
                                      args.qat_epochs, args.sqnr_weight)
                        result["rows"].append(row)
                        print(name, row["method"], row["accuracy"], row["seconds"], flush=True)
                        write_json(args.json, out)
        write_json(args.json, out)
    for name, result in out["models"].items():
        print(f"{name}: float {result['float_accuracy']:.4f}")
        for row in result["rows"]:
            extra = row.get("accuracy_per_tensor_activations")
            extra = f"  per-tensor acts {extra:.4f}" if extra is not None else ""
            print(f"  {row['method']:<40} {row['accuracy']:.4f}{extra}")
    return out


if __name__ == "__main__":
    main()
