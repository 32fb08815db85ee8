"""Export benchmark: TFLite file size, LiteRT latency, TFLite-vs-Keras parity, packed size.

For a reference model (autoqnn/models.py) it measures, next to the float
TFLite file and the TFLite converter's own post-training int8 quantization
(the peer, calibrated on the same images):

* autoqnn W8A8 and W4A8 exported with `export_tflite` (int4 Dense kernels by
  default, and W4A8 with int4="all": int4 convolutions too);
* file bytes (and the ratio to the float file), latency per image (LiteRT,
  1 thread, batch 1, median over --runs invokes), test accuracy of the Keras
  quantized model and of its TFLite file, the largest logit difference in
  output quantization steps;
* the `.aqnn` packed size next to Σ params·bits/8.

Usage:
    python tools/bench_export.py --data ../shared/data/fashion_mnist.npz --model cnn \\
        --epochs 1 --train-subset 6000 --json results/bench_export_cnn.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import accuracy, load_data, train_reference  # noqa: E402

import autoqnn  # noqa: E402
from autoqnn.export import run_tflite  # noqa: E402


def latency_ms(path, sample, runs=100) -> float:
    """Median LiteRT latency (ms) of one image: 1 thread, batch 1."""
    from ai_edge_litert.interpreter import Interpreter

    from autoqnn.export.tflite import quantize_input

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], (1,) + sample.shape)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], quantize_input(sample[None], detail))
    for _ in range(10):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def tflite_accuracy(path, x, y) -> tuple[float, np.ndarray]:
    logits = run_tflite(path, x, num_threads=1, batch_size=256)
    return float(np.mean(np.argmax(logits, -1) == y)), logits


def _convert_float(model, path):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    Path(path).write_bytes(converter.convert())


def _convert_peer(model, path, calibration_x):
    """The TFLite converter's own full-integer PTQ (representative dataset)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calibration_x[i:i + 1]]
                                                 for i in range(len(calibration_x)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    Path(path).write_bytes(converter.convert())


def run_export_bench(model_name, float_model, test_data, calibration_x, runs=100) -> list[dict]:
    """Measures the export variants of one trained float model (see the module docstring).

    Args:
        model_name: label for the rows ("cnn", "mobilenet").
        float_model: the trained float Keras model.
        test_data: `(x_test, y_test)`.
        calibration_x: images to calibrate activations on (and the peer's
            representative dataset).
        runs: latency invokes per file (median).

    Returns:
        One dict per variant.
    """
    x_test, y_test = test_data
    calibration_x = np.asarray(calibration_x, np.float32)
    sample = x_test[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        float_path = Path(tmp) / "float.tflite"
        _convert_float(float_model, float_path)
        float_bytes = float_path.stat().st_size
        float_acc_tfl, _ = tflite_accuracy(float_path, x_test, y_test)
        rows.append({"model": model_name, "variant": "float", "bytes": float_bytes,
                     "ratio_to_float": 1.0, "latency_ms": latency_ms(float_path, sample, runs),
                     "keras_accuracy": accuracy(float_model, x_test, y_test),
                     "tflite_accuracy": float_acc_tfl})
        peer_path = Path(tmp) / "peer.tflite"
        _convert_peer(float_model, peer_path, calibration_x[:200])
        peer_acc, _ = tflite_accuracy(peer_path, x_test, y_test)
        rows.append({"model": model_name, "variant": "tflite_ptq_int8 (peer)",
                     "bytes": peer_path.stat().st_size,
                     "ratio_to_float": peer_path.stat().st_size / float_bytes,
                     "latency_ms": latency_ms(peer_path, sample, runs),
                     "tflite_accuracy": peer_acc})
        variants = [("autoqnn_w8a8", 8, True), ("autoqnn_w4a8", 4, True),
                    ("autoqnn_w4a8_int4_all", 4, "all")]
        qmodels = {}
        for name, bits, int4 in variants:
            if bits not in qmodels:
                qmodels[bits] = autoqnn.quantize(float_model, weight_bits=bits,
                                                 calibration_data=calibration_x)
            qmodel = qmodels[bits]
            path = Path(tmp) / f"{name}.tflite"
            info = autoqnn.export_tflite(qmodel, path, int4=int4)
            keras_logits = qmodel.predict(x_test, batch_size=256, verbose=0)
            keras_acc = float(np.mean(np.argmax(keras_logits, -1) == y_test))
            tfl_acc, tfl_logits = tflite_accuracy(path, x_test, y_test)
            steps = np.abs(tfl_logits - keras_logits) / info.output_quantization[0][0]
            packed = autoqnn.export_packed(qmodel, Path(tmp) / f"{name}.aqnn")
            restored = autoqnn.load_packed(packed.path)
            same = bool(np.array_equal(restored.predict(x_test[:256], verbose=0),
                                       keras_logits[:256]))
            rows.append({
                "model": model_name, "variant": name, "bytes": info.size_bytes,
                "ratio_to_float": info.size_bytes / float_bytes,
                "latency_ms": latency_ms(path, sample, runs),
                "keras_accuracy": keras_acc, "tflite_accuracy": tfl_acc,
                "accuracy_gap": abs(tfl_acc - keras_acc),
                "max_logit_diff_steps": float(steps.max()),
                "bit_exact_fraction": float(np.mean(steps < 0.5)),
                "weight_dtypes": sorted(set(info.weight_dtypes.values())),
                "packed_bytes": packed.size_bytes, "ideal_bytes": packed.ideal_bytes,
                "packed_overhead": packed.overhead, "packed_round_trip_identical": same,
            })
    for row in rows:
        row["latency_ratio_to_float"] = row["latency_ms"] / rows[0]["latency_ms"]
    return rows


def _print(rows):
    cols = ("variant", "bytes", "ratio_to_float", "latency_ms", "latency_ratio_to_float",
            "keras_accuracy", "tflite_accuracy", "max_logit_diff_steps", "packed_bytes",
            "ideal_bytes", "packed_overhead")
    print("  ".join(f"{c[:14]:>14}" for c in cols))
    for row in rows:
        cells = []
        for c in cols:
            v = row.get(c, "")
            cells.append(f"{v:>14.4f}" if isinstance(v, float) else f"{str(v)[:14]:>14}")
        print("  ".join(cells))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="npz with x_train/y_train/x_test/y_test")
    parser.add_argument("--model", choices=("cnn", "mobilenet"), default="cnn")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--calibration", type=int, default=500, help="calibration images")
    parser.add_argument("--runs", type=int, default=100, help="latency invokes (median)")
    parser.add_argument("--cache-dir", default="runs")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    train, test = load_data(args.data, args.train_subset, args.test_subset)
    model, _ = train_reference(args.model, train, epochs=args.epochs, cache_dir=args.cache_dir)
    rows = run_export_bench(args.model, model, test, train[0][: args.calibration],
                            runs=max(100, args.runs))
    _print(rows)
    if args.json:
        command = "python tools/bench_export.py " + " ".join(sys.argv[1:] if argv is None
                                                             else argv)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": command, "model": args.model,
                                               "data": {"train": len(train[0]),
                                                        "test": len(test[0])},
                                               "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
