"""The `autoqnn` command line: demo, quantize, search, info, export, schemes.

Example:
    $ autoqnn demo                     # train, quantize W8A8 and W4A4 on the bundled subset
    $ autoqnn quantize model.keras -o q.keras --weight-bits 4 --data calib.npz
    $ autoqnn search model.keras --data calib.npz --budget 3.0 -o mixed.keras
    $ autoqnn search model.keras --data val.npz --budget 3.0 --strategy rl --episodes 30 -o rl.keras
    $ autoqnn info q.keras
    $ autoqnn export q.keras --tflite q.tflite --packed q.aqnn
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoqnn import defaults
from autoqnn.mixed.dispatch import STRATEGIES
from autoqnn.schemes import get_scheme, list_schemes

# TensorFlow's start-up log is quieted by autoqnn/_startup.py, which the package imports
# before TensorFlow (this module is only reached through the package).


def _load_inputs(path, model):
    """Calibration inputs from an .npz: x_calib, x, x_train or x_test (first found)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: --data file not found: {str(path)!r}")
    try:
        archive = np.load(path)
    except (OSError, ValueError, EOFError) as err:
        raise SystemExit(f"error: --data {str(path)!r} is not a readable .npz file: "
                         f"{err}") from None
    with archive as data:
        key = next((k for k in ("x_calib", "x", "x_train", "x_test") if k in data.files), None)
        if key is None:
            raise SystemExit(
                f"error: --data {str(path)!r} has none of x_calib, x, x_train, x_test "
                f"(arrays: {data.files})"
            )
        x = data[key]
    if x.dtype == np.uint8:
        x = x.astype("float32") / 255.0
    expected = len(model.inputs[0].shape)
    if x.ndim == expected - 1:
        x = x[..., None]
    return x.astype("float32")


def _load_labels(path, count):
    """The labels beside `_load_inputs`' arrays: y_calib, y, y_train or y_test."""
    import numpy as np

    with np.load(path) as data:
        for x_key, y_key in (("x_calib", "y_calib"), ("x", "y"), ("x_train", "y_train"),
                             ("x_test", "y_test")):
            if x_key in data.files:
                if y_key not in data.files:
                    raise SystemExit(f"error: this --strategy needs labels: {str(path)!r} has "
                                     f"{x_key} but no {y_key}")
                labels = data[y_key]
                break
    if len(labels) != count:
        raise SystemExit(f"error: {str(path)!r} has {count} inputs but {len(labels)} labels")
    return labels.astype("int64")


def _load_model(path):
    import keras

    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: model file not found: {str(path)!r}")
    try:
        return keras.models.load_model(path)
    except Exception as err:  # keras raises many types for bad files
        raise SystemExit(f"error: cannot load {str(path)!r} as a Keras model: {err}") from None


def cmd_demo(args):
    from autoqnn.demo import run_demo

    run_demo(
        out_dir=args.out,
        epochs=args.epochs,
        qat_epochs=args.qat_epochs,
        data_path=args.data,
        verbose=args.verbose,
        train_subset=args.train_subset,
    )


