"""RL mixed precision against dnas+qpl, sensitivity and uniform; tuner on Ray; search cost.

The full measurement (the README's tables; hours on the 2-core machine):

    python tools/bench_rl.py --data ../shared/data/fashion_mnist.npz --model cnn mobilenet \\
        --epochs 5 --train-subset 20000 --budget 3.0 --activation-bits 8 --episodes 60 \\
        --warmup-episodes 20 --rl-val 1000 --search-epochs 2 --finetune-epochs 2 \\
        --tuner-trials 16 --ray-workers 2 --cost-episodes 10 --json results/rl.json

A smoke run (minutes) that proves it works:

    python tools/bench_rl.py --train-subset 2000 --epochs 1 --episodes 4 --warmup-episodes 2 \\
        --search-epochs 1 --finetune-epochs 0 --tuner-trials 4 --cost-episodes 2 \\
        --cost-models cnn MobileNetV3Small --rl-val 300 --json /tmp/bench_rl_smoke.json

Three parts (`--parts`):

* `compare`: for each reference model (the float model of tools/benchmark.py), at the
  same parameter-weighted average weight-bit budget (`--budget`, activations at
  `--activation-bits`): `rl` (`--episodes` retrain-free episodes rewarded on the first
  `--rl-val` validation images, then `--finetune-epochs` of `autoqnn.finetune` distilled
  from the float model), `dnas+qpl` (`--search-epochs`, then the same fine-tune),
  `sensitivity` (retrain-free, then the same fine-tune) and uniform
  `floor(budget)`-bit weights (PTQ, then the same fine-tune). Top-1 on the test split
  (chooses nothing; the validation split is carved from the training images;
  `--search-subset N`: searches and fine-tunes see the first N training images), average
  bits, size and search wall time (fine-tune included; the retrain-free accuracy of each
  searched model before its fine-tune is reported too).
* `tuner`: `tune_ptq` trials per minute, serial against `RayExecutor` with
  `--ray-workers` local workers (random strategy, the same trials); Ray's start-up
  (workers importing TensorFlow) is timed apart. Each worker's TensorFlow runs one
  intra-op thread, the serial run uses every core: on 2 cores expect at most 2x.
* `cost`: search wall time against the number of searched layers for `sensitivity`,
  `rl` (`--cost-episodes` episodes, no fine-tune) and, on `--cost-dnas` models, one
  `dnas+qpl` epoch on `--cost-images` images (its first epoch includes tracing the
  searchable graph) followed by a TFLite export of the derived model, on the reference
  models and
  keras.applications models built with weights=None at 32x32x3 (as
  tools/check_applications.py builds them; the images are padded to 32x32 and repeated
  over 3 channels; the models are untrained: only the cost is meaningful).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from common import (  # noqa: E402
    accuracy,
    load_splits,
    reference_parser,
    train_reference,
    write_json,
)

import autoqnn  # noqa: E402
from autoqnn.evaluate import top1_accuracy  # noqa: E402

LEARNING_RATE = 1e-3  # the search's default; fine-tunes run at a tenth of it
TUNER_SPACE = {"granularity": ["per_tensor", "per_channel"],
               "grid": ["symmetric", "asymmetric"],
               "calibration_method": ["max", "percentile", "mse", "kl"],
               "calibration_samples": [100, 500]}


def _row(method, model, test, seconds, retrain_free=None, extra=None):
    report = model.autoqnn_report
    row = {"method": method, "top1": round(100 * accuracy(model, *test), 2),
           "weight_bits_avg": round(report.weight_bits_avg, 3),
           "size_bytes": int(report.size_bytes), "seconds": round(seconds, 1)}
    if retrain_free is not None:
        row["top1_val_before_finetune"] = round(100 * retrain_free, 2)
    row.update(extra or {})
    print(f"  {method:34s} top1 {row['top1']:6.2f}  bits {row['weight_bits_avg']:.3f}  "
          f"{row['seconds']:8.1f} s", flush=True)
    return row


def compare(model, train, val, test, args):
    rows = []
    budget, act = args.budget, args.activation_bits
    common = {"weight_bits_budget": budget, "activation_bits": act, "verbose": args.verbose,
              "finetune_epochs": args.finetune_epochs, "learning_rate": LEARNING_RATE,
              "seed": args.seed}
    rl_val = (val[0][:args.rl_val], val[1][:args.rl_val])
    runs = [
        ("rl", dict(val_data=rl_val, strategy="rl", episodes=args.episodes,
                    agent={"warmup_episodes": args.warmup_episodes})),
        ("dnas+qpl", dict(val_data=val, strategy="dnas+qpl", epochs=args.search_epochs)),
        ("sensitivity", dict(strategy="sensitivity")),
    ]
    for name, settings in runs:
        start = time.perf_counter()
        finetune_after = name == "sensitivity" and args.finetune_epochs
        kwargs = {**common, **settings}
        if name == "sensitivity":  # retrain-free: no fine-tune, seed or learning rate
            kwargs = {k: v for k, v in kwargs.items()
                      if k not in ("finetune_epochs", "learning_rate", "seed")}
        result = autoqnn.search(model, train, **kwargs)
        before = None
        if name == "rl":
            before = next(h["val_accuracy"] for h in result.history if h["step"] == "best")
        if finetune_after:  # "sensitivity" does not train: the same fine-tune as the others
            before = top1_accuracy(result.model, val)
            autoqnn.finetune(result.model, train, epochs=args.finetune_epochs, val_data=val,
                             teacher=model, learning_rate=LEARNING_RATE * 0.1, verbose=0)
        extra = {"policy": result.bits()}
        if name == "rl":
            episodes = [h for h in result.history if h["step"] == "episode"]
            extra.update(episodes=len(episodes),
                         episode_seconds=round(float(np.mean([h["seconds"] for h in episodes])),
                                               3),
                         best_episode=max(episodes, key=lambda h: h["reward"])["episode"],
                         rewards=[round(h["reward"], 4) for h in episodes])
        rows.append(_row(f"{name} <= {budget} bits, A{act}", result.model, test,
                         time.perf_counter() - start, before, extra))
    bits = int(math.floor(budget))
    start = time.perf_counter()
    q = autoqnn.quantize(model, weight_bits=bits, activation_bits=act,
                         calibration_data=train[0][:512])
    before = top1_accuracy(q, val)
    if args.finetune_epochs:
        autoqnn.finetune(q, train, epochs=args.finetune_epochs, val_data=val, teacher=model,
                         learning_rate=LEARNING_RATE * 0.1, verbose=0)
    rows.append(_row(f"uniform W{bits}A{act}", q, test, time.perf_counter() - start, before))
    return rows


def tuner(model, train, val, args):
    from autoqnn.executor import RayExecutor

    calib = train[0][:512]
    out = {"trials": args.tuner_trials, "space": TUNER_SPACE, "fixed": {"weight_bits": 4}}
    start = time.perf_counter()
    serial = autoqnn.tune_ptq(model, calib, val, space=TUNER_SPACE, fixed={"weight_bits": 4},
                              max_trials=args.tuner_trials, sampler="random",
                              seed=args.seed, verbose=0)
    seconds = time.perf_counter() - start
    out["serial"] = {"seconds": round(seconds, 1),
                     "trials_per_minute": round(60 * len(serial.trials) / seconds, 2),
                     "best_accuracy": serial.best_accuracy}
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=args.ray_workers, include_dashboard=False, log_to_driver=False)
    executor = RayExecutor(num_workers=args.ray_workers)
    executor.map(lambda _: 0, range(args.ray_workers))  # the workers have started
    startup = time.perf_counter() - start
    try:
        start = time.perf_counter()
        on_ray = autoqnn.tune_ptq(model, calib, val, space=TUNER_SPACE,
                                  fixed={"weight_bits": 4}, max_trials=args.tuner_trials,
                                  sampler="random", seed=args.seed, executor=executor,
                                  verbose=0)
        seconds = time.perf_counter() - start
    finally:
        executor.close()
        ray.shutdown()
    out["ray"] = {"workers": args.ray_workers, "startup_seconds": round(startup, 1),
                  "seconds": round(seconds, 1),
                  "trials_per_minute": round(60 * len(on_ray.trials) / seconds, 2),
                  "best_accuracy": on_ray.best_accuracy}
    out["speedup"] = round(out["ray"]["trials_per_minute"] / out["serial"]["trials_per_minute"],
                           2)
    print(f"  tuner: serial {out['serial']['trials_per_minute']} trials/min, Ray x"
          f"{args.ray_workers} {out['ray']['trials_per_minute']} trials/min "
          f"(start-up {out['ray']['startup_seconds']} s)", flush=True)
    return out


def _as_rgb32(x):
    pad = [(0, 0)] + [(0, max(0, 32 - s)) for s in x.shape[1:3]] + [(0, 0)]
    x = np.pad(x, pad)[:, :32, :32]
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def cost(references, train, val, args):
    rows = []
    for name in args.cost_models:
        if name in ("cnn", "mobilenet"):
            model = references.get(name) or train_reference(name, train, epochs=args.epochs)[0]
            x_train, x_val = train[0], val
        else:
            from check_applications import constructor

            model = constructor(name)(weights=None, input_shape=(32, 32, 3), classes=10)
            x_train, x_val = _as_rgb32(train[0]), (_as_rgb32(val[0]), val[1])
        calib = x_train[:256]
        row = {"model": name}
        start = time.perf_counter()
        result = autoqnn.search(model, calibration_data=calib, weight_bits_budget=args.budget,
                                activation_bits=args.activation_bits, num_samples=256,
                                verbose=0)
        row["layers"] = len(result.sensitivity.layers)
        row["sensitivity_seconds"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        result = autoqnn.search(model, calibration_data=calib, val_data=(
            x_val[0][:args.rl_val], x_val[1][:args.rl_val]), strategy="rl",
            weight_bits_budget=args.budget, activation_bits=args.activation_bits,
            episodes=args.cost_episodes, finetune_epochs=0, num_samples=256, verbose=0,
            agent={"warmup_episodes": min(args.warmup_episodes, args.cost_episodes // 2)})
        row["rl_seconds"] = round(time.perf_counter() - start, 1)
        episodes = [h for h in result.history if h["step"] == "episode"]
        row["rl_episodes"] = len(episodes)
        row["rl_episode_seconds"] = round(float(np.mean([h["seconds"] for h in episodes])), 3)
        if name in args.cost_dnas:
            row.update(_dnas_cost(model, x_train, x_val, train[1], args))
        rows.append(row)
        print(f"  cost {name:18s} {row['layers']:4d} layers  sensitivity "
              f"{row['sensitivity_seconds']:7.1f} s  rl {row['rl_seconds']:7.1f} s "
              f"({row['rl_episodes']} episodes)", flush=True)
        keras.backend.clear_session()
    return rows


def _dnas_cost(model, x_train, x_val, y_train, args) -> dict:
    """One dnas+qpl search epoch on `--cost-images` images (no fine-tune), its derived
    model exported to TFLite: the searchable graph's trace (first epoch) and the epoch."""
    import tempfile

    n = args.cost_images
    start = time.perf_counter()
    result = autoqnn.search(model, (x_train[:n], y_train[:n]), (x_val[0][:256], x_val[1][:256]),
                            strategy="dnas+qpl", weight_bits_budget=args.budget,
                            activation_bits=args.activation_bits, epochs=1, finetune_epochs=0,
                            verbose=0, seed=args.seed)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "searched.tflite"
        # 4-bit pot / apot per-channel levels need not embed in int8: re-quantized (<= half a step)
        autoqnn.export_tflite(result.model, str(path), x_train[:64], inexact="requantize")
        exported = path.stat().st_size
    epoch = next(h for h in result.history if h["step"] == "search")
    print(f"  dnas+qpl 1 epoch on {n} images: {seconds:.1f} s (epoch {epoch['seconds']} s), "
          f"{result.average_weight_bits:.3f} bits, TFLite {exported} bytes", flush=True)
    return {"dnas_qpl_images": n, "dnas_qpl_seconds": round(seconds, 1),
            "dnas_qpl_epoch_seconds": epoch["seconds"],
            "dnas_qpl_weight_bits_avg": round(result.average_weight_bits, 3),
            "dnas_qpl_tflite_bytes": exported,
            "dnas_qpl_steps": [{k: h[k] for k in ("step", "expected_cost", "val_accuracy",
                                                  "from_average_bits") if k in h}
                               for h in result.history]}


