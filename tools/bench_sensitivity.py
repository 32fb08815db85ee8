"""Retrain-free mixed precision (`autoqnn.search(strategy="sensitivity")`) against uniform PTQ.

    python tools/bench_sensitivity.py --data ../shared/data/fashion_mnist.npz \\
        --model cnn mobilenet --epochs 5 --train-subset 20000 --json results/sensitivity.json

For each reference model (float trained `--epochs` on the first `--train-subset`
training images, cached under runs/, the same model as tools/benchmark.py):

* uniform PTQ at W4A8 and W3A8 with MSE weight clipping and bias correction (the
  recipe of the MCT comparison in issue 13), and at W4A8 plain;
* the sensitivity search (same PTQ recipe, candidates 2/3/4/8 bits, 512 calibration
  images, 8-bit activations) at average-bit budgets 4.0 and 3.0, at MCT's achieved
  averages (mobilenet 3.91 and 2.94, cnn 2.85), and at a size budget equal to the
  uniform W3A8 model's size;
* the rank check: `--policies` random policies (per-layer bits drawn from the
  candidates), each quantized with the same recipe and evaluated on a validation
  split carved from the training images; Spearman's rho between the table's
  predicted distortion (sum of per-layer sensitivities) and their accuracy (a good
  table gives rho close to -1).

Calibration images are training images; every accuracy in the table rows is top-1 on
the full 10,000-image test split; nothing is chosen on it (the budgets and settings
are fixed in this file).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from common import accuracy, load_splits, reference_parser, train_reference, write_json  # noqa: E402

import autoqnn  # noqa: E402

RECIPE = autoqnn.PTQConfig(weight_bits=8, activation_bits=8, calibration_method="max",
                           weight_clipping="mse", bias_correction=True,
                           calibration_samples=512)
"""PTQConfig's defaults (asymmetric grids) plus MSE clipping and bias correction: the recipe
of the autoqnn rows in issue 13's MCT table. `--scheme symmetric` gives the symmetric-grid
variant (results/sensitivity_symmetric.json)."""
MCT_BITS = {"mobilenet": (3.91, 2.94), "cnn": (2.85,)}
MCT_TOP1 = {("mobilenet", 3.91): 85.96, ("mobilenet", 2.94): 83.74, ("cnn", 4.0): 89.42,
            ("cnn", 2.85): 88.85}
"""MCT 2.6.1's results from issue 13 (its own run on TF 2.15, a float model trained the same
way: shown for reference, not re-measured here)."""


def row(method, qmodel, test, seconds, **extra):
    report = qmodel.autoqnn_report
    return {"method": method, "weight_bits_avg": round(report.weight_bits_avg, 3),
            "top1": round(100 * accuracy(qmodel, *test), 2), "size_bytes": int(report.size_bytes),
            "seconds": round(seconds, 2), **extra}


def uniform_rows(model, calib, test):
    rows = []
    for bits, recipe in ((4, RECIPE), (3, RECIPE), (4, None)):
        start = time.perf_counter()
        if recipe is None:
            q = autoqnn.quantize(model, weight_bits=bits, activation_bits=8,
                                 calibration_data=calib)
            name = f"uniform W{bits}A8"
        else:
            q = autoqnn.quantize(model, calibration_data=calib,
                                 ptq=recipe.replace(weight_bits=bits))
            name = f"uniform W{bits}A8, mse clipping + bias correction"
        rows.append(row(name, q, test, time.perf_counter() - start))
    return rows


def search_rows(name, model, calib, test, size_budget):
    """Each search from scratch (no cached table), so its seconds are the whole search."""
    budgets = [("weight_bits_budget", b) for b in (4.0, 3.0, *MCT_BITS.get(name, ()))]
    budgets.append(("size_budget_bytes", size_budget))
    rows, table = [], None
    for kind, value in budgets:
        start = time.perf_counter()
        result = autoqnn.search(model, calibration_data=calib, ptq=RECIPE, verbose=0,
                                **{kind: value})
        seconds = time.perf_counter() - start
        table = result.sensitivity
        label = (f"sensitivity, <= {value} average bits" if kind == "weight_bits_budget"
                 else f"sensitivity, <= {value / 1024:.1f} KiB")
        rows.append(row(label, result.model, test, seconds, budget={kind: value},
                        policy=result.bits(), table_seconds=round(table.seconds, 2),
                        mct_top1=MCT_TOP1.get((name, value))))
    return rows, table


def rank_check(model, calib, val, table, policies, seed=0):
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    points = []
    for _ in range(policies):
        policy = {p: int(rng.choice(table.candidates[p])) for p in table.layers}
        q = autoqnn.quantize(model, calibration_data=calib, ptq=RECIPE,
                             config={p: {"weight_bits": b} for p, b in policy.items()})
        points.append({"predicted": table.total(policy), "val_top1": 100 * accuracy(q, *val),
                       "weight_bits_avg": q.autoqnn_report.weight_bits_avg})
    rho = spearmanr([p["predicted"] for p in points], [p["val_top1"] for p in points])
    return {"spearman_rho": round(float(rho.statistic), 3), "policies": points}


def main(argv=None):
    parser = reference_parser(__doc__.split("\n")[0])
    parser.add_argument("--policies", type=int, default=20)
    parser.add_argument("--scheme", default="asymmetric", choices=("asymmetric", "symmetric"),
                        help="the PTQ grid of every row")
    args = parser.parse_args(argv)
    global RECIPE
    RECIPE = RECIPE.replace(grid=args.scheme)
    train, val, test = load_splits(args.data, args.train_subset, val_size=2000)
    calib = train[0][:512]
    out = {"command": "python tools/bench_sensitivity.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "recipe": RECIPE.to_dict(), "models": {}}
    for name in args.model:
        model, _ = train_reference(name, train, epochs=args.epochs)
        entry = {"float_top1": round(100 * accuracy(model, *test), 2)}
        entry["uniform"] = uniform_rows(model, calib, test)
        size_budget = next(r["size_bytes"] for r in entry["uniform"]
                           if r["method"].startswith("uniform W3A8"))
        entry["search"], table = search_rows(name, model, calib, test, size_budget)
        entry["table"] = table.to_dict()
        entry["rank"] = rank_check(model, calib, val, table, args.policies)
        for r in entry["uniform"] + entry["search"]:
            print(f"{name:9s} {r['method']:52s} {r['weight_bits_avg']:5.2f} b "
                  f"{r['top1']:6.2f} %  {r['seconds']:6.1f} s", flush=True)
        print(f"{name:9s} rank check: rho = {entry['rank']['spearman_rho']}", flush=True)
        out["models"][name] = entry
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
