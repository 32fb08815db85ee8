"""The one call (`autoqnn.quantize(model, calibration_data=x, weight_bits_budget=b)`, the
retrain-free autopilot) beside every fixed recipe, on every reference model.

    python tools/bench_autopilot.py --data ../shared/data/fashion_mnist.npz \\
        --model cnn mobilenet resnet mobilenetv2 --json results/autopilot.json

For each reference model (float trained `--epochs` on the first `--train-subset` training
images, cached under runs/, as in the other tools) and each average-weight-bit budget
(`--budgets`, default 4.0 and 3.0; 8-bit activations), one run measures, on the same float
weights and the same calibration images (`--calibration` training images, no labels):

* `uniform defaults`: every weighted layer at the budget's bits, `quantize`'s defaults;
* `uniform adaround`: the same bits with AdaRound (`PTQConfig(rounding="adaround")`);
* `search defaults`: the sensitivity search under `quantize`'s default recipe
  (`recipe="defaults"`: the previous one call);
* `search mse+bc`: the same search with MSE weight clipping and bias correction (the
  recipe of the README's former mixed-precision table);
* `one call (N s)`: the autopilot with time budget N (`--time-budgets`, default 60, its
  default, and 240), judging without labels on the last quarter of the calibration images;
  its choice, its candidates and their scores are recorded.

Every row is also exported with `export_tflite`'s defaults (each layer stored at the
narrowest width LiteRT runs for its bits) and run by LiteRT on the test images:
`tflite_bytes` and `tflite_top1` (rows reused with `--reuse` from a run before these
columns lack them).

`--reuse FILE` takes the fixed rows of a model and budget from an earlier JSON of this tool
(same float weights and data; the fixed rows do not depend on the autopilot's code) and
says so in the output.

The fixed rows calibrate on the first 512 calibration images (the search's default). Top-1
is on the test split (`--test-subset` first images; all by default), which chooses
nothing; the autopilot sees only the unlabelled calibration images. Seconds are wall time
on this machine, shared with whatever else runs: compare them within one run.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import accuracy, load_splits, reference_parser, train_reference, write_json  # noqa: E402

import autoqnn  # noqa: E402
from autoqnn.export import run_tflite  # noqa: E402

SAMPLES = 512


def tflite_columns(qmodel, test) -> dict:
    """The model exported with `export_tflite`'s defaults (storage="narrow"): its file
    bytes and its top-1 run by LiteRT (or why it did not export)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.tflite"
        try:
            autoqnn.export_tflite(qmodel, path)
        except Exception as err:  # noqa: BLE001 - a row that says why
            return {"tflite_error": f"{type(err).__name__}: {err}"[:300]}
        logits = run_tflite(path, test[0], batch_size=256)
        return {"tflite_bytes": path.stat().st_size,
                "tflite_top1": round(100 * float(np.mean(np.argmax(logits, -1) == test[1])), 2)}


def row(method, qmodel, test, seconds, **extra):
    report = qmodel.autoqnn_report
    return {"method": method, "weight_bits_avg": round(report.weight_bits_avg, 3),
            "top1": round(100 * accuracy(qmodel, *test), 2),
            "size_bytes": int(report.size_bytes), "seconds": round(seconds, 2),
            **tflite_columns(qmodel, test), **extra}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def fixed_rows(model, calib, budget, test):
    bits = int(budget)
    adaround = autoqnn.PTQConfig(weight_bits=bits, rounding="adaround",
                                 calibration_samples=SAMPLES)
    mse_bc = autoqnn.PTQConfig(weight_clipping="mse", bias_correction=True,
                               calibration_samples=SAMPLES)
    runs = {
        "uniform defaults": lambda: autoqnn.quantize(
            model, weight_bits=bits, calibration_data=calib, calibration_samples=SAMPLES,
            verbose=0),
        "uniform adaround": lambda: autoqnn.quantize(model, calibration_data=calib,
                                                     ptq=adaround, verbose=0),
        "search defaults": lambda: autoqnn.quantize(
            model, calibration_data=calib, weight_bits_budget=budget, recipe="defaults",
            verbose=0),
        "search mse+bc": lambda: autoqnn.quantize(
            model, calibration_data=calib, weight_bits_budget=budget, ptq=mse_bc, verbose=0),
    }
    rows = []
    for method, run in runs.items():
        qmodel, seconds = timed(run)
        rows.append(row(method, qmodel, test, seconds))
        print(f"  {budget} {method}: {rows[-1]['top1']}", flush=True)
    return rows


def main(argv=None):
    parser = reference_parser(__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[4.0, 3.0])
    parser.add_argument("--calibration", type=int, default=2000,
                        help="unlabelled training images given to every row")
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--time-budgets", type=float, nargs="+", default=[60.0, 240.0],
                        help="the autopilot's time budgets, one row each")
    parser.add_argument("--reuse", default=None, help="fixed rows from this earlier JSON")
    parser.set_defaults(model=["cnn", "mobilenet", "resnet", "mobilenetv2"])
    args = parser.parse_args(argv)
    train, val, test = load_splits(args.data, args.train_subset, 2000, args.test_subset)
    calib = train[0][:args.calibration]
    out = {"command": "python tools/bench_autopilot.py " + " ".join(sys.argv[1:]),
           "data": {"train": len(train[0]), "calibration": len(calib), "test": len(test[0])},
           "models": {}}
    earlier = json.loads(Path(args.reuse).read_text())["models"] if args.reuse else {}
    if args.reuse:
        out["fixed_rows_reused_from"] = args.reuse
    for name in args.model:
        model, _ = train_reference(name, train, epochs=args.epochs)
        entry = {"float_top1": round(100 * accuracy(model, *test), 2), "budgets": {}}
        print(f"{name}: float {entry['float_top1']}", flush=True)
        for budget in args.budgets:
            before = earlier.get(name, {}).get("budgets", {}).get(str(budget))
            if before is not None:
                rows = [r for r in before["rows"] if not r["method"].startswith("one call")]
            else:
                rows = fixed_rows(model, calib, budget, test)
            best_fixed = max(r["top1"] for r in rows)
            summary = {}
            for seconds_budget in args.time_budgets:
                qmodel, seconds = timed(lambda m=model, b=budget, t=seconds_budget:
                                        autoqnn.quantize(m, calibration_data=calib,
                                                         weight_bits_budget=b, verbose=0,
                                                         time_budget_seconds=t))
                choice = qmodel.autoqnn_report.recipe
                method = f"one call ({seconds_budget:g} s)"
                rows.append(row(method, qmodel, test, seconds, chosen=choice.chosen,
                                choice=choice.to_dict()))
                print(f"  {budget} {method}: {rows[-1]['top1']} ({choice.chosen}, "
                      f"{seconds:.0f} s)", flush=True)
                summary[method] = {"minus_best_fixed": round(rows[-1]["top1"] - best_fixed, 2),
                                   "gap_to_float": round(entry["float_top1"] - rows[-1]["top1"],
                                                         2)}
            entry["budgets"][str(budget)] = {"rows": rows, "one_call": summary}
            write_json(args.json, out)
        out["models"][name] = entry
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
