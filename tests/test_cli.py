"""The `autoqnn` command line, run in-process on tiny models (and once as a process)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn import _startup
from autoqnn.cli import main

# What TensorFlow prints while it starts (oneDNN, CUDA stubs, TF-TRT, absl's notice).
TF_NOISE = re.compile(r"oneDNN|cuda|TF-TRT|tensorflow/core|absl::|cpu_feature_guard|"
                      r"^[IWE]\d{4} ", re.IGNORECASE | re.MULTILINE)


@pytest.fixture
def model_file(tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    path = tmp_path / "float.keras"
    model.save(path)
    np.savez(tmp_path / "calib.npz", x_train=(np.random.default_rng(0).random((16, 8, 8)) * 255)
             .astype("uint8"))
    return path


def test_quantize_then_info(model_file, tmp_path, capsys):
    out = tmp_path / "q.keras"
    assert main(["quantize", str(model_file), "-o", str(out), "--weight-bits", "4",
                 "--data", str(tmp_path / "calib.npz")]) == 0
    loaded = keras.models.load_model(out)
    assert type(loaded.get_layer("conv")).__name__ == "QuantConv2D"
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "QuantConv2D" in text and "per_channel" in text and "range [" in text


def test_schemes_lists_uniform(capsys):
    assert main(["schemes"]) == 0
    assert "uniform" in capsys.readouterr().out


def test_bad_inputs_give_clear_errors(model_file, tmp_path, capsys):
    with pytest.raises(SystemExit, match="model file not found"):
        main(["info", str(tmp_path / "missing.keras")])
    assert main(["quantize", str(model_file), "-o", str(tmp_path / "q.keras"),
                 "--weight-bits", "0"]) == 2
    assert "weight_bits" in capsys.readouterr().err
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    with pytest.raises(SystemExit, match="is not a readable .npz file"):
        main(["quantize", str(model_file), "-o", str(tmp_path / "q.keras"), "--data",
              str(tmp_path / "junk.npz")])
    with pytest.raises(SystemExit, match="--data file not found"):
        main(["quantize", str(model_file), "-o", str(tmp_path / "q.keras"), "--data",
              str(tmp_path / "nothing.npz")])
    with pytest.raises(SystemExit, match="--epochs is not used by --strategy sensitivity"):
        main(["search", str(model_file), "-o", str(tmp_path / "s.keras"), "--budget", "3",
              "--data", str(tmp_path / "junk.npz"), "--epochs", "2"])


def test_quantize_binary_takes_the_schemes_default_bits(model_file, tmp_path):
    """--weight-bits defaults to None, so a 1-bit scheme works without it."""
    out = tmp_path / "binary.keras"
    assert main(["quantize", str(model_file), "-o", str(out), "--scheme", "binary",
                 "--data", str(tmp_path / "calib.npz")]) == 0
    rows = {row.name: row for row in autoqnn.quantization_report(keras.models.load_model(out))}
    assert (rows["conv"].scheme, rows["conv"].weight_bits) == ("binary", 1)
    assert main(["quantize", str(model_file), "-o", str(out), "--scheme", "binary",
                 "--weight-bits", "8"]) == 2  # an explicit misfit is still refused


def _run_cli(*command):
    env = {k: v for k, v in os.environ.items() if k != _startup.LOG_LEVEL_VARIABLE}
    return subprocess.run([*command, "schemes"], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)


def test_python_m_autoqnn_prints_no_tensorflow_startup_log():
    result = _run_cli(sys.executable, "-m", "autoqnn")
    assert result.returncode == 0, result.stderr
    assert "uniform" in result.stdout
    assert not TF_NOISE.search(result.stderr), result.stderr


def test_startup_filter_detects_the_cli_and_keeps_what_the_level_allows():
    assert _startup.running_as_cli(["-m"])
    assert _startup.running_as_cli(["/usr/local/bin/autoqnn", "schemes"])
    assert not _startup.running_as_cli(["/usr/bin/pytest"])
    assert not _startup.running_as_cli([])
    log = ("plain text\n"
           "WARNING: All log messages before absl::InitializeLog() is called are written to "
           "STDERR\n"
           "I0000 00:00:1.2 3 port.cc:153] oneDNN custom operations are on.\n"
           "I0000 00:00:1.2 3 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n"
           "To enable the following instructions: AVX2, in other operations, rebuild\n"
           "E0000 00:00:1.2 3 cuda_platform.cc:52] failed call to cuInit\n")
    assert _startup.kept_log_lines(log, 3) == "plain text\n"
    assert _startup.kept_log_lines(log, 2) == ("plain text\nE0000 00:00:1.2 3 cuda_platform.cc:52] "
                                               "failed call to cuInit\n")
    lines = log.splitlines(True)
    assert _startup.kept_log_lines(log, 0) == "".join(lines[:1] + lines[2:])


def test_search_writes_a_mixed_precision_model(model_file, tmp_path, capsys):
    out = tmp_path / "mixed.keras"
    assert main(["search", str(model_file), "-o", str(out), "--budget", "3.0",
                 "--data", str(tmp_path / "calib.npz"), "--verbose", "0",
                 "--json", str(tmp_path / "search.json")]) == 0
    loaded = keras.models.load_model(out)
    report = autoqnn.quantization_report(loaded)
    assert report.weight_bits_avg <= 3.0
    assert "average weight bits" in capsys.readouterr().out
    record = json.loads((tmp_path / "search.json").read_text())
    assert record["strategy"] == "sensitivity" and record["average_weight_bits"] <= 3.0
    assert {row["layer"] for row in record["policy"]} == {r.name for r in report
                                                          if r.status == "quantized"}
    png = tmp_path / "policy.png"
    assert main(["plot", "policy", str(out), "-o", str(png), "--budget", "3",
                 "--search-json", str(tmp_path / "search.json")]) == 0
    from autoqnn.plots import plot_policy

    figure = plot_policy(loaded, budget=3.0, sensitivity=record["sensitivity"])
    assert len(figure.axes) == 3  # bits, parameter share, measured sensitivity
    with pytest.raises(SystemExit, match=r"--budget 1 is below the smallest candidate bits"):
        main(["search", str(model_file), "-o", str(out), "--budget", "1.0",
              "--data", str(tmp_path / "missing.npz"), "--verbose", "0"])  # before any work


def test_search_with_the_trained_strategy(model_file, tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "labelled.npz", x_train=(rng.random((48, 8, 8)) * 255).astype("uint8"),
             y_train=rng.integers(0, 3, 48))
    out = tmp_path / "searched.keras"
    assert main(["search", str(model_file), "-o", str(out), "--budget", "3.0",
                 "--strategy", "qpl", "--epochs", "1", "--finetune-epochs", "0",
                 "--data", str(tmp_path / "labelled.npz"), "--verbose", "0"]) == 0
    assert autoqnn.quantization_report(keras.models.load_model(out)).weight_bits_avg <= 3.0
    with pytest.raises(SystemExit, match="this --strategy needs labels"):
        main(["search", str(model_file), "-o", str(out), "--budget", "3.0",
              "--strategy", "qpl", "--data", str(tmp_path / "calib.npz")])


def test_python_import_prints_no_tensorflow_startup_log():
    env = {k: v for k, v in os.environ.items() if k != _startup.LOG_LEVEL_VARIABLE}
    result = subprocess.run([sys.executable, "-c", "import autoqnn"], capture_output=True,
                            text=True, env=env, cwd=Path(__file__).resolve().parents[1],
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert not TF_NOISE.search(result.stderr), result.stderr


def _labelled(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "test.npz"
    np.savez(path, x_test=(rng.random((24, 8, 8)) * 255).astype("uint8"),
             y_test=rng.integers(0, 3, 24))
    return path


def test_quantize_under_a_budget_reads_out_accuracy_and_plots(model_file, tmp_path, capsys):
    out, png = tmp_path / "b.keras", tmp_path / "policy.png"
    assert main(["quantize", str(model_file), "-o", str(out), "--budget", "3",
                 "--data", str(tmp_path / "calib.npz"), "--eval-data", str(_labelled(tmp_path)),
                 "--plot", str(png), "--verbose", "0", "--time-budget", "3"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"top-1 on .* \(24 images\): float [\d.]+%, quantized [\d.]+% "
                     r"\([+-][\d.]+ points\)", text), text
    assert autoqnn.quantization_report(keras.models.load_model(out)).weight_bits_avg <= 3.0
    assert png.stat().st_size > 1000
    with pytest.raises(SystemExit, match="--time-budget applies to --budget only"):
        main(["quantize", str(model_file), "-o", str(out), "--time-budget", "3"])
    with pytest.raises(SystemExit, match="--budget needs --data"):
        main(["quantize", str(model_file), "-o", str(out), "--budget", "3"])
    assert main(["quantize", str(model_file), "-o", str(out), "--budget", "40", "--data",
                 str(tmp_path / "calib.npz"), "--verbose", "0", "--time-budget", "1"]) == 0
    assert "every layer gets 8 bits" in capsys.readouterr().err


def test_uncalibrated_quantize_then_calibrate_then_export(model_file, tmp_path, capsys):
    q, tfl = tmp_path / "q.keras", tmp_path / "q.tflite"
    assert main(["quantize", str(model_file), "-o", str(q), "--weight-bits", "4"]) == 0
    err = capsys.readouterr().err
    assert "note: " in err and "autoqnn calibrate" in err and "UserWarning" not in err
    with pytest.raises(SystemExit, match="autoqnn calibrate"):
        main(["export", str(q), "--tflite", str(tfl)])
    assert main(["calibrate", str(q), "--data", str(tmp_path / "calib.npz"), "-o", str(q)]) == 0
    assert "calibrated 3 activation quantizer(s) on 16 inputs" in capsys.readouterr().out
    assert main(["export", str(q), "--tflite", str(tfl)]) == 0
    assert tfl.stat().st_size > 0


def test_info_on_a_float_model_says_it_is_float(model_file, capsys):
    assert main(["info", str(model_file)]) == 0
    text = capsys.readouterr().out
    assert "a float model (2 weighted layers" in text and "no quantization handler" not in text


USER_LAYER = """
import keras


