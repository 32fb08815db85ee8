"""The options of the `autoqnn` command line (`autoqnn --help`, `autoqnn COMMAND --help`).

Example:
    >>> from autoqnn.cli_parser import build_parser
    >>> args = build_parser().parse_args(["quantize", "m.keras", "-o", "q.keras", "--budget", "3"])
    >>> args.command, args.budget, args.scheme
    ('quantize', 3.0, 'uniform')
"""

from __future__ import annotations

import argparse

from autoqnn import defaults
from autoqnn.mixed.dispatch import STRATEGIES
from autoqnn.schemes import list_schemes

_EPILOG = ("Data files are .npz archives: calibration inputs under x_calib, x, x_train or "
           "x_test (the first found); labelled evaluation data as x_test/y_test (or x/y). "
           "uint8 images are scaled to [0, 1].")


def _custom(parser):
    parser.add_argument("--custom-objects", nargs="+", metavar="MODULE.py", default=None,
                        help="Python files defining the model's own layers (imported before "
                             "loading; their Keras classes are passed to load_model)")


def _verbose(parser):
    parser.add_argument("--verbose", type=int, default=defaults.VERBOSE, choices=[0, 1],
                        help=f"1 shows progress bars, 0 hides them (default {defaults.VERBOSE})")


def _eval(parser):
    parser.add_argument("--eval-data", metavar="TEST.npz",
                        help="labelled .npz (x_test/y_test or x/y): print float and quantized "
                             "top-1 and the points lost")


def _demo(sub):
    demo = sub.add_parser(
        "demo", help="train, quantize under a budget, export and check, on Fashion-MNIST",
        description="Train the reference cnn (with progress), quantize it with the one call "
                    "under an average-weight-bits budget, fine-tune briefly, export a TFLite "
                    "file, run it with LiteRT, print float / budget / uniform rows and write "
                    "the policy plot. About 2-4 minutes on 2 CPU cores with the bundled data.")
    demo.add_argument("--out", default="autoqnn_demo", metavar="DIR",
                      help="folder for the .keras, .tflite and .png files (default autoqnn_demo)")
    demo.add_argument("--epochs", type=int, default=3, help="float training epochs (default 3)")
    demo.add_argument("--finetune-epochs", type=int, default=1,
                      help="fine-tune epochs of the quantized model (0: none; default 1)")
    demo.add_argument("--budget", type=float, default=3.0,
                      help="average weight bits for the one call (default 3.0)")
    demo.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                      help="seconds the one call spends choosing a recipe (default: the "
                           "library's, 60)")
    demo.add_argument("--data", default=None, metavar="DATA.npz",
                      help="an .npz with x_train/y_train/x_test/y_test, e.g. "
                           "../shared/data/fashion_mnist.npz; all of it is used unless "
                           "--train-subset says otherwise (default: the bundled 6,000 / 1,000 "
                           "subset)")
    demo.add_argument("--train-subset", type=int, default=None, metavar="N",
                      help="train on the first N training images only (default: all)")
    _verbose(demo)


