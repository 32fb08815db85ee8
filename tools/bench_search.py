"""`autoqnn.search` with the differentiable strategies against uniform QAT at the same budget.

    python tools/bench_search.py --data ../shared/data/fashion_mnist.npz --model cnn mobilenet \\
        --epochs 5 --train-subset 20000 --search-epochs 2 --finetune-epochs 2 \\
        --json results/search.json

For each reference model (the float model of tools/benchmark.py) and each setting
(<= 3.0 average weight bits with 4-bit activations, <= 2.0 with 2-bit activations):

* `dnas+qpl` (and the `--strategies` given): `--search-epochs` search epochs, then
  `--finetune-epochs` of `autoqnn.finetune` distilled from the float model;
* `dnas+qpl`, one scheme for the whole model (`scheme_scope="model"`, `--single-scheme`):
  the best single scheme as the search judges it, at the same bits;
* uniform QAT with every layer at the budget's bits and the search's activation recipe
  (learned ranges from an MSE calibration at <= 4 bits), trained with `autoqnn.finetune`
  (distilled from the float model) for the same total number of epochs (search +
  fine-tune) at the setting's learning rate;
* "float + N ep": the float model trained on for those N epochs with the same optimizer
  schedule (`tools/common.float_continued`).

`--cost` measures only the cost ratios (one search epoch of each differentiable strategy
over one float epoch, `results/search_cost.json`):

    python tools/bench_search.py --data ../shared/data/fashion_mnist.npz --model cnn mobilenet \
        --cost --cost-images 5000 --json results/search_cost.json

`--search-subset N` runs the search, its fine-tune and the compared QAT / float runs on the
first N training images (the float model is the usual one). The search's validation split
is carved from the training images (the next 2,000 after
the training subset); every reported accuracy is top-1 on the full test split, which
chooses nothing. Seconds are wall time on this machine; the cost ratios divide one
search epoch by one float epoch on the same images.
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
    float_continued,
    load_splits,
    reference_parser,
    train_reference,
    write_json,
)

import autoqnn  # noqa: E402
from autoqnn.finetune import finetune  # noqa: E402

SETTINGS = ((3.0, 4, 2e-4), (2.0, 2, 1e-3))
"""(average weight bits budget, activation bits, learning rate): the learning rates of
tools/benchmark.py's W4A4 and W2A2 QAT rows (the search fine-tunes at a tenth of it)."""
LEARNING_RATE = 1e-3


def float_epoch_seconds(model, train):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    compile_model(copy, LEARNING_RATE)
    start = time.perf_counter()
    copy.fit(*train, epochs=1, batch_size=128, verbose=0)
    return time.perf_counter() - start, copy


def cost_ratios(model, train, args) -> list:
    """Seconds of one search epoch per strategy over one float epoch on the same
    `--cost-images` images: the second of two search epochs (the first traces the
    searchable graph), the default candidates, the 3.0-bit budget, 4-bit activations."""
    images = (train[0][:args.cost_images], train[1][:args.cost_images])
    float_epoch, _ = float_epoch_seconds(model, images)
    float_epoch = min(float_epoch, float_epoch_seconds(model, images)[0])  # warm
    rows = []
    for strategy, update in (("dnas", None), ("qpl", None), ("qpl", "joint"),
                             ("dnas+qpl", None)):
        val = (images[0][:512], images[1][:512])  # cost only: one val batch per step anyway
        result = autoqnn.search(model, images, val, strategy=strategy, weight_bits_budget=3.0,
                                activation_bits=4, epochs=2, finetune_epochs=0, verbose=0,
                                seed=args.seed, arch_update=update or "bilevel")
        epochs = [h for h in result.history if h["step"] == "search"]
        label = strategy if update is None else f"{strategy} ({update})"
        rows.append({"strategy": label, "images": len(images[0]),
                     "trace_and_first_epoch_seconds": epochs[0]["seconds"],
                     "epoch_seconds": epochs[-1]["seconds"],
                     "float_epoch_seconds": round(float_epoch, 2),
                     "ratio": round(epochs[-1]["seconds"] / float_epoch, 2)})
        print(f"  cost {label}: {rows[-1]['ratio']}x a float epoch "
              f"({rows[-1]['epoch_seconds']} s / {float_epoch:.2f} s)", flush=True)
    return rows


