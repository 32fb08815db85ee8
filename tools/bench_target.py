"""Target benchmark: the sensitivity search with `target="litert"` against uniform files.

For each reference model (autoqnn/models.py, the cached trained float weights of
tools/common.py), one run on the same weights writes and measures these `.tflite` files:

* `w8a8`, `w4a8` (storage "narrow": int4 convolutions, on LiteRT's reference kernel) and
  `w4a8_xnnpack` (int8 convolutions): uniform `autoqnn.quantize`;
* `search3.0`: `autoqnn.search(weight_bits_budget=3.0)` without a target (3-bit layers
  are stored int4: the file is not smaller than W4A8's);
* `litert3.0`: the same budget with `target="litert"`: candidates LiteRT stores at
  their own width (int2 only for fully connected), so 3.0 average bits is 3.0 bits of
  the file's weights (a 3.0-bit-equivalent byte budget);
* `*_mse` rows: the same search with the PTQ recipe `RECIPE` (symmetric weights, MSE
  weight clipping: a better 2-bit fully connected layer), chosen on a validation split
  carved from the training images (never the test split);
* `litert3.9_mse`: 3.9 bits (mobilenet's convolutions hold most weights and LiteRT has
  no int2 convolution: 3.0 bits is below its smallest file);
* `litert_w4a8_bytes_mse`: `size_budget_bytes` = the W4A8 file's bytes;
* `litert_mid_mse`: `size_budget_bytes` halfway between the W4A8 and W8A8 files and
  `latency_budget_ms` halfway between their latencies (timed just before): the search
  must choose which layers pay bytes and which pay time.

Columns: file bytes (and the budget), accuracy of the LiteRT file on the full test split,
LiteRT latency at 1 thread (median of --rounds x --invokes, all files interleaved, after
every search), the policy, and the search's own check (predicted and measured). A
search that cannot meet its budget is a row whose `error` says why (the achievable
minimum). The machine is shared: latencies are compared within the run.

Usage:
    nice -n 10 python tools/bench_target.py --model cnn mobilenet \\
        --json results/bench_target.json
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
from common import load_data, reference_parser, train_reference, write_json  # noqa: E402

import autoqnn  # noqa: E402
from autoqnn.export import run_tflite  # noqa: E402
from autoqnn.export.latency import machine_key, time_files  # noqa: E402
from autoqnn.mixed.target import LiteRTTarget  # noqa: E402
from autoqnn.ptq.config import PTQConfig  # noqa: E402

RECIPE = {"grid": "symmetric_weights", "weight_clipping": "mse"}


def _checks(result) -> list:
    return [h for h in result.history if h["step"] == "litert check"]


def run_model(name, model, test, calibration_x, rounds, invokes, cache_dir) -> list[dict]:
    """The rows of one model (see the module docstring)."""
    target = LiteRTTarget(rounds=rounds, invokes=invokes, cache_dir=cache_dir)
    rows, files, models, extra = [], {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_target_") as tmp:
        def export(row, qmodel, **options):
            info = autoqnn.export_tflite(qmodel, Path(tmp) / f"{row}.tflite", **options)
            files[row] = Path(info.path).read_bytes()
            models[row] = qmodel
            return info

        for bits in (8, 4):
            qmodel = autoqnn.quantize(model, weight_bits=bits, calibration_data=calibration_x,
                                      verbose=0)
            export(f"w{bits}a8", qmodel)
            if bits == 4:
                export("w4a8_xnnpack", qmodel, storage="xnnpack")
        base_ms = time_files({k: files[k] for k in ("w8a8", "w4a8")}, rounds=rounds,
                             invokes=invokes)
        recipe = PTQConfig(**RECIPE)
        budgets = {
            "search3.0": ({"weight_bits_budget": 3.0}, None, None),
            "litert3.0": ({"weight_bits_budget": 3.0}, target, None),
            "litert3.0_mse": ({"weight_bits_budget": 3.0}, target, recipe),
            "litert3.9_mse": ({"weight_bits_budget": 3.9}, target, recipe),
            "litert_w4a8_bytes_mse": ({"size_budget_bytes": len(files["w4a8"])}, target,
                                      recipe),
            "litert_mid_mse": ({"size_budget_bytes": (len(files["w4a8"]) + len(files["w8a8"]))
                                // 2, "latency_budget_ms": round(
                                    (base_ms["w8a8"] + base_ms["w4a8"]) / 2, 4)}, target,
                               recipe)}
        errors = {}
        for row, (budget, row_target, ptq) in budgets.items():
            start = time.perf_counter()
            try:
                result = autoqnn.search(model, calibration_data=calibration_x, verbose=0,
                                        target=row_target, ptq=ptq, **budget)
            except ValueError as err:
                errors[row] = (budget, f"ValueError: {err}")
                continue
            info = export(row, result.model)
            extra[row] = {"budget": budget, "search_seconds": time.perf_counter() - start,
                          "policy": result.bits(), "checks": _checks(result),
                          "weight_dtypes": info.weight_dtypes}
        ms = time_files(files, rounds=rounds, invokes=invokes)
        x_test, y_test = test
        for row, content in files.items():
            path = Path(tmp) / f"{row}.tflite"
            logits = run_tflite(path, x_test, batch_size=500)
            entry = {"model": name, "variant": row, "bytes": len(content),
                     "bytes_vs_w4a8": len(content) / len(files["w4a8"]),
                     "tflite_accuracy": float(np.mean(np.argmax(logits, -1) == y_test)),
                     "latency_ms_1t": ms[row], "latency_vs_w8a8_1t": ms[row] / ms["w8a8"],
                     **extra.get(row, {})}
            budget = entry.get("budget", {})
            if "size_budget_bytes" in budget:
                entry["meets_size_budget"] = len(content) <= budget["size_budget_bytes"]
            if "latency_budget_ms" in budget:
                entry["meets_latency_budget"] = ms[row] <= budget["latency_budget_ms"]
            rows.append(entry)
        rows += [{"model": name, "variant": row, "budget": budget, "error": why}
                 for row, (budget, why) in errors.items()]
    return rows


def markdown(result: dict) -> str:
    """The rows of a results JSON as a Markdown table (docs/export.md)."""
    lines = ["| model | variant | budget | bytes | × W4A8 | LiteRT acc. | ms 1T | × W8A8 | "
             "meets | policy (bits per layer) |", "|" + "---|" * 10]
    for row in result["rows"]:
        budget = ", ".join(f"{k.replace('_budget', '')}={v}" for k, v in
                           row.get("budget", {}).items())
        if "error" in row:
            lines.append(f"| {row['model']} | {row['variant']} | {budget} | cannot: "
                         f"{row['error'].split(': ', 1)[-1]} |" + " |" * 6)
            continue
        meets = [row[k] for k in ("meets_size_budget", "meets_latency_budget") if k in row]
        policy = " ".join(str(b) for b in row.get("policy", {}).values())
        lines.append(f"| {row['model']} | {row['variant']} | {budget} | {row['bytes']} | "
                     f"{row['bytes_vs_w4a8']:.3f} | {row['tflite_accuracy']:.4f} | "
                     f"{row['latency_ms_1t']:.3f} | {row['latency_vs_w8a8_1t']:.2f} | "
                     f"{'yes' if meets and all(meets) else 'no' if meets else ''} | "
                     f"{policy} |")
    return "\n".join(lines)


def main(argv=None):
    parser = reference_parser(__doc__.split("\n")[0])
    parser.add_argument("--test-subset", type=int, default=None, help="default: all of it")
    parser.add_argument("--calibration", type=int, default=512,
                        help="calibration images (from the training split)")
    parser.add_argument("--rounds", type=int, default=15, help="latency rounds")
    parser.add_argument("--invokes", type=int, default=20, help="invokes per file per round")
    parser.add_argument("--cache-dir", default="runs")
    parser.add_argument("--latency-cache", default=None,
                        help="per-layer latency cache folder (default: a fresh one)")
    parser.add_argument("--table", default=None, help="print this results JSON as Markdown")
    args = parser.parse_args(argv)
    if args.table:
        import json

        print(markdown(json.loads(Path(args.table).read_text())))
        return []
    train, test = load_data(args.data, args.train_subset, args.test_subset)
    rows = []
    with tempfile.TemporaryDirectory(prefix="latency_cache_") as fresh:
        for name in args.model:
            model, _ = train_reference(name, train, epochs=args.epochs,
                                       cache_dir=args.cache_dir)
            rows += run_model(name, model, test, train[0][: args.calibration], args.rounds,
                              args.invokes, args.latency_cache or fresh)
            print(markdown({"rows": [r for r in rows if r["model"] == name]}), flush=True)
    command = "python tools/bench_target.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_json(args.json, {"command": command, "models": args.model,
                           "machine": machine_key(1) + " (shared with other jobs)",
                           "data": {"train": len(train[0]), "test": len(test[0]),
                                    "calibration": args.calibration},
                           "latency": {"rounds": args.rounds, "invokes_per_round": args.invokes,
                                       "batch": 1, "threads": 1},
                           "recipe_of_mse_rows": RECIPE,
                           "recipe_chosen_on": "validation images 20000-21999 of the training "
                           "split (cnn, 3.0 bits, target litert: 0.8915 with this recipe, "
                           "0.8920 for uniform W4A8; the test split was not used)",
                           "rows": rows})
    return rows


if __name__ == "__main__":
    main()