def _quantize(sub):
    quantize = sub.add_parser(
        "quantize", help="quantize a model: uniform bits, or per-layer bits under --budget",
        description="Quantize a Keras model. With --budget the one call chooses each layer's "
                    "bits under the average-weight-bits budget (needs --data); otherwise every "
                    "layer gets --weight-bits (W8A8 by default).", epilog=_EPILOG)
    quantize.add_argument("model", help="the float model (.keras or .h5)")
    quantize.add_argument("-o", "--output", required=True, metavar="OUT.keras",
                          help="where to write the quantized .keras model")
    quantize.add_argument("--budget", type=float, default=None, metavar="BITS",
                          help="average weight bits: the one call searches per-layer bits "
                               f"among {' '.join(map(str, defaults.CANDIDATE_BITS))}")
    quantize.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                          help="with --budget: seconds the one call spends choosing a recipe "
                               "(default: the library's, 60)")
    quantize.add_argument("--scheme", default=defaults.SCHEME, choices=list_schemes("weight"),
                          metavar="SCHEME",
                          help=f"weight scheme (default {defaults.SCHEME}); one of: "
                               f"{', '.join(list_schemes('weight'))}")
    quantize.add_argument("--weight-bits", type=int, default=None,
                          help="weight bits of every layer (default: the scheme's own, 8 for "
                               "uniform)")
    quantize.add_argument("--activation-bits", type=int, default=defaults.ACTIVATION_BITS,
                          help=f"activation bits (default {defaults.ACTIVATION_BITS}; 0 keeps "
                               "activations float)")
    quantize.add_argument("--granularity", default=defaults.GRANULARITY,
                          choices=["per_channel", "per_tensor"],
                          help=f"weight scale per output channel or per tensor (default "
                               f"{defaults.GRANULARITY})")
    quantize.add_argument("--data", metavar="CALIB.npz",
                          help="calibration inputs (without it, activation ranges are not "
                               "calibrated: run `autoqnn calibrate` before export)")
    quantize.add_argument("--calibration-samples", type=int,
                          default=defaults.CALIBRATION_SAMPLES,
                          help="calibrate on at most this many samples (default: all)")
    quantize.add_argument("--plot", metavar="POLICY.png",
                          help="write the per-layer policy plot here (matplotlib)")
    _eval(quantize)
    _custom(quantize)
    _verbose(quantize)


def _calibrate(sub):
    calibrate = sub.add_parser(
        "calibrate", help="set the activation ranges of a quantized model from data",
        description="Calibrate the activation quantizers of a quantized .keras model (what "
                    "`autoqnn quantize --data` does) and save it.", epilog=_EPILOG)
    calibrate.add_argument("model", help="a quantized .keras model")
    calibrate.add_argument("--data", required=True, metavar="CALIB.npz",
                           help="calibration inputs")
    calibrate.add_argument("-o", "--output", required=True, metavar="OUT.keras",
                           help="where to write the calibrated model (may be the input)")
    calibrate.add_argument("--method", default=defaults.CALIBRATION_METHOD,
                           help=f"observer: max, percentile, kl or mse (default "
                                f"{defaults.CALIBRATION_METHOD})")
    calibrate.add_argument("--calibration-samples", type=int,
                           default=defaults.CALIBRATION_SAMPLES,
                           help="calibrate on at most this many samples (default: all)")
    _custom(calibrate)


def _search(sub):
    search = sub.add_parser(
        "search", help="search per-layer bits under a budget with a chosen strategy",
        description="Search per-layer bits under a budget with a named strategy (`autoqnn "
                    "quantize --budget` lets the library choose).", epilog=_EPILOG)
    search.add_argument("model", help="the float model (.keras or .h5)")
    search.add_argument("-o", "--output", required=True, metavar="OUT.keras",
                        help="where to write the searched .keras model")
    search.add_argument("--data", metavar="CALIB.npz",
                        help="calibration inputs (with labels for rl / dnas / qpl)")
    search.add_argument("--strategy", default="sensitivity", choices=list(STRATEGIES),
                        help="sensitivity (default, retrain-free), rl, or the trained dnas / "
                             "qpl / dnas+qpl (these need labels in --data)")
    search.add_argument("--epochs", type=int, default=None,
                        help=f"dnas / qpl search epochs (default {defaults.SEARCH_EPOCHS})")
    search.add_argument("--finetune-epochs", type=int, default=None,
                        help="dnas / qpl fine-tune epochs of the derived model (default "
                             f"{defaults.FINETUNE_EPOCHS})")
    search.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                        help="checkpoint here (a folder per model, data and settings); the "
                             "same command resumes")
    search.add_argument("--episodes", type=int, default=None,
                        help=f"rl episodes (default {defaults.EPISODES})")
    search.add_argument("--executor", choices=["ray"], default=None,
                        help="rl: evaluate episodes on a local Ray instance")
    search.add_argument("--budget", type=float, metavar="BITS", help="average weight bits")
    search.add_argument("--size-budget", type=float, metavar="BYTES", help="model bytes")
    search.add_argument("--memory-budget", type=float, metavar="BYTES",
                        help="largest activation tensor, bytes")
    search.add_argument("--candidate-bits", type=int, nargs="+", default=None,
                        help="sensitivity / rl: bits a layer may take (default "
                             f"{' '.join(map(str, defaults.CANDIDATE_BITS))})")
    search.add_argument("--activation-bits", type=int, default=defaults.ACTIVATION_BITS,
                        help=f"activation bits (default {defaults.ACTIVATION_BITS}; 0 keeps "
                             "them float)")
    search.add_argument("--calibration-samples", type=int, default=defaults.SEARCH_SAMPLES,
                        help=f"images the search calibrates and measures on (default "
                             f"{defaults.SEARCH_SAMPLES})")
    search.add_argument("--json", metavar="RESULT.json",
                        help="write the result (policy, sensitivities) here")
    search.add_argument("--plot", metavar="POLICY.png",
                        help="write the per-layer policy plot here (matplotlib)")
    _eval(search)
    _custom(search)
    _verbose(search)


