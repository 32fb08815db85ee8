"""`autoqnn demo`: the one call under a budget, a TFLite file checked with LiteRT, a plot."""

import re

from autoqnn.cli import main


def test_demo_runs_the_one_call_and_writes_tflite_and_plot(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "--train-subset", "1500",
                 "--finetune-epochs", "0", "--verbose", "1", "--time-budget", "5"]) == 0
    text = capsys.readouterr().out
    assert "one call, budget 3" in text and "uniform W3A8 PTQ" in text
    assert "LiteRT top-1" in text and re.search(r"\d+/\d+ - .*accuracy: ", text)  # progress
    for name in ("cnn_float.keras", "cnn_budget.keras", "cnn_budget.tflite", "policy.png"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_demo_data_uses_the_whole_file(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=(rng.random((700, 28, 28)) * 255).astype("uint8"),
             y_train=rng.integers(0, 10, 700), x_test=(rng.random((300, 28, 28)) * 255)
             .astype("uint8"), y_test=rng.integers(0, 10, 300))
    from autoqnn.demo import _load

    (x_train, _), (x_test, _) = _load(str(path), None)
    assert (len(x_train), len(x_test)) == (700, 300)
    (x_train, _), _ = _load(str(path), 500)
    assert len(x_train) == 500
