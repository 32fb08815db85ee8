"""Export benchmark: our `.tflite` files beside the converter's int8 and the peers'.

For each reference model (autoqnn/models.py, trained once and cached by
tools/common.py) and the same float weights, one run measures:

* float: the TFLite converter's float file;
* tflite_int8: the converter's own full-integer PTQ (representative dataset);
* autoqnn W8A8, W4A8 (storage "narrow" / "xnnpack" / "int8"), a searched
  3.0-bit model (`weight_bits_budget=3.0`, storage "narrow" and "xnnpack"),
  and the W4 weight-only file (`activations="float"`);
* AI Edge Quantizer recipes on the float file (static wi8 ai8, static wi4 ai8,
  dynamic wi4, weight-only wi4; its recipe search when the installed version
  has one) and Keras 3's `quantize("int8")` + `export(format="litert")`. A peer
  that cannot run is a row whose `error` says why.

Columns: file bytes (and the ratio to float), accuracy of the LiteRT file on
the test split (and of the Keras quantized model, and the largest
Keras-vs-LiteRT difference in output steps, for ours), LiteRT latency of one
image at 1 and 2 threads (median of --rounds x --invokes, all files
interleaved in each round, so a busy machine slows them alike) and its ratio
to tflite_int8 within the run.

Usage:
    nice -n 10 python tools/bench_export.py --model cnn mobilenet \\
        --json results/bench_export.json
"""

from __future__ import annotations

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
from common import load_data, reference_parser, train_reference, write_json  # noqa: E402

import autoqnn  # noqa: E402
from autoqnn.export import run_tflite  # noqa: E402
from autoqnn.export.tflite import quantize_input  # noqa: E402


def _reason(text: str) -> str:
    """The readable part of an error line (the converter prefixes MLIR locations)."""
    line = next((ln for ln in text.splitlines() if "error: " in ln), text.splitlines()[0]
                if text else "")
    line = line.split("error: ", 1)[-1]
    return line.rsplit(")): ", 1)[-1].strip() if line.startswith("loc(") else line.strip()


def _error(err) -> str:
    return f"{type(err).__name__}: {_reason(str(err))[:400]}"


def convert_float(model) -> bytes:
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def convert_int8(model, calibration_x) -> bytes:
    """The TFLite converter's own full-integer PTQ (representative dataset)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calibration_x[i:i + 1]]
                                                 for i in range(len(calibration_x)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def aeq_files(float_path, calibration_x) -> dict:
    """`{row name: bytes or error string}` of the AI Edge Quantizer recipes."""
    try:
        from ai_edge_quantizer import quantizer, recipe, recipe_manager
    except ImportError as err:
        return {"aeq (all recipes)": f"not installed ({err}); pip install ai-edge-quantizer"}
    from ai_edge_litert.interpreter import Interpreter

    signature = Interpreter(model_path=str(float_path)).get_signature_list()
    key = next(iter(signature))
    name = signature[key]["inputs"][0]
    calibration = {key: [{name: calibration_x[i:i + 1]} for i in range(len(calibration_x))]}

    def wi4_ai8():
        manager = recipe_manager.RecipeManager()
        manager.add_static_config(regex=".*", operation_name=recipe.TFLOperationName.ALL_SUPPORTED,
                                  activation_num_bits=8, weight_num_bits=4)
        return manager.get_quantization_recipe()

    recipes = {"aeq_static_wi8_ai8": recipe.static_wi8_ai8, "aeq_static_wi4_ai8": wi4_ai8,
               "aeq_dynamic_wi4": recipe.dynamic_wi4_afp32,
               "aeq_weight_only_wi4": recipe.weight_only_wi4_afp32}
    files = {}
    for row, make in recipes.items():
        try:
            qt = quantizer.Quantizer(str(float_path))
            qt.load_quantization_recipe(make())
            result = qt.quantize(qt.calibrate(calibration) if qt.need_calibration else None)
            files[row] = bytes(result.quantized_model)
        except Exception as err:  # a recipe the installed version cannot run: its row says why
            files[row] = _error(err)
    from importlib.metadata import version as package_version

    version = package_version("ai-edge-quantizer")
    if not any(hasattr(mod, "auto_quant") for mod in (quantizer, recipe)):
        files["aeq_recipe_search"] = f"ai-edge-quantizer {version} has no recipe search"
    return files


def keras_litert_file(model, tmp) -> bytes | str:
    """Keras 3's own int8: `model.quantize("int8")` then `export(format="litert")`."""
    import keras

    try:
        twin = keras.models.clone_model(model)
        twin.set_weights(model.get_weights())
        twin.quantize("int8")
        path = Path(tmp) / "keras_int8.tflite"
        twin.export(str(path), format="litert", verbose=False)
        return path.read_bytes()
    except Exception as err:
        return _error(err)