def run_setting(model, train, val, test, budget, act_bits, lr, args, float_epoch):
    rows = []
    total_epochs = args.search_epochs + args.finetune_epochs
    updates = [None if u == "default" else u for u in args.arch_updates]
    runs = [(s, "layer", u) for s in args.strategies for u in updates]
    if args.single_scheme:
        runs.append(("dnas+qpl", "model", None))
    for strategy, scope, update in runs:
        start = time.perf_counter()
        result = autoqnn.search(model, train, val, strategy=strategy, weight_bits_budget=budget,
                                activation_bits=act_bits, epochs=args.search_epochs,
                                finetune_epochs=args.finetune_epochs, scheme_scope=scope,
                                learning_rate=lr, verbose=args.verbose, seed=args.seed,
                                arch_update=update or "bilevel")
        seconds = time.perf_counter() - start
        epochs = [h for h in result.history if h["step"] == "search"]
        label = strategy if scope == "layer" else f"{strategy}, one scheme for the model"
        label = label if update is None else f"{label} ({update})"
        tuned = [h["val_accuracy"] for h in result.history if h["step"] == "finetune"]
        rows.append({
            "method": f"{label} <= {budget} bits, A{act_bits}",
            "top1": round(100 * accuracy(result.model, *test), 2),
            # What a choice between runs may look at (the best fine-tune epoch's).
            "val_top1": round(100 * max(tuned), 2) if tuned else None,
            "weight_bits_avg": round(result.average_weight_bits, 3),
            "size_bytes": int(result.size_bytes), "seconds": round(seconds, 1),
            # The last search epoch: the first one also traces the searchable graph.
            "search_epoch_ratio": round(epochs[-1]["seconds"] / float_epoch, 2),
            "policy": {r.layer: [r.scheme, r.weight_bits] for r in result.policy},
            "history": result.history,
        })
        print(rows[-1]["method"], rows[-1]["top1"], rows[-1]["weight_bits_avg"], flush=True)
    if args.no_uniform:
        return rows
    bits = int(budget)
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    q = autoqnn.quantize(model, weight_bits=bits, activation_bits=act_bits, input_bits=8,
                         calibration_data=train[0][:512], fold_batchnorm=False,
                         activation_options={"learn_range": True} if act_bits <= 4 else None,
                         calibration_method="mse" if act_bits <= 4 else "max")
    finetune(q, train, epochs=total_epochs, val_data=val, teacher=model, learning_rate=lr,
             verbose=args.verbose)
    rows.append({"method": f"uniform W{bits}A{act_bits} QAT ({total_epochs} ep, "
                           "autoqnn.finetune)",
                 "top1": round(100 * accuracy(q, *test), 2),
                 "weight_bits_avg": round(q.autoqnn_report.weight_bits_avg, 3),
                 "size_bytes": int(q.autoqnn_report.size_bytes),
                 "seconds": round(time.perf_counter() - start, 1)})
    print(rows[-1]["method"], rows[-1]["top1"], flush=True)
    return rows


def main(argv=None):
    parser = reference_parser(__doc__.split("\n")[0])
    parser.add_argument("--search-epochs", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--strategies", nargs="+", default=["dnas+qpl", "qpl"])
    parser.add_argument("--arch-updates", nargs="+", default=["default"],
                        choices=["default", "bilevel", "joint"],
                        help="run each strategy with each of these arch_update settings")
    parser.add_argument("--no-uniform", action="store_true",
                        help="skip the uniform QAT rows")
    parser.add_argument("--single-scheme", action="store_true",
                        help="also run dnas+qpl with one scheme for the whole model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search-subset", type=int, default=None,
                        help="search, fine-tune and the compared QAT / float runs use only the "
                             "first N training images (the float model keeps its own)")
    parser.add_argument("--cost", action="store_true",
                        help="only the cost ratios: one dnas / qpl / dnas+qpl epoch against one "
                             "float epoch on --cost-images training images")
    parser.add_argument("--cost-images", type=int, default=5000)
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args(argv)
    train, val, test = load_splits(args.data, args.train_subset, val_size=2000)
    short = train if args.search_subset is None else (train[0][:args.search_subset],
                                                     train[1][:args.search_subset])
    out = {"command": "python tools/bench_search.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "models": {}}
    for name in args.model:
        model, _ = train_reference(name, train, epochs=args.epochs)
        if args.cost:
            out["models"][name] = {"cost": cost_ratios(model, train, args)}
            write_json(args.json, out)
            continue
        float_epoch, _ = float_epoch_seconds(model, short)
        entry = {"float_top1": round(100 * accuracy(model, *test), 2),
                 "float_epoch_seconds": round(float_epoch, 1), "settings": []}
        total = args.search_epochs + args.finetune_epochs
        entry["float_plus"] = []
        for _, _, lr in SETTINGS:
            row = float_continued(model, short, val, test, total, lr)
            entry["float_plus"].append({"method": row["method"],
                                        "top1": round(100 * row["accuracy"], 2),
                                        "val_top1": round(100 * row["val_accuracy"], 2)})
        for budget, act_bits, lr in SETTINGS:
            entry["settings"].append(run_setting(model, short, val, test, budget, act_bits,
                                                 lr, args, float_epoch))
            out["models"][name] = entry
            write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
