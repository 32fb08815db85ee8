"""Quantizer costs and BatchNorm handling in QAT: the measurements behind issue 7's targets.

    python tools/bench_quantizer.py --data ../shared/data/fashion_mnist.npz \\
        --model cnn mobilenet --epochs 5 --train-subset 20000 --qat-epochs 2 \\
        --json results/quantizer.json

1. **Step cost** (median of 20 training steps after warm-up, batch 128): a float
   step with BatchNorm, and QAT steps at W4A4 with BatchNorm kept unfolded
   (`fold_batchnorm=False`) for fixed bits, trainable bits (weights and
   activations, QPL) and an 8-candidate scheme mixture on every weight (DNAS).
   Targets: <= 1.5x, <= 2x, <= 4x the float step.
2. **BatchNorm during QAT** (`--bn-qat`): W4A4 and W2A2 uniform QAT from the same
   float model with BN folded before training (`fold_batchnorm=True`) and BN
   trained unfolded then folded by `autoqnn.finalize` for export. Accuracy on the
   full test split of the finalized (exportable) model; the epochs, learning rates
   and the first/last layers at 8 bits are fixed beforehand, nothing is chosen on
   the test split.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import keras  # noqa: E402
from common import (  # noqa: E402
    accuracy,
    compile_model,
    load_data,
    reference_parser,
    step_seconds,
    train_reference,
    write_json,
)

import autoqnn  # noqa: E402
from autoqnn.models import first_and_last_layers  # noqa: E402

MIXTURE = [{"name": "uniform", "bits": 4, "granularity": "per_channel"},
           {"name": "uniform", "bits": 2, "granularity": "per_channel"},
           {"name": "pot", "bits": 4}, {"name": "apot", "bits": 4}, {"name": "ternary"},
           {"name": "binary"}, {"name": "lsq", "bits": 4}, {"name": "minifloat", "bits": 4}]
"""The 8 candidates of the mixture timing (one of each family)."""

QAT_SETTINGS = ((4, 2e-4), (2, 1e-3))


def keep_ends(model, extra=None):
    first, last = first_and_last_layers(model)
    config = {first: {"weight_bits": 8}, last: {"weight_bits": 8, "activation_bits": 8}}
    for name in config:
        config[name].update(extra or {})
    return config


def timing(model, calib, x, y):
    float_step = step_seconds(model, x, y)
    rows = {"float_step_s": round(float_step, 4)}
    variants = {
        "fixed_bits": {},
        "trainable_bits": {"weight_quantizer": {"trainable_bits": True},
                           "activation_quantizer": {"trainable_bits": True}},
        "mixture_8": {"weight_quantizer": {"candidates": MIXTURE}},
    }
    for name, override in variants.items():
        config = {".*": override} if override else {}
        qmodel = autoqnn.quantize(model, weight_bits=4, activation_bits=4,
                                  calibration_data=calib, fold_batchnorm=False, config=config)
        seconds = step_seconds(qmodel, x, y)
        rows[f"{name}_step_s"] = round(seconds, 4)
        rows[f"{name}_ratio"] = round(seconds / float_step, 3)
    return rows


def bn_qat(model, calib, train, test, epochs, verbose):
    rows = []
    for bits, learning_rate in QAT_SETTINGS:
        for folded in (True, False):
            keras.utils.set_random_seed(0)
            qmodel = autoqnn.quantize(model, weight_bits=bits, activation_bits=bits,
                                      input_bits=8, calibration_data=calib,
                                      fold_batchnorm=folded, config=keep_ends(model))
            compile_model(qmodel, learning_rate)
            start = time.perf_counter()
            qmodel.fit(*train, epochs=epochs, batch_size=128, verbose=verbose)
            seconds = time.perf_counter() - start
            trained = accuracy(qmodel, *test)
            final = autoqnn.finalize(qmodel)
            rows.append({
                "method": f"W{bits}A{bits} QAT, BN {'folded' if folded else 'unfolded'}",
                "bits": bits, "fold_batchnorm": folded, "epochs": epochs,
                "learning_rate": learning_rate, "qat_seconds": round(seconds, 1),
                "top1_trained": round(100 * trained, 2),
                "top1_finalized": round(100 * accuracy(final, *test), 2),
            })
            print(rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = reference_parser(__doc__.split("\n")[0])
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--bn-qat", action="store_true", help="also the BN folded/unfolded QAT")
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args(argv)
    train, test = load_data(args.data, args.train_subset)
    calib = train[0][-512:]
    out = {"command": " ".join(sys.argv), "models": {}}
    for name in args.model:
        model, _ = train_reference(name, train, epochs=args.epochs)
        entry = {"float_top1": round(100 * accuracy(model, *test), 2)}
        entry["timing"] = timing(model, calib, train[0][:128], train[1][:128])
        print(name, entry["timing"], flush=True)
        if args.bn_qat:
            entry["bn_qat"] = bn_qat(model, calib, train, test, args.qat_epochs, args.verbose)
        out["models"][name] = entry
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