def latencies(paths: dict, sample, threads, rounds, invokes) -> dict:
    """`{name: median ms}` per file at `threads`, files interleaved in each round."""
    from ai_edge_litert.interpreter import Interpreter

    interpreters = {}
    for name, path in paths.items():
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], (1,) + sample.shape)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], quantize_input(sample[None], detail))
        for _ in range(10):
            interpreter.invoke()
        interpreters[name] = interpreter
    times = {name: [] for name in paths}
    for _ in range(rounds):
        for name, interpreter in interpreters.items():
            for _ in range(invokes):
                start = time.perf_counter()
                interpreter.invoke()
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}


def our_files(model, calibration_x, tmp) -> tuple[dict, dict]:
    """`({row: TFLiteExport or error}, {row: Keras quantized model})` of our variants."""
    quantized, files, inexact = {}, {}, {}

    def add(row, key, make_model, **options):
        try:
            if key not in quantized:
                quantized[key] = make_model()
            path = Path(tmp) / f"{row}.tflite"
            try:
                files[row] = autoqnn.export_tflite(quantized[key], path, **options)
            except autoqnn.export.ExportError as err:
                if "inexact='requantize'" not in str(err):
                    raise
                # Levels off the symmetric int8 grid (asymmetric weights): exported
                # re-quantized, and the row says so.
                files[row] = autoqnn.export_tflite(quantized[key], path, inexact="requantize",
                                                   **options)
                inexact[row] = _error(err)
        except Exception as err:
            files[row] = _error(err)

    def uniform(bits, activation_bits=8):
        return lambda: autoqnn.quantize(model, weight_bits=bits, activation_bits=activation_bits,
                                        calibration_data=calibration_x, verbose=0)

    add("autoqnn_w8a8", "w8", uniform(8))
    for storage in ("narrow", "xnnpack", "int8"):
        add(f"autoqnn_w4a8_{storage}", "w4", uniform(4), storage=storage)
    searched = lambda: autoqnn.quantize(model, calibration_data=calibration_x,  # noqa: E731
                                        weight_bits_budget=3.0, verbose=0)
    for storage in ("narrow", "xnnpack"):
        add(f"autoqnn_searched3.0_{storage}", "searched", searched, storage=storage)
    add("autoqnn_w4_weight_only", "w4_float", uniform(4, None), activations="float")
    models = {row: quantized[key] for row, key in (
        ("autoqnn_w8a8", "w8"), ("autoqnn_w4a8_narrow", "w4"), ("autoqnn_w4a8_xnnpack", "w4"),
        ("autoqnn_w4a8_int8", "w4"), ("autoqnn_searched3.0_narrow", "searched"),
        ("autoqnn_searched3.0_xnnpack", "searched"), ("autoqnn_w4_weight_only", "w4_float"))
        if key in quantized}
    return files, models, inexact


def run_model(model_name, model, test, calibration_x, rounds, invokes) -> list[dict]:
    """All rows of one reference model (see the module docstring)."""
    x_test, y_test = test
    rows, paths = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        def write(row, data):
            path = Path(tmp) / f"{row}.tflite"
            path.write_bytes(data)
            paths[row] = path

        write("float", convert_float(model))
        write("tflite_int8", convert_int8(model, calibration_x[:200]))
        ours, qmodels, inexact = our_files(model, calibration_x, tmp)
        peers = aeq_files(paths["float"], calibration_x[:100])
        peers["keras_quantize_int8_litert"] = keras_litert_file(model, tmp)
        errors = {}
        for row, result in ours.items():
            if isinstance(result, str):
                errors[row] = result
            else:
                paths[row] = Path(result.path)
        for row, result in peers.items():
            if isinstance(result, str):
                errors[row] = result
            else:
                write(row, result)
        ms = {threads: latencies(paths, x_test[0], threads, rounds, invokes) for threads in (1, 2)}
        float_bytes = paths["float"].stat().st_size
        for row, path in paths.items():
            logits = run_tflite(path, x_test, batch_size=500)
            entry = {"model": model_name, "variant": row, "bytes": path.stat().st_size,
                     "ratio_to_float": path.stat().st_size / float_bytes,
                     "tflite_accuracy": float(np.mean(np.argmax(logits, -1) == y_test)),
                     "latency_ms_1t": ms[1][row], "latency_ms_2t": ms[2][row],
                     "latency_vs_tflite_int8_1t": ms[1][row] / ms[1]["tflite_int8"],
                     "latency_vs_tflite_int8_2t": ms[2][row] / ms[2]["tflite_int8"]}
            if row in qmodels:
                info = ours[row]
                keras_logits = qmodels[row].predict(x_test, batch_size=500, verbose=0)
                entry["keras_accuracy"] = float(np.mean(np.argmax(keras_logits, -1) == y_test))
                step = info.output_quantization[0][0] or None
                diff = np.abs(logits - keras_logits)
                entry["max_diff_output_steps"] = (float(diff.max() / step) if step
                                                  else None)
                entry["max_abs_diff"] = float(diff.max())
                if row in inexact:
                    entry["requantized_because"] = inexact[row]
                entry["weight_dtypes"] = dict(sorted(
                    {d: list(info.weight_dtypes.values()).count(d)
                     for d in set(info.weight_dtypes.values())}.items()))
            rows.append(entry)
        rows += [{"model": model_name, "variant": row, "error": why} for row, why in errors.items()]
    return rows