def _export(sub):
    export = sub.add_parser(
        "export", help="export a quantized .keras model to TFLite / packed",
        description="Export a quantized, calibrated .keras model to a full-integer TFLite "
                    "file and/or a bit-packed .aqnn file, and print the export report.",
        epilog=_EPILOG)
    export.add_argument("model", help="a quantized, calibrated .keras model")
    export.add_argument("--tflite", metavar="OUT.tflite", help="write a full-integer .tflite")
    export.add_argument("--packed", metavar="OUT.aqnn", help="write a bit-packed .aqnn file")
    export.add_argument("--data", metavar="X.npz",
                        help="representative inputs, only for tensors without a range in the "
                             "model (optional)")
    export.add_argument("--int4", choices=["auto", "all", "none"], default="auto",
                        help="int4 tensors: auto (Dense kernels whose levels fit, bit-exact), "
                             "all (convolutions too: smaller, not bit-exact), none (int8 only)")
    export.add_argument("--inexact", choices=["error", "requantize"], default="error",
                        help="a layer whose levels do not embed in int8: error (default) or "
                             "re-quantize it (error <= half a step)")
    _custom(export)


def _plot(sub):
    plot = sub.add_parser(
        "plot", help="draw a policy, a Pareto chart or a tuner curve (PNG, matplotlib)",
        description="policy MODEL.keras: per-layer bits, parameter share and budget line; "
                    "pareto RESULTS.json: accuracy against bytes; tuner HISTORY.jsonl: the "
                    "tune_ptq best-so-far curve.")
    plot.add_argument("kind", choices=["policy", "pareto", "tuner"], help="what to draw")
    plot.add_argument("input", help="a quantized .keras model (policy), a results .json "
                                    "(pareto) or a tune_ptq history .jsonl (tuner)")
    plot.add_argument("-o", "--output", required=True, metavar="OUT.png",
                      help="the PNG to write")
    plot.add_argument("--budget", type=float, default=None, metavar="BITS",
                      help="policy: draw this budget line (default: the average)")
    plot.add_argument("--search-json", default=None, metavar="RESULT.json",
                      help="policy: the `autoqnn search --json` file of this model, to add each "
                           "layer's measured sensitivity")
    plot.add_argument("--select", default=None, metavar="PREFIX",
                      help="pareto: only the rows whose label starts with PREFIX (a model)")
    _custom(plot)


def build_parser():
    """The `autoqnn` argument parser (each command's name is in `args.command`)."""
    parser = argparse.ArgumentParser(
        prog="autoqnn", description="autoqnn: automatic quantization of Keras 3 models, from "
                                    "the shell. `autoqnn COMMAND --help` shows a command's "
                                    "options.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_demo, _quantize, _calibrate, _search, _export, _plot):
        add(sub)
    info = sub.add_parser("info", help="print the per-layer quantization report of a model",
                          description="Print the per-layer report of a .keras model: scheme, "
                                      "bits, granularity, size, or why a layer stays float.")
    info.add_argument("model", help="a .keras model")
    _custom(info)
    sub.add_parser("schemes", help="list the registered quantization schemes",
                   description="List the registered schemes, their bit ranges and whether "
                               "they quantize weights, activations or both.")
    return parser
