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

# Every keras.applications architecture by family, and the one member of each family that
# CI runs (the smallest). A new architecture fails the coverage test until it is placed.
FAMILY_MEMBERS = {
    "ConvNeXt": ["ConvNeXtTiny", "ConvNeXtSmall", "ConvNeXtBase", "ConvNeXtLarge",
                 "ConvNeXtXLarge"],
    "DenseNet": ["DenseNet121", "DenseNet169", "DenseNet201"],
    "EfficientNet": [f"EfficientNetB{i}" for i in range(8)],
    "EfficientNetV2": ["EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2",
                       "EfficientNetV2B3", "EfficientNetV2S", "EfficientNetV2M",
                       "EfficientNetV2L"],
    "InceptionResNetV2": ["InceptionResNetV2"],
    "InceptionV3": ["InceptionV3"],
    "MobileNet": ["MobileNet"],
    "MobileNetV2": ["MobileNetV2"],
    "MobileNetV3": ["MobileNetV3Small", "MobileNetV3Large"],
    "NASNet": ["NASNetMobile", "NASNetLarge"],
    "ResNet": ["ResNet50", "ResNet101", "ResNet152"],
    "ResNetV2": ["ResNet50V2", "ResNet101V2", "ResNet152V2"],
    "VGG": ["VGG16", "VGG19"],
    "Xception": ["Xception"],
}
FAMILIES = [
    "ConvNeXtTiny", "DenseNet121", "EfficientNetB0", "EfficientNetV2B0", "InceptionResNetV2",
    "InceptionV3", "MobileNet", "MobileNetV2", "MobileNetV3Small", "NASNetMobile", "ResNet50",
    "ResNet50V2", "VGG16", "Xception",
]
ALL = check_applications.architectures()


def test_family_list_covers_every_architecture_family():
    members = [name for names in FAMILY_MEMBERS.values() for name in names]
    assert len(members) == len(set(members)), "an architecture is in two families"
    assert sorted(members) == ALL, "place every keras.applications architecture in a family"
    # Each family has exactly one member among the architectures CI runs, and CI runs
    # nothing outside the families.
    for family, names in FAMILY_MEMBERS.items():
        assert len(set(names) & set(FAMILIES)) == 1, family
    assert set(FAMILIES) <= set(members)


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
