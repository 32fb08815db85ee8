"""The `autoqnn` command line: the commands (the options are in `cli_parser.py`).

Example:
    $ autoqnn demo                     # train, the one call under a budget, export, check
    $ autoqnn quantize model.keras -o q.keras --budget 3.0 --data calib.npz --eval-data test.npz
    $ autoqnn quantize model.keras -o q.keras --weight-bits 4 --data calib.npz
    $ autoqnn calibrate q.keras --data calib.npz -o q.keras
    $ autoqnn search model.keras --data calib.npz --budget 3.0 -o mixed.keras
    $ autoqnn search model.keras --data val.npz --budget 3.0 --strategy rl --episodes 30 -o rl.keras
    $ autoqnn info q.keras
    $ autoqnn export q.keras --tflite q.tflite --packed q.aqnn
    $ autoqnn plot policy q.keras -o policy.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from autoqnn import defaults
from autoqnn.cli_io import (
    accuracy_readout,
    check_budget,
    load_inputs,
    load_labels,
    load_model,
    warnings_as_notes,
)
from autoqnn.cli_parser import build_parser
from autoqnn.schemes import get_scheme, list_schemes

# TensorFlow's start-up log is quieted by autoqnn/_startup.py, which the package imports
# before TensorFlow (this module is only reached through the package).


def cmd_demo(args):
    from autoqnn.demo import run_demo

    run_demo(out_dir=args.out, epochs=args.epochs, finetune_epochs=args.finetune_epochs,
             data_path=args.data, verbose=args.verbose, train_subset=args.train_subset,
             budget=args.budget, time_budget=args.time_budget)


def _save(model, output):
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    model.save(output)


def cmd_quantize(args):
    import autoqnn

    model = load_model(args.model, args.custom_objects)
    data = load_inputs(args.data, model) if args.data else None
    budget = None if args.budget is None else {"weight_bits_budget": args.budget}
    if args.time_budget is not None:
        if budget is None:
            raise SystemExit("error: --time-budget applies to --budget only (the one call's "
                             "choice of recipe)")
        budget["time_budget_seconds"] = args.time_budget
    if budget:
        check_budget(args.budget, defaults.CANDIDATE_BITS)
        if data is None:
            raise SystemExit("error: --budget needs --data X.npz (calibration inputs: the "
                             "search measures each layer on them)")
        if args.weight_bits is not None:
            raise SystemExit("error: give --budget or --weight-bits, not both (the budget "
                             "chooses each layer's bits)")
    with warnings_as_notes():
        qmodel = autoqnn.quantize(
            model, scheme=args.scheme, weight_bits=args.weight_bits,
            activation_bits=None if args.activation_bits == 0 else args.activation_bits,
            granularity=args.granularity, calibration_data=data,
            calibration_samples=args.calibration_samples, verbose=args.verbose,
            **(budget or {}))
    _save(qmodel, args.output)
    print(qmodel.autoqnn_report)
    if data is None and args.activation_bits:
        print(f"note: activation ranges are not calibrated (no --data); before export run "
              f"`autoqnn calibrate {args.output} --data calib.npz -o {args.output}`",
              file=sys.stderr)
    if args.eval_data:
        accuracy_readout(model, qmodel, args.eval_data)
    if args.plot:
        from autoqnn.plots import plot_policy

        plot_policy(qmodel, args.plot, budget=args.budget)
        print(f"wrote {args.plot}")
    print(f"saved {args.output}")


def cmd_calibrate(args):
    import autoqnn

    model = load_model(args.model, args.custom_objects)
    data = load_inputs(args.data, model)
    with warnings_as_notes():
        autoqnn.calibrate(model, data, method=args.method,
                                  num_samples=args.calibration_samples)
    _save(model, args.output)
    count = len(autoqnn.activation_quantizers(model))
    print(f"calibrated {count} activation quantizer(s) on "
          f"{min(len(data), args.calibration_samples or len(data))} inputs; saved {args.output}")


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
    check_budget(args.budget, extra.get("candidate_bits", defaults.CANDIDATE_BITS))
    if not args.data:
        raise SystemExit("error: search needs --data X.npz (calibration inputs)")
    model = load_model(args.model, args.custom_objects)
    data = load_inputs(args.data, model)
    if args.strategy == "rl":  # rewarded by accuracy: the labels of the same arrays
        extra.update(val_data=(data, load_labels(args.data, len(data))), finetune_epochs=0)
    elif args.strategy in ("dnas", "qpl", "dnas+qpl"):  # trains: labels from the same file
        extra["train_data"] = (data, load_labels(args.data, len(data)))
    with warnings_as_notes():
        result = autoqnn.search(
            model, calibration_data=data, strategy=args.strategy,
            weight_bits_budget=args.budget, size_budget_bytes=args.size_budget,
            memory_budget_bytes=args.memory_budget,
            activation_bits=None if args.activation_bits == 0 else args.activation_bits,
            num_samples=args.calibration_samples, checkpoint_dir=args.checkpoint_dir,
            verbose=args.verbose, **extra)
    _save(result.model, args.output)
    print(result.model.autoqnn_report)
    print(f"average weight bits {result.average_weight_bits:.3f}, size "
          f"{result.size_bytes / 1024:.1f} KiB, search {result.seconds:.1f} s")
    if args.eval_data:
        accuracy_readout(model, result.model, args.eval_data, label=args.strategy)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1))
    if args.plot:
        from autoqnn.plots import plot_policy

        sensitivity = None if result.sensitivity is None else result.sensitivity.to_dict()
        plot_policy(result.model, args.plot, budget=args.budget, sensitivity=sensitivity)
        print(f"wrote {args.plot}")
    print(f"saved {args.output}")


def cmd_info(args):
    import autoqnn

    model = load_model(args.model, args.custom_objects)
    report = autoqnn.quantization_report(model)
    if not any(r.status in ("quantized", "activation", "composite") for r in report):
        weighted = sum(1 for r in report if r.params)
        print(f"{args.model}: a float model ({weighted} weighted layers, "
              f"{report.size_bytes / 1024:.1f} KiB), nothing quantized yet; quantize it with "
              f"`autoqnn quantize {args.model} -o q.keras --data calib.npz`")
        return
    print(report)


def cmd_export(args):
    import autoqnn
    from autoqnn.export import ExportError

    if not (args.tflite or args.packed):
        raise SystemExit("error: give --tflite PATH and/or --packed PATH")
    model = load_model(args.model, args.custom_objects)
    data = load_inputs(args.data, model) if args.data else None
    int4 = {"auto": True, "all": "all", "none": False}[args.int4]
    try:
        if args.tflite:
            autoqnn.export_tflite(model, args.tflite, representative_data=data, int4=int4,
                                  inexact=args.inexact)
            print(f"wrote {args.tflite} ({Path(args.tflite).stat().st_size} bytes)")
        if args.packed:
            autoqnn.export_packed(model, args.packed)
            print(f"wrote {args.packed} ({Path(args.packed).stat().st_size} bytes)")
    except ExportError as err:
        text = str(err)
        if "not calibrated" in text:
            text += (f"\n  from the shell: autoqnn calibrate {args.model} --data calib.npz "
                     f"-o {args.model}")
        if "inexact" in text:
            text += "\n  from the shell: add --inexact requantize"
        raise SystemExit(f"error: {text}") from None
    print(autoqnn.export_report(model))


def cmd_plot(args):
    from autoqnn import plots

    if args.kind == "policy":
        model = load_model(args.input, args.custom_objects)
        sensitivity = None
        if args.search_json:
            import json

            try:
                sensitivity = json.loads(Path(args.search_json).read_text()).get("sensitivity")
            except (OSError, ValueError, AttributeError) as err:
                raise SystemExit(f"error: --search-json {args.search_json!r} is not a readable "
                                 f"`autoqnn search --json` file: {err}") from None
        plots.plot_policy(model, args.output, budget=args.budget, sensitivity=sensitivity)
    elif args.kind == "pareto":
        plots.plot_pareto(args.input, args.output, select=args.select)
    else:
        plots.plot_tuner(args.input, args.output)
    print(f"wrote {args.output}")


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


COMMANDS = {"demo": cmd_demo, "quantize": cmd_quantize, "calibrate": cmd_calibrate,
            "search": cmd_search, "info": cmd_info, "export": cmd_export, "plot": cmd_plot,
            "schemes": cmd_schemes}


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