def main(argv=None):
    parser = reference_parser(__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=3.0, help="average weight bits")
    parser.add_argument("--activation-bits", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--warmup-episodes", type=int, default=10)
    parser.add_argument("--rl-val", type=int, default=1000,
                        help="validation images an RL episode is rewarded on")
    parser.add_argument("--search-epochs", type=int, default=2, help="dnas+qpl epochs")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--search-subset", type=int, default=None,
                        help="compare: searches and fine-tunes use only the first N training "
                             "images (the float model keeps its own)")
    parser.add_argument("--tuner-trials", type=int, default=16)
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--cost-episodes", type=int, default=10)
    parser.add_argument("--cost-models", nargs="+",
                        default=["cnn", "mobilenet", "MobileNetV3Small", "EfficientNetB0"])
    parser.add_argument("--cost-dnas", nargs="*", default=["cnn", "mobilenet", "MobileNetV3Small"],
                        help="cost models that also run one dnas+qpl epoch and a TFLite export")
    parser.add_argument("--cost-images", type=int, default=1024,
                        help="images of that dnas+qpl epoch")
    parser.add_argument("--parts", nargs="+", default=["compare", "tuner", "cost"],
                        choices=["compare", "tuner", "cost"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args(argv)
    train, val, test = load_splits(args.data, args.train_subset, val_size=2000)
    out = {"command": "python tools/bench_rl.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "models": {}}
    references = {}
    for name in args.model:
        model, _ = train_reference(name, train, epochs=args.epochs)
        references[name] = model
        if "compare" in args.parts:
            print(f"{name}: float top1 {100 * accuracy(model, *test):.2f}", flush=True)
            short = train if args.search_subset is None else (
                train[0][:args.search_subset], train[1][:args.search_subset])
            out["models"][name] = {"float_top1": round(100 * accuracy(model, *test), 2),
                                   "rows": compare(model, short, val, test, args)}
            write_json(args.json, out)
    if "tuner" in args.parts:
        out["tuner"] = tuner(references[args.model[0]], train, val, args)
        write_json(args.json, out)
    if "cost" in args.parts:
        out["cost"] = cost(references, train, val, args)
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