def cmd_quantize(args):
    import autoqnn

    model = _load_model(args.model)
    data = _load_inputs(args.data, model) if args.data else None
    qmodel = autoqnn.quantize(
        model,
        scheme=args.scheme,
        weight_bits=args.weight_bits,
        activation_bits=None if args.activation_bits == 0 else args.activation_bits,
        granularity=args.granularity,
        calibration_data=data,
        calibration_samples=args.calibration_samples,
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    qmodel.save(args.output)
    print(qmodel.autoqnn_report)
    print(f"saved {args.output}")


_SEARCH_OPTIONS = {
    "candidate_bits": ("--candidate-bits", ("sensitivity", "rl")),
    "epochs": ("--epochs", ("dnas", "qpl", "dnas+qpl")),
    "finetune_epochs": ("--finetune-epochs", ("dnas", "qpl", "dnas+qpl")),
    "episodes": ("--episodes", ("rl",)),
    "executor": ("--executor", ("rl",)),
}
"""Strategy options of `autoqnn search`: flag and the strategies that use it."""


def _strategy_settings(args) -> dict:
    """The strategy's own settings from the flags; a flag it does not use is an error."""
    settings = {}
    for name, (flag, users) in _SEARCH_OPTIONS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if args.strategy not in users:
            raise SystemExit(f"error: {flag} is not used by --strategy {args.strategy} "
                             f"(it is used by {', '.join(users)})")
        settings[name] = tuple(value) if name == "candidate_bits" else value
    return settings


def cmd_search(args):
    import json

    import autoqnn

    extra = _strategy_settings(args)
    if args.budget is None and args.size_budget is None and args.memory_budget is None:
        raise SystemExit("error: give --budget BITS, --size-budget BYTES or --memory-budget BYTES")
    model = _load_model(args.model)
    if not args.data:
        raise SystemExit("error: search needs --data X.npz (calibration inputs)")
    data = _load_inputs(args.data, model)
    if args.strategy == "rl":  # rewarded by accuracy: the labels of the same arrays
        extra.update(val_data=(data, _load_labels(args.data, len(data))),
                     finetune_epochs=0)
    elif args.strategy in ("dnas", "qpl", "dnas+qpl"):  # trains: labels from the same file
        extra["train_data"] = (data, _load_labels(args.data, len(data)))
    result = autoqnn.search(
        model,
        calibration_data=data,
        strategy=args.strategy,
        weight_bits_budget=args.budget,
        size_budget_bytes=args.size_budget,
        memory_budget_bytes=args.memory_budget,
        activation_bits=None if args.activation_bits == 0 else args.activation_bits,
        num_samples=args.calibration_samples,
        checkpoint_dir=args.checkpoint_dir,
        verbose=args.verbose,
        **extra,
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    result.model.save(args.output)
    print(result.model.autoqnn_report)
    print(f"average weight bits {result.average_weight_bits:.3f}, size "
          f"{result.size_bytes / 1024:.1f} KiB, search {result.seconds:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1))
    if args.plot:
        result.plot(args.plot)
    print(f"saved {args.output}")


def cmd_info(args):
    import autoqnn

    print(autoqnn.quantization_report(_load_model(args.model)))


def cmd_export(args):
    import autoqnn

    if not (args.tflite or args.packed):
        raise SystemExit("error: give --tflite PATH and/or --packed PATH")
    model = _load_model(args.model)
    data = _load_inputs(args.data, model) if args.data else None
    if args.tflite:
        autoqnn.export_tflite(model, args.tflite, representative_data=data)
        print(f"wrote {args.tflite} ({Path(args.tflite).stat().st_size} bytes)")
    if args.packed:
        autoqnn.export_packed(model, args.packed)
        print(f"wrote {args.packed} ({Path(args.packed).stat().st_size} bytes)")
    print(autoqnn.export_report(model))


def cmd_schemes(args):
    for name in list_schemes():
        scheme_cls = type(get_scheme(name))
        kinds = [
            k
            for k, ok in (
                ("weights", scheme_cls.supports_weights),
                ("activations", scheme_cls.supports_activations),
            )
            if ok
        ]
        print(f"{name:12s} bits {scheme_cls.min_bits}-{scheme_cls.max_bits:<3d} {', '.join(kinds)}")


def build_parser():
    parser = argparse.ArgumentParser(prog="autoqnn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="train, quantize and compare on the bundled Fashion-MNIST subset",
        description="Train the reference cnn, quantize it and compare accuracy, bits and size."
    )
    demo.add_argument("--out", default="autoqnn_demo", help="folder for the .keras files")
    demo.add_argument("--epochs", type=int, default=3, help="float training epochs")
    demo.add_argument("--qat-epochs", type=int, default=1, help="QAT epochs for W4A4")
    demo.add_argument(
        "--data",
        default=None,
        help="an .npz like ../shared/data/fashion_mnist.npz (default: the bundled subset)",
    )
    demo.add_argument("--train-subset", type=int, default=6000, help="training images used")
    demo.add_argument("--verbose", type=int, default=defaults.VERBOSE, help="0 hides progress")
    demo.set_defaults(func=cmd_demo)

    quantize = sub.add_parser("quantize", help="quantize a .keras model",
                              description="Quantize a .keras model (W8A8 by default).")
    quantize.add_argument("model", help="the float model, a .keras file")
    quantize.add_argument("-o", "--output", required=True,
                          help="where to write the quantized .keras model")
    quantize.add_argument("--scheme", default=defaults.SCHEME, choices=list_schemes("weight"),
                          help=f"weight scheme (default {defaults.SCHEME})")
    quantize.add_argument(
        "--weight-bits", type=int, default=None, help="default: the scheme's own default"
    )
    quantize.add_argument(
        "--activation-bits", type=int, default=defaults.ACTIVATION_BITS,
        help="0 keeps activations float"
    )
    quantize.add_argument(
        "--granularity", default=defaults.GRANULARITY, choices=["per_channel", "per_tensor"]
    )
    quantize.add_argument(
        "--data", help=".npz with calibration inputs (x_calib, x, x_train or x_test)"
    )
    quantize.add_argument("--calibration-samples", type=int,
                          default=defaults.CALIBRATION_SAMPLES,
                          help="calibrate on at most this many samples (default: all)")
    quantize.set_defaults(func=cmd_quantize)

    search = sub.add_parser("search", help="search per-layer bits under a budget",
                            description="Search per-layer bits under a budget.")
    search.add_argument("model", help="the float model, a .keras file")
    search.add_argument("-o", "--output", required=True,
                        help="where to write the searched .keras model")
    search.add_argument("--data", help=".npz with calibration inputs (x_calib, x, x_train or "
                        "x_test)")
    search.add_argument("--strategy", default="sensitivity", choices=list(STRATEGIES),
                        help="sensitivity (default), rl, or the trained dnas / qpl / dnas+qpl "
                             "(these need labels in --data)")
    search.add_argument("--epochs", type=int, default=None,
                        help=f"dnas / qpl search epochs (default {defaults.SEARCH_EPOCHS})")
    search.add_argument("--finetune-epochs", type=int, default=None,
                        help="dnas / qpl fine-tune epochs of the derived model (default "
                             f"{defaults.FINETUNE_EPOCHS})")
    search.add_argument("--checkpoint-dir", default=None,
                        help="checkpoint here (a folder per model, data and settings); the "
                             "same command resumes")
    search.add_argument("--episodes", type=int, default=None,
                        help=f"rl episodes (default {defaults.EPISODES})")
    search.add_argument("--executor", choices=["ray"], default=None,
                        help="rl: evaluate episodes on a local Ray instance")
    search.add_argument("--budget", type=float, help="average weight bits")
    search.add_argument("--size-budget", type=float, help="model bytes")
    search.add_argument("--memory-budget", type=float, help="largest activation, bytes")
    search.add_argument("--candidate-bits", type=int, nargs="+", default=None,
                        help="sensitivity / rl: bits a layer may take (default "
                             f"{' '.join(map(str, defaults.CANDIDATE_BITS))})")
    search.add_argument("--activation-bits", type=int, default=defaults.ACTIVATION_BITS,
                        help="0 keeps them float")
    search.add_argument("--calibration-samples", type=int, default=defaults.SEARCH_SAMPLES,
                        help="images the search calibrates and measures on")
    search.add_argument("--json", help="write the result (policy, sensitivities) here")
    search.add_argument("--plot", help="write the per-layer bits chart here (matplotlib)")
    search.add_argument("--verbose", type=int, default=defaults.VERBOSE,
                        help="0 hides progress")
    search.set_defaults(func=cmd_search)

    info = sub.add_parser("info", help="print the per-layer quantization report of a .keras model")
    info.add_argument("model", help="a .keras model")
    info.set_defaults(func=cmd_info)

    export = sub.add_parser("export", help="export a quantized .keras model to TFLite / packed")
    export.add_argument("model", help="a quantized .keras model")
    export.add_argument("--tflite", help="write a full-integer .tflite file here")
    export.add_argument("--packed", help="write a bit-packed .aqnn file here")
    export.add_argument("--data", help=".npz with representative inputs (optional)")
    export.set_defaults(func=cmd_export)

    schemes = sub.add_parser("schemes", help="list the registered quantization schemes")
    schemes.set_defaults(func=cmd_schemes)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
