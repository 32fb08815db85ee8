"""The vision transformer (issue 11): autoqnn PTQ, QAT and search beside Keras 3's own quantize.

    python tools/bench_vit.py --data ../shared/data/fashion_mnist.npz \
        --epochs 10 --qat-epochs 3 --json results/vit.json

Smoke run (minutes): ``--train-subset 2000 --epochs 1 --qat-epochs 1 --test-subset 1000``.

The float `vit` of `autoqnn.models` (patch embedding, position embedding, 3 pre-norm
encoder blocks of LayerNorm + MultiHeadAttention and LayerNorm + Dense-GELU-Dense, about
155k parameters) is trained with `tools/common.py`'s `train_reference` (cached in runs/)
on the first `--train-subset` training images. One run then measures, on the test split:

- **W8A8 and W4A8 PTQ** (`autoqnn.quantize`, max calibration on 512 training images):
  every weighted layer at the bits, MultiHeadAttention projections included; W8A8 also
  with `attention_activations` (query/key/value and attention probabilities quantized);
- **W4A4 QAT**: `autoqnn.finetune` for `--qat-epochs` epochs (first and last weighted
  layers at 8 bits, inputs at 8 bits, as in the other benchmarks), best validation epoch,
  beside a **float + N ep** row trained with the same optimizer
  (`autoqnn.finetune.qat_optimizer`, same learning rate, best validation epoch kept);
- **the sensitivity search** at <= `--budget` average weight bits (A8);
- **Keras 3 native** `model.quantize("int8")` and `"int4"` on a copy of the same float
  model (Dense, EinsumDense and Embedding layers; the patch-embedding Conv2D stays float);
- for every row: accuracy, the fraction of the float model's parameters that are
  quantized, average weight bits and size; the W8A8 row's TFLite export (int8, the
  attention core calibrated by the converter on `representative_data`) when `--tflite`.

Nothing is chosen on the test split: the validation split (2000 training images after
the training subset) picks the best QAT epoch; the test split is only evaluated.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
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

QAT_LEARNING_RATE = 2e-4
"""Peak learning rate of the W4A4 QAT row and of its float + N ep twin (bench_lowbit's)."""


def quantized_fraction(qmodel, model) -> float:
    """Quantized weight parameters / all parameters of the float model."""
    return sum(r.quantized_params for r in qmodel.autoqnn_report) / model.count_params()


def row(method, qmodel, model, test, seconds, activation_bits, **extra):
    report = qmodel.autoqnn_report
    return {"method": method, "accuracy": accuracy(qmodel, *test),
            "weight_bits_avg": round(report.weight_bits_avg, 3),
            "activation_bits": activation_bits,
            "quantized_fraction": round(quantized_fraction(qmodel, model), 4),
            "float_weighted_layers": len(report.float_layers),
            "size_bytes": int(report.size_bytes), "seconds": round(seconds, 1), **extra}


def ptq_row(model, bits_w, bits_a, calib, test, config=None, label=""):
    start = time.perf_counter()
    q = autoqnn.quantize(model, weight_bits=bits_w, activation_bits=bits_a,
                         calibration_data=calib, config=config)
    return q, row(f"W{bits_w}A{bits_a} PTQ{label}", q, model, test,
                  time.perf_counter() - start, bits_a)


def keep_ends(model):
    first, last = first_and_last_layers(model)
    return {first: {"weight_bits": 8}, last: {"weight_bits": 8, "activation_bits": 8}}


def qat_row(model, train, val, test, calib, epochs):
    keras.utils.set_random_seed(0)
    start = time.perf_counter()
    q = autoqnn.quantize(model, weight_bits=4, activation_bits=4, input_bits=8,
                         calibration_data=calib, config=keep_ends(model))
    history = autoqnn.finetune(q, train, epochs=epochs, val_data=val,
                               learning_rate=QAT_LEARNING_RATE, verbose=0)
    final = autoqnn.finalize(q)
    return row(f"W4A4 QAT ({epochs} ep, ends at 8 bits)", final, model, test,
               time.perf_counter() - start, 4,
               val_accuracy=round(max(history.get("val_accuracy", [float("nan")])), 4))


def float_row(model, train, val, test, epochs):
    row = float_continued(model, train, val, test, epochs, QAT_LEARNING_RATE)
    return {**row, "val_accuracy": round(row["val_accuracy"], 4), "weight_bits_avg": 32,
            "activation_bits": 32, "quantized_fraction": 0.0,
            "size_bytes": int(model.count_params() * 4)}


def search_row(model, calib, test, budget):
    start = time.perf_counter()
    result = autoqnn.search(model, calibration_data=calib, weight_bits_budget=budget,
                            activation_bits=8, verbose=0)
    return row(f"search (sensitivity) <= {budget:g} bits, A8", result.model, model, test,
               time.perf_counter() - start, 8, bits=result.bits())


def keras_native_row(model, mode, test):
    """Keras 3's `model.quantize(mode)` on a copy of the float model."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    sizes = {id(layer): int(np.prod(getattr(layer, attr).shape))
             for layer in copy._flatten_layers()
             for attr in ("kernel", "embeddings") if hasattr(layer, attr)
             and getattr(layer, attr, None) is not None}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Layer X does not have a quantize method"
        copy.quantize(mode)
    seconds = time.perf_counter() - start
    quantized = [layer for layer in copy._flatten_layers()
                 if getattr(layer, "quantization_mode", None) == mode]
    size = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in copy.weights)
    return {"method": f"Keras 3 native quantize('{mode}')", "accuracy": accuracy(copy, *test),
            "quantized_fraction": round(sum(sizes.get(id(layer), 0) for layer in quantized)
                                        / model.count_params(), 4),
            "quantized_layers": len(quantized), "float_layers_with_weights": sorted(
                layer.path for layer in copy._flatten_layers(include_self=False)
                if layer.weights and not layer._layers and layer not in quantized
                and not isinstance(layer, keras.layers.LayerNormalization)),
            "size_bytes": int(size), "seconds": round(seconds, 1)}


def tflite_row(qmodel, calib, test, samples):
    import tempfile

    from autoqnn.export import run_tflite

    start = time.perf_counter()
    path = Path(tempfile.mkdtemp()) / "vit_w8a8.tflite"
    info = autoqnn.export_tflite(qmodel, path, representative_data=calib[:200])
    x, y = test[0][:samples], test[1][:samples]
    predictions = run_tflite(info.path, x, batch_size=16).argmax(-1)
    keras_predictions = qmodel.predict(x, verbose=0).argmax(-1)
    return {"method": "W8A8 PTQ -> TFLite int8 (representative_data for the attention core)",
            "accuracy": float(np.mean(predictions == y)), "samples": len(x),
            "keras_accuracy_same_samples": float(np.mean(keras_predictions == y)),
            "keras_agreement": float(np.mean(predictions == keras_predictions)),
            "size_bytes": info.size_bytes, "seconds": round(time.perf_counter() - start, 1)}


def main(argv=None):
    parser = reference_parser(__doc__.splitlines()[0])
    parser.set_defaults(model=["vit"], epochs=10)
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--budget", type=float, default=4.0, help="average weight bits")
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--calibration-samples", type=int, default=512)
    parser.add_argument("--tflite", type=int, default=1000,
                        help="test images run through the exported W8A8 model (0: skip)")
    args = parser.parse_args(argv)
    train, val, test = load_splits(args.data, args.train_subset, test_subset=args.test_subset)
    calib = train[0][:args.calibration_samples]
    model, train_seconds = train_reference("vit", train, epochs=args.epochs)
    rows = [{"method": "float", "accuracy": accuracy(model, *test), "weight_bits_avg": 32,
             "activation_bits": 32, "quantized_fraction": 0.0,
             "size_bytes": int(model.count_params() * 4), "seconds": round(train_seconds, 1)}]
    print(f"float: {rows[0]['accuracy']:.4f} ({model.count_params()} parameters)", flush=True)
    w8, w8_row = ptq_row(model, 8, 8, calib, test)
    rows.append(w8_row)
    rows.append(ptq_row(model, 8, 8, calib, test, label=" + attention activations", config={
        keras.layers.MultiHeadAttention: {"attention_activations": True}})[1])
    rows.append(ptq_row(model, 4, 8, calib, test)[1])
    rows.append(qat_row(model, train, val, test, calib, args.qat_epochs))
    rows.append(float_row(model, train, val, test, args.qat_epochs))
    rows.append(search_row(model, calib, test, args.budget))
    rows.append(keras_native_row(model, "int8", test))
    rows.append(keras_native_row(model, "int4", test))
    if args.tflite:
        rows.append(tflite_row(w8, calib, test, args.tflite))
    for r in rows:  # the TFLite row: on its first `--tflite` test images only
        print(f"{r['method']:<64} acc {r['accuracy']:.4f}  quantized "
              f"{r.get('quantized_fraction', float('nan')):.3f}  {r['size_bytes'] / 1024:.1f} KiB",
              flush=True)
    float_accuracy = rows[0]["accuracy"]
    write_json(args.json, {
        "model": "vit", "parameters": int(model.count_params()), "epochs": args.epochs,
        "train_subset": len(train[0]), "test_samples": len(test[0]),
        "qat_epochs": args.qat_epochs, "float_accuracy": float_accuracy,
        "w8a8_report": [r for r in w8.autoqnn_report.to_dicts() if r["status"] != "no weights"],
        "rows": [{**r, "gap": None if "samples" in r else round(float_accuracy - r["accuracy"], 4)}
                 for r in rows]})


if __name__ == "__main__":
    main()
