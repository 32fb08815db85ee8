"""A .tflite file is validated by LiteRT before it is written, and written atomically."""

import keras
import pytest

from autoqnn.export import ExportError
from autoqnn.export.tflite import checked_interpreter, write_atomically


def test_invalid_flatbuffer_is_refused_before_writing():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ExportError, match="nothing was written"):
        checked_interpreter(b"not a flatbuffer" * 8, model)


def test_write_atomically_replaces_the_file(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"old")
    write_atomically(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]
