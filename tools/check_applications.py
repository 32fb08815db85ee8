"""Quantizes every keras.applications architecture (weights=None) and checks it.

For each: build at a small input size, `autoqnn.quantize` with calibration on
two random images, a forward pass, a `.keras` save + plain `load_model`, and
equal outputs after loading. Prints one line per model and a summary.

    python tools/check_applications.py [--only ResNet50,MobileNetV2] [--json OUT]

(`--json results/applications.json` is the committed result.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import autoqnn  # noqa: E402

# Smallest input side each architecture accepts with weights=None (default 32).
MIN_SIDE = {
    "InceptionV3": 75,
    "InceptionResNetV2": 75,
    "Xception": 71,
    "NASNetMobile": 32,
    "NASNetLarge": 32,
}


def architectures() -> list[str]:
    """Names of every model constructor in keras.applications."""
    names = set()
    for attr in dir(keras.applications):
        obj = getattr(keras.applications, attr)
        members = [(attr, obj)] if callable(obj) else [(n, getattr(obj, n)) for n in dir(obj)]
        for name, member in members:
            if (
                callable(member)
                and name[:1].isupper()
                and "decode" not in name.lower()
                and "preprocess" not in name.lower()
            ):
                names.add(name)
    return sorted(names)


def constructor(name):
    if hasattr(keras.applications, name):
        return getattr(keras.applications, name)
    for module_name in dir(keras.applications):
        module = getattr(keras.applications, module_name)
        if hasattr(module, name):
            return getattr(module, name)
    raise KeyError(name)


def check(name, side=None, tmp_dir=None):
    """Runs the check of one architecture; returns a dict (raises on failure)."""
    side = side or MIN_SIDE.get(name, 32)
    start = time.perf_counter()
    model = constructor(name)(weights=None, input_shape=(side, side, 3), classes=10)
    x = np.random.default_rng(0).random((2, side, side, 3), dtype=np.float32) * 255.0
    q = autoqnn.quantize(model, weight_bits=4, activation_bits=8, calibration_data=x)
    y = np.asarray(q(x))
    assert y.shape == (2, 10) and np.all(np.isfinite(y)), f"bad output {y.shape}"
    path = os.path.join(tmp_dir or tempfile.mkdtemp(), f"{name}.keras")
    q.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), y, atol=1e-5)
    report = q.autoqnn_report
    return {
        "model": name,
        "side": side,
        "params": int(model.count_params()),
        "quantized_layers": sum(r.status == "quantized" for r in report),
        "float_layers": {r.name: r.reason for r in report.float_layers},
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated names")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or architectures()
    results, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            try:
                row = check(name, tmp_dir=tmp)
                kinds = sorted({reason for reason in row["float_layers"].values()})
                print(
                    f"ok   {name:22s} {row['seconds']:6.1f}s  "
                    f"quantized {row['quantized_layers']:4d}"
                    f"  float {len(row['float_layers']):3d} {kinds}",
                    flush=True,
                )
                results.append(row)
            except Exception as err:  # report and continue with the next architecture
                failures.append({"model": name, "error": f"{type(err).__name__}: {err}"})
                print(f"FAIL {name}: {type(err).__name__}: {str(err)[:300]}", flush=True)
                traceback.print_exc(limit=3)
            keras.backend.clear_session()
    print(f"{len(results)} passed, {len(failures)} failed")
    if args.json:
        command = "python tools/check_applications.py " + " ".join(
            sys.argv[1:] if argv is None else argv)
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"command": command, "keras": keras.__version__, "passed": results,
                       "failed": failures}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
