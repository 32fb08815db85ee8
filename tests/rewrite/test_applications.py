"""Every keras.applications architecture (weights=None) quantizes, runs and round-trips.

CI runs the smallest member of each family; `pytest -m slow` runs all of them
(`python tools/check_applications.py` prints the same check as a table).
"""

import importlib.util
from pathlib import Path

import keras
import pytest

_spec = importlib.util.spec_from_file_location(
    "check_applications", Path(__file__).parents[2] / "tools" / "check_applications.py")
check_applications = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_applications)

FAMILIES = [
    "ConvNeXtTiny", "DenseNet121", "EfficientNetB0", "EfficientNetV2B0", "InceptionResNetV2",
    "InceptionV3", "MobileNet", "MobileNetV2", "MobileNetV3Small", "NASNetMobile", "ResNet50",
    "ResNet50V2", "VGG16", "Xception",
]
ALL = check_applications.architectures()


def test_family_list_covers_every_architecture_family():
    # Every architecture belongs to one of the families tested in CI.
    prefixes = {name.rstrip("0123456789").replace("V2B", "V2").replace("V3Small", "V3")
                for name in FAMILIES}
    for name in ALL:
        assert any(name.startswith(p[:6]) for p in prefixes), name


def _run(name, tmp_path):
    row = check_applications.check(name, tmp_dir=str(tmp_path))
    keras.backend.clear_session()
    assert row["quantized_layers"] > 0
    # Only normalisation layers that cannot be folded (and ConvNeXt's per-channel
    # LayerScale) may stay float, and each says why.
    for layer, reason in row["float_layers"].items():
        assert "Normalization" in reason or "LayerScale" in reason, (layer, reason)


@pytest.mark.parametrize("name", FAMILIES)
def test_family(name, tmp_path):
    _run(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in ALL if n not in FAMILIES])
def test_every_architecture(name, tmp_path):
    _run(name, tmp_path)