class Doubler(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x
"""


def test_custom_objects_module_loads_a_user_layer(tmp_path, capsys):
    (tmp_path / "my_layers.py").write_text(USER_LAYER)
    namespace = {}
    exec(USER_LAYER, namespace)
    inputs = keras.Input((4,))
    x = namespace["Doubler"]()(inputs)
    path = tmp_path / "user.keras"
    keras.Model(inputs, keras.layers.Dense(2, name="head")(x)).save(path)
    with pytest.raises(SystemExit, match="--custom-objects my_layers.py") as caught:
        main(["info", str(path)])
    assert len(str(caught.value)) < 600  # not the whole config dump
    assert main(["info", str(path), "--custom-objects", str(tmp_path / "my_layers.py")]) == 0
    assert "a float model (1 weighted layers" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--custom-objects file not found"):
        main(["info", str(path), "--custom-objects", str(tmp_path / "nope.py")])


def test_plot_commands_write_pngs(model_file, tmp_path):
    q = tmp_path / "q.keras"
    assert main(["quantize", str(model_file), "-o", str(q), "--weight-bits", "4", "--data",
                 str(tmp_path / "calib.npz")]) == 0
    assert main(["plot", "policy", str(q), "-o", str(tmp_path / "p.png")]) == 0
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"rows": [{"method": "a", "accuracy": 0.9, "size_bytes": 10},
                                            {"method": "b", "top1": 80.0, "bytes": 5}]}))
    assert main(["plot", "pareto", str(results), "-o", str(tmp_path / "r.png")]) == 0
    history = tmp_path / "h.jsonl"
    history.write_text("".join(json.dumps({"trial": i, "config": {}, "accuracy": a,
                                           "sampler": "random"}) + "\n"
                               for i, a in enumerate([0.5, 0.7, 0.6])))
    assert main(["plot", "tuner", str(history), "-o", str(tmp_path / "h.png")]) == 0
    for name in ("p.png", "r.png", "h.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert main(["plot", "policy", str(model_file), "-o", str(tmp_path / "f.png")]) == 2


def test_every_option_has_help_text():
    from autoqnn.cli_parser import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        assert sub.description, name
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, (name, action.dest)
