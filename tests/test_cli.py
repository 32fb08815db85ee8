"""The `autoqnn` command line, run in-process on tiny models."""

import keras
import numpy as np
import pytest

from autoqnn.cli import main


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
    (tmp_path / "junk.npz").write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["quantize", str(model_file), "-o", str(tmp_path / "q.keras"), "--data",
              str(tmp_path / "nothing.npz")])


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "--train-subset", "512",
                 "--verbose", "1"]) == 0
    text = capsys.readouterr().out
    assert "W8A8 PTQ" in text and "W4A4 QAT" in text
    for name in ("cnn_float", "cnn_w8a8", "cnn_w4a4"):
        assert (tmp_path / f"{name}.keras").is_file()
