"""Writes the four notebooks from the cell lists below (outputs stripped).

    python notebooks/build.py

Edit the cells here, then rebuild; `tests/test_notebooks.py` executes the notebooks with
small settings and checks that the committed files match what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
REPO_URL = "https://github.com/OWNER/autoqnn"  # set once the public repository exists
INSTALL = f'''# Installs autoqnn where it is missing (Colab); a no-op in a checkout with it installed.
import importlib.util, subprocess, sys
if importlib.util.find_spec("autoqnn") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "autoqnn[notebooks] @ git+{REPO_URL}"])'''

DATA = '''import time
from pathlib import Path

import keras
import numpy as np

import autoqnn
from autoqnn.data import load_demo_subset, load_npz, shared_data_path
from autoqnn.evaluate import top1_accuracy
from autoqnn.export import run_tflite
from autoqnn.models import build_model


def load_fashion_mnist(source):
    """keras.datasets when online ("auto"), else the local .npz, else the bundled subset."""
    if source == "auto":
        try:
            (x, y), (xt, yt) = keras.datasets.fashion_mnist.load_data()
            print("data: keras.datasets.fashion_mnist")
            prep = lambda a: (a.astype("float32") / 255.0)[..., None]
            return (prep(x), y.astype("int64")), (prep(xt), yt.astype("int64"))
        except Exception as err:  # offline: fall back to a local copy
            print(f"keras.datasets unavailable ({type(err).__name__}): using a local copy")
            source = shared_data_path() or "bundled"
    if source == "bundled":
        print("data: the subset bundled with autoqnn")
        return load_demo_subset()
    print(f"data: {source}")
    return load_npz(source)


(x_train, y_train), (x_test, y_test) = load_fashion_mnist(DATA)
x_train, y_train = x_train[:TRAIN_IMAGES], y_train[:TRAIN_IMAGES]
x_test, y_test = x_test[:TEST_IMAGES], y_test[:TEST_IMAGES]
x_calib = x_train[:CALIBRATION_IMAGES]
print(f"{len(x_train)} train / {len(x_test)} test images")'''

TRAIN = '''keras.utils.set_random_seed(0)
model = build_model("cnn")
model.compile(keras.optimizers.Adam(1e-3),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, verbose=2)
float_top1 = model.evaluate(x_test, y_test, verbose=0)[1]
print(f"float top-1 {100 * float_top1:.2f}%")'''


def _badge(name):
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({REPO_URL.replace('https://github.com', 'https://colab.research.google.com/github')}"
            f"/blob/main/notebooks/{name})")


NOTEBOOKS = {
    "01_quickstart.ipynb": [
        ("md", "# autoqnn quickstart\n\nQuantize a Keras model in one call, fine-tune it with "
               "`autoqnn.finetune`, export a full-integer TFLite file, run it with LiteRT and "
               "compare accuracy and size.\n\n{badge}"),
        ("code", INSTALL),
        ("params", '''# Parameters (the CI run overrides them with smaller values)
DATA = "auto"             # "auto": keras.datasets online, else a local copy; or an .npz path
TRAIN_IMAGES = 20000
TEST_IMAGES = 10000
CALIBRATION_IMAGES = 512
EPOCHS = 3
FINETUNE_EPOCHS = 2
WEIGHT_BITS = 4'''),
        ("code", DATA),
        ("md", "## A float model\n\nThe reference `cnn` (four convolutions, two dense layers)."),
        ("code", TRAIN),
        ("md", "## One call\n\n`autoqnn.quantize` returns the quantized twin: same "
               "architecture, quantized weights and activations, calibrated on a few hundred "
               "images. The report lists every layer."),
        ("code", '''qmodel = autoqnn.quantize(model, weight_bits=WEIGHT_BITS, calibration_data=x_calib,
                          verbose=0)
print(qmodel.autoqnn_report)
ptq_top1 = top1_accuracy(qmodel, (x_test, y_test))
print(f"W{WEIGHT_BITS}A8 post-training: top-1 {100 * ptq_top1:.2f}%")'''),
        ("md", "## Fine-tune\n\nQuantization-aware training, distilled from the float model."),
        ("code", '''autoqnn.finetune(qmodel, (x_train, y_train), epochs=FINETUNE_EPOCHS, teacher=model,
                 verbose=2)
qat_top1 = top1_accuracy(qmodel, (x_test, y_test))
print(f"after {FINETUNE_EPOCHS} epoch(s) of fine-tuning: top-1 {100 * qat_top1:.2f}%")'''),
        ("md", "## Export and run with LiteRT"),
        ("code", '''autoqnn.export_tflite(qmodel, "quickstart.tflite")
logits = run_tflite("quickstart.tflite", x_test, batch_size=256)
tflite_top1 = float(np.mean(np.argmax(logits, -1) == y_test))
model.save("quickstart_float.keras")
rows = [("float (.keras)", float_top1, Path("quickstart_float.keras").stat().st_size),
        (f"W{WEIGHT_BITS}A8 fine-tuned (.tflite)", tflite_top1,
         Path("quickstart.tflite").stat().st_size)]
print(f"{'model':28s} {'top-1':>7s} {'bytes':>10s}")
for name, top1, size in rows:
    print(f"{name:28s} {100 * top1:6.2f}% {size:10,d}")
assert abs(tflite_top1 - qat_top1) < 0.02, "LiteRT and Keras disagree"'''),
    ],
    "02_mixed_precision.ipynb": [
        ("md", "# Automatic mixed precision: the one call under a budget\n\n"
               "`autoqnn.quantize(model, calibration_data=x, weight_bits_budget=3.0)` chooses "
               "each layer's bits (and the PTQ recipe) so that the parameter-weighted average "
               "is at most 3 bits. Given labelled `train_data` the same call also trains. The "
               "policy plot shows what it chose: bits per layer, each layer's share of the "
               "parameters, and how much each layer hurt the outputs at its bits.\n\n{badge}"),
        ("code", INSTALL),
        ("params", '''# Parameters (the CI run overrides them with smaller values)
DATA = "auto"
TRAIN_IMAGES = 20000
TEST_IMAGES = 10000
CALIBRATION_IMAGES = 512
EPOCHS = 3
BUDGET = 3.0              # average weight bits
TIME_BUDGET = 60          # seconds the autopilot spends choosing a recipe
TRAINED = True            # also run the trained one call (train_data=...)
TRAINED_EPOCHS = 2'''),
        ("code", DATA),
        ("code", TRAIN),
        ("md", "## Retrain-free: calibration images only, no labels"),
        ("code", '''qmodel = autoqnn.quantize(model, calibration_data=x_calib, weight_bits_budget=BUDGET,
                          time_budget_seconds=TIME_BUDGET, verbose=0)
print(qmodel.autoqnn_report)
free_top1 = top1_accuracy(qmodel, (x_test, y_test))
uniform = autoqnn.quantize(model, weight_bits=int(BUDGET), calibration_data=x_calib, verbose=0)
uniform_top1 = top1_accuracy(uniform, (x_test, y_test))
print(f"float {100 * float_top1:.2f}%  one call {100 * free_top1:.2f}% "
      f"({qmodel.autoqnn_report.weight_bits_avg:.2f} bits)  uniform W{int(BUDGET)} "
      f"{100 * uniform_top1:.2f}%")'''),
        ("md", "## What it chose, and why\n\nA layer that holds most of the parameters "
               "(the first dense layer) takes few bits because that is where the budget is "
               "spent; small layers whose outputs move the logits most (first and last) keep "
               "more. The bottom panel is the measured distortion (KL of the softmax outputs) "
               "with that layer alone at its chosen bits."),
        ("code", '''from autoqnn.plots import plot_policy, policy_rows

search = getattr(qmodel, "autoqnn_search", None)
sensitivity = None if search is None or search.sensitivity is None \\
    else search.sensitivity.to_dict()
print(getattr(qmodel.autoqnn_report, "recipe", ""))  # the recipes tried, and the choice
fig = plot_policy(qmodel, budget=BUDGET, sensitivity=sensitivity)
fig.savefig("policy.png", dpi=120, bbox_inches="tight")
for row in policy_rows(qmodel):
    print(f"{row['layer']:10s} {row['weight_bits']} bits  {row['params']:8,d} params")'''),
        ("md", "## Trained: the same call with labelled data\n\nWith `train_data` the one call "
               "also picks a low-bit training recipe on held-out images and fine-tunes it, "
               "distilled from the float model."),
        ("code", '''if TRAINED:
    trained = autoqnn.quantize(model, train_data=(x_train, y_train), weight_bits_budget=BUDGET,
                               calibration_data=x_calib, epochs=TRAINED_EPOCHS, verbose=0)
    trained_top1 = top1_accuracy(trained, (x_test, y_test))
    print(f"trained one call: top-1 {100 * trained_top1:.2f}% at "
          f"{trained.autoqnn_report.weight_bits_avg:.2f} average weight bits")'''),
        ("md", "## Export"),
        ("code", '''result = autoqnn.export_tflite(qmodel, "mixed.tflite")  # exact: every level on the int8 grid
logits = run_tflite("mixed.tflite", x_test, batch_size=256)
print(f"mixed.tflite: {Path('mixed.tflite').stat().st_size:,} bytes, LiteRT top-1 "
      f"{100 * np.mean(np.argmax(logits, -1) == y_test):.2f}%")
print(autoqnn.export_report(qmodel))'''),
    ],
    "03_ptq_tuning.ipynb": [
        ("md", "# Tuning post-training quantization with `tune_ptq`\n\n"
               "`autoqnn.tune_ptq` searches the PTQ options (calibration method, grid, "
               "granularity, weight clipping, bias correction, ...) for the configuration that "
               "keeps the most validation accuracy, guided by an XGBoost cost model. Below, its "
               "best-so-far curve against random, grid and genetic sampling.\n\n{badge}"),
        ("code", INSTALL),
        ("params", '''# Parameters (the CI run overrides them with smaller values)
DATA = "auto"
TRAIN_IMAGES = 20000
TEST_IMAGES = 10000
CALIBRATION_IMAGES = 512
VAL_IMAGES = 2000
EPOCHS = 3
TRIALS = 15
WEIGHT_BITS = 4
SAMPLERS = ("xgboost", "random", "grid", "genetic")'''),
        ("code", DATA),
        ("code", TRAIN),
        ("md", "## Search\n\nSelection happens on a validation split of the training "
               "images; the test split is only evaluated at the end."),
        ("code", '''x_val, y_val = x_train[-VAL_IMAGES:], y_train[-VAL_IMAGES:]
results = {}
for sampler in SAMPLERS:
    start = time.perf_counter()
    results[sampler] = autoqnn.tune_ptq(model, x_calib, (x_val, y_val), max_trials=TRIALS,
                                        sampler=sampler, fixed={"weight_bits": WEIGHT_BITS},
                                        verbose=0)
    print(f"{sampler:8s} best val top-1 {100 * results[sampler].best_accuracy:.2f}% "
          f"in {time.perf_counter() - start:.0f} s")'''),
        ("code", '''from autoqnn.plots import plot_tuner

fig = plot_tuner({name: [t.accuracy for t in r.trials] for name, r in results.items()},
                 title=f"W{WEIGHT_BITS}A8 PTQ: best validation accuracy so far")'''),
        ("md", "## The winner on the test split"),
        ("code", '''best = results["xgboost"] if "xgboost" in results else next(iter(results.values()))
print(best.best_config)
test_top1 = top1_accuracy(best.model, (x_test, y_test))
print(f"float {100 * float_top1:.2f}%, tuned W{WEIGHT_BITS}A8 PTQ {100 * test_top1:.2f}%")'''),
    ],
    "04_deploy.ipynb": [
        ("md", "# Deploy: int8, int4 and mixed TFLite, and multiplier-less ASD\n\n"
               "Export the same float model three ways, compare file size, LiteRT latency and "
               "accuracy, then run an ASD-quantized model with shifts and adds only "
               "(`autoqnn.shift_add_forward`).\n\n{badge}"),
        ("code", INSTALL),
        ("params", '''# Parameters (the CI run overrides them with smaller values)
DATA = "auto"
TRAIN_IMAGES = 20000
TEST_IMAGES = 10000
CALIBRATION_IMAGES = 512
EPOCHS = 3
BUDGET = 3.0
TIME_BUDGET = 60
LATENCY_IMAGES = 200'''),
        ("code", DATA),
        ("code", TRAIN),
        ("md", "## Three exports"),
        ("code", '''variants = {
    "int8 (W8A8)": autoqnn.quantize(model, calibration_data=x_calib, verbose=0),
    "int4 (W4A8)": autoqnn.quantize(model, weight_bits=4, calibration_data=x_calib, verbose=0),
    f"mixed ({BUDGET:g} bits)": autoqnn.quantize(model, calibration_data=x_calib,
                                                 weight_bits_budget=BUDGET,
                                                 time_budget_seconds=TIME_BUDGET, verbose=0),
}
model.save("deploy_float.keras")
rows = [("float (.keras)", Path("deploy_float.keras").stat().st_size, None, float_top1)]
for i, (name, qmodel) in enumerate(variants.items()):
    path = f"deploy_{i}.tflite"
    autoqnn.export_tflite(qmodel, path)
    run_tflite(path, x_test[:8])  # warm-up
    start = time.perf_counter()
    run_tflite(path, x_test[:LATENCY_IMAGES])
    latency = 1000 * (time.perf_counter() - start) / LATENCY_IMAGES
    logits = run_tflite(path, x_test, batch_size=256)
    rows.append((name, Path(path).stat().st_size, latency,
                 float(np.mean(np.argmax(logits, -1) == y_test))))
print(f"{'variant':18s} {'bytes':>10s} {'ms / image':>11s} {'LiteRT top-1':>13s}")
for name, size, latency, top1 in rows:
    ms = "" if latency is None else f"{latency:.3f}"
    print(f"{name:18s} {size:10,d} {ms:>11s} {100 * top1:12.2f}%")'''),
        ("md", "## Multiplier-less: ASD weights computed by shifts and adds\n\n"
               "With `scheme=\"asd\"` every weight is a short sum of signed powers of two; "
               "`shift_add_forward` runs the model with integer shifts and adds in those "
               "layers and matches the Keras model; `adder_report` counts the adders."),
        ("code", '''asd = autoqnn.quantize(model, scheme="asd", weight_bits=4, calibration_data=x_calib,
                       verbose=0)
sample = x_test[:64]
shift_add = autoqnn.shift_add_forward(asd, sample)
keras_out = asd.predict(sample, verbose=0)
print(f"max |shift-add - Keras| = {np.max(np.abs(shift_add - keras_out)):.2e}")
print(f"same top-1 on {len(sample)} images: "
      f"{np.mean(np.argmax(shift_add, -1) == np.argmax(keras_out, -1)):.0%}")
print(autoqnn.adder_report(asd))'''),
    ],
}


def build(name) -> nbformat.NotebookNode:
    """The notebook `name` from its cell list (no outputs)."""
    cells = []
    for kind, text in NOTEBOOKS[name]:
        if kind == "md":
            cells.append(nbformat.v4.new_markdown_cell(text.replace("{badge}", _badge(name))))
        else:
            cell = nbformat.v4.new_code_cell(text)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            cells.append(cell)
    for cell in cells:  # stable ids: rebuilding changes nothing
        cell["id"] = f"{name.split('_')[0]}-{len(cells) and cells.index(cell)}"
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                        "language": "python"},
                         "language_info": {"name": "python"}}
    return notebook


def main():
    for name in NOTEBOOKS:
        nbformat.write(build(name), HERE / name)
        print(f"wrote notebooks/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
