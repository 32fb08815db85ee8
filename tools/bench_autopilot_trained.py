"""The trained one call (`autoqnn.quantize(model, train_data=..., weight_bits_budget=b,
activation_bits=a, epochs=n)`) beside the fixed low-bit training recipes.

    python tools/bench_autopilot_trained.py --data ../shared/data/fashion_mnist.npz \\
        --model cnn mobilenet --bits 4 2 --qat-epochs 3 --json results/autopilot_trained.json

For each reference model (float trained `--epochs` on the first `--train-subset` training
images, cached under runs/) and each bit width b (`--bits`), in one run on the same float
weights, every row trains `--qat-epochs` epochs on the same training images with the
validation split (2000 training images after them) choosing the best epoch:

* `float + N ep`: the float model trained the same epochs (the reference for the gaps);
* fixed recipes at WbAb, first and last weighted layers at 8 bits, distilled from the
  float model (`tools/bench_lowbit.py`'s): `per-channel`, `acd-pt+sqnr`;
* `one call`: the trained autopilot at the fixed rows' average weight bits (so the same
  size), activation bits b, the same epochs (its probes come on top; their time counts).

Top-1 on the test split (`--test-subset`), which chooses nothing. Seconds are wall time in
this run: the one call's ratio to the `per-channel` row is its cost over a fine-tune alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import keras  # noqa: E402
from bench_lowbit import LEARNING_RATES, quantize_for  # noqa: E402
from common import (  # noqa: E402
    accuracy,
    float_continued,
    load_splits,
    reference_parser,
    train_reference,
    write_json,
)

import autoqnn  # noqa: E402

FIXED = ("per-channel", "acd-pt+sqnr")


def fixed_row(method, model, bits, train, val, test, calib, epochs):
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    qmodel = quantize_for(method, model, bits, calib)
    history = autoqnn.finetune(qmodel, train, epochs=epochs, val_data=val, teacher=model,
                               sqnr_weight=0.02 if "sqnr" in method else 0.0,
                               learning_rate=LEARNING_RATES[bits], verbose=0)
    report = qmodel.autoqnn_report
    return {"method": f"W{bits}A{bits} {method} + KD", "top1": round(100 * accuracy(
        qmodel, *test), 2), "val_top1": round(100 * max(history["val_accuracy"]), 2),
        "weight_bits_avg": round(report.weight_bits_avg, 3),
        "size_bytes": int(report.size_bytes),
        "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None):
    parser = reference_parser(__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 2])
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--test-subset", type=int, default=None)
    args = parser.parse_args(argv)
    train, val, test = load_splits(args.data, args.train_subset, 2000, args.test_subset)
    calib = train[0][:512]
    out = {"command": "python tools/bench_autopilot_trained.py " + " ".join(sys.argv[1:]),
           "data": {"train": len(train[0]), "val": len(val[0]), "test": len(test[0])},
           "qat_epochs": args.qat_epochs, "models": {}}
    for name in args.model:
        model, _ = train_reference(name, train, epochs=args.epochs)
        entry = {"float_top1": round(100 * accuracy(model, *test), 2), "bits": {}}
        out["models"][name] = entry
        for bits in args.bits:
            reference = float_continued(model, train, val, test, args.qat_epochs,
                                        LEARNING_RATES[bits])
            rows = [{"method": reference["method"], "top1": round(100 * reference["accuracy"], 2),
                     "val_top1": round(100 * reference["val_accuracy"], 2),
                     "seconds": reference["seconds"]}]
            for method in FIXED:
                rows.append(fixed_row(method, model, bits, train, val, test, calib,
                                      args.qat_epochs))
                print(f"{name} {rows[-1]['method']}: {rows[-1]['top1']}", flush=True)
            budget = max(r["weight_bits_avg"] for r in rows[1:])
            keras.utils.set_random_seed(0)
            start = time.perf_counter()
            qmodel = autoqnn.quantize(model, train_data=train, val_data=val,
                                      weight_bits_budget=budget, activation_bits=bits,
                                      epochs=args.qat_epochs, verbose=0)
            seconds = time.perf_counter() - start
            choice = qmodel.autoqnn_report.recipe
            report = qmodel.autoqnn_report
            rows.append({"method": f"one call (<= {budget} bits, A{bits})",
                         "top1": round(100 * accuracy(qmodel, *test), 2),
                         "weight_bits_avg": round(report.weight_bits_avg, 3),
                         "size_bytes": int(report.size_bytes), "seconds": round(seconds, 1),
                         "chosen": choice.chosen, "choice": choice.to_dict()})
            print(f"{name} one call: {rows[-1]['top1']} ({choice.chosen}, {seconds:.0f} s)",
                  flush=True)
            fine_tune_alone = rows[1]["seconds"]
            entry["bits"][str(bits)] = {
                "rows": rows,
                "one_call_minus_best_fixed": round(rows[-1]["top1"] - max(
                    r["top1"] for r in rows[1:-1]), 2),
                "one_call_gap_to_float_plus_epochs": round(rows[0]["top1"] - rows[-1]["top1"], 2),
                "one_call_seconds_over_fine_tune": round(seconds / fine_tune_alone, 2)}
            write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