def run_export_bench(model_name, float_model, test_data, calibration_x, rounds=10,
                     invokes=25) -> list[dict]:
    """The rows of one trained float model (tools/benchmark.py --export calls this)."""
    return run_model(model_name, float_model, test_data,
                     np.asarray(calibration_x, np.float32), rounds, invokes)


def _print(rows):
    cols = ("variant", "bytes", "ratio_to_float", "tflite_accuracy", "keras_accuracy",
            "max_diff_output_steps", "latency_ms_1t", "latency_vs_tflite_int8_1t",
            "latency_ms_2t", "latency_vs_tflite_int8_2t")
    print("  ".join(f"{c[:13]:>13}" for c in cols))
    for row in rows:
        if "error" in row:
            print(f"{row['variant'][:13]:>13}  cannot run: {row['error'][:150]}")
            continue
        cells = [row.get(c, "") for c in cols]
        print("  ".join(f"{v:>13.4f}" if isinstance(v, float) else f"{str(v)[:13]:>13}"
                        for v in cells))


def _cells(row):
    def cell(key, fmt):
        value = row.get(key)
        return "" if value is None else format(value, fmt)

    return cell


def markdown(result: dict) -> str:
    """The rows of a results JSON as a Markdown table (docs/export.md)."""
    lines = ["| model | variant | bytes | × float | LiteRT acc. | Keras acc. | max steps | "
             "ms 1T | × int8 1T | ms 2T | × int8 2T |", "|" + "---|" * 11]
    for row in result["rows"]:
        if "error" in row:
            kind, _, why = row["error"].partition(": ")
            why = f"{kind}: {_reason(why)[:200]}" if why else kind
            lines.append(f"| {row['model']} | {row['variant']} | cannot run: {why} |"
                         + " |" * 8)
            continue
        cell = _cells(row)
        lines.append(" | ".join([
            f"| {row['model']}", row["variant"] + (" (re-quantized)" if
                                                   "requantized_because" in row else ""),
            str(row["bytes"]), cell("ratio_to_float", ".3f"), cell("tflite_accuracy", ".4f"),
            cell("keras_accuracy", ".4f"), cell("max_diff_output_steps", ".0f"),
            cell("latency_ms_1t", ".3f"), cell("latency_vs_tflite_int8_1t", ".2f"),
            cell("latency_ms_2t", ".3f"), cell("latency_vs_tflite_int8_2t", ".2f")]) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = reference_parser(__doc__.split("\n")[0])
    parser.add_argument("--test-subset", type=int, default=None, help="default: all of it")
    parser.add_argument("--calibration", type=int, default=500, help="calibration images")
    parser.add_argument("--rounds", type=int, default=10, help="latency rounds")
    parser.add_argument("--invokes", type=int, default=25, help="invokes per file per round")
    parser.add_argument("--cache-dir", default="runs")
    parser.add_argument("--table", default=None, help="print this results JSON as Markdown")
    args = parser.parse_args(argv)
    if args.table:
        import json

        print(markdown(json.loads(Path(args.table).read_text())))
        return []
    train, test = load_data(args.data, args.train_subset, args.test_subset)
    rows = []
    for name in args.model:
        model, _ = train_reference(name, train, epochs=args.epochs, cache_dir=args.cache_dir)
        model_rows = run_model(name, model, test, train[0][: args.calibration], args.rounds,
                               args.invokes)
        print(f"\n{name}")
        _print(model_rows)
        rows += model_rows
    command = "python tools/bench_export.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_json(args.json, {"command": command, "models": args.model,
                           "data": {"train": len(train[0]), "test": len(test[0])},
                           "latency": {"rounds": args.rounds, "invokes_per_round": args.invokes,
                                       "image": "x_test[0]", "batch": 1},
                           "rows": rows})
    return rows


if __name__ == "__main__":
    main()
