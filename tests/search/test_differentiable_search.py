"""The differentiable strategies of `autoqnn.search`: qpl, dnas, dnas+qpl (tiny settings)."""

import json

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.search.differentiable import DifferentiableSearch, expected_cost

RNG = np.random.default_rng(0)
X = RNG.normal(size=(384, 12)).astype("float32")
W = RNG.normal(size=(12, 3)).astype("float32")
Y = (X @ W).argmax(1)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    x = keras.layers.Dense(32, activation="relu", name="fc1")(inputs)
    m = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    m.compile(keras.optimizers.Adam(1e-2),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(X, Y, epochs=20, batch_size=64, verbose=0)
    return m


def test_qpl_learns_bits_under_the_budget(model):
    result = autoqnn.search(model, (X[:320], Y[:320]), (X[320:], Y[320:]), strategy="qpl",
                            weight_bits_budget=3.0, epochs=2, finetune_epochs=1, verbose=0,
                            batch_size=32, precision_weight=5.0)
    assert result.average_weight_bits <= 3.0
    assert result.average_weight_bits == pytest.approx(
        result.model.autoqnn_report.weight_bits_avg)
    search = [h for h in result.history if h["step"] == "search"]
    assert len(search) == 2 and search[1]["expected_cost"] < search[0]["expected_cost"] + 1e-6
    assert result.history[-1]["step"] == "done"
    finetune = [h for h in result.history if h["step"] == "finetune"]
    assert finetune and finetune[0]["val_accuracy"] > 0.5  # a real (learnable) task
    # The result is a plain, finalized model: fixed bits everywhere, exportable.
    for layer in result.model.layers:
        for q in getattr(layer, "weight_quantizers", {}).values():
            assert q.is_final


def test_dnas_picks_one_candidate_per_layer(model):
    candidates = [{"name": "uniform", "bits": 4, "granularity": "per_channel"},
                  {"name": "pot", "bits": 4}]
    result = autoqnn.search(model, (X, Y), strategy="dnas", candidates=candidates,
                            weight_bits_budget=4.0, epochs=1, finetune_epochs=0, verbose=0)
    assert {r.scheme for r in result.policy} <= {"uniform", "pot"}
    assert result.average_weight_bits <= 4.0


def test_precision_loss_pulls_the_bits_down(model):
    qmodel = autoqnn.quantize(model, weight_bits=6, activation_bits=None, config={
        ".*": {"weight_quantizer": {"trainable_bits": True, "bits_range": (2, 8)}}})
    loop = DifferentiableSearch(qmodel, (X, Y), (X, Y), budget_cost=3.0, epochs=1,
                                batch_size=64, precision_weight=10.0, verbose=0)
    before = float(expected_cost(qmodel, size=False))
    assert before == pytest.approx(6.0)
    record = loop.run_epoch(0)
    assert record["expected_cost"] < before and record["precision_loss"] > 0


def test_checkpoint_resumes_and_a_finished_search_returns_at_once(model, tmp_path):
    kwargs = dict(strategy="qpl", weight_bits_budget=3.0, finetune_epochs=0, verbose=0,
                  checkpoint_dir=tmp_path)
    first = autoqnn.search(model, (X, Y), epochs=1, **kwargs)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["step"] for h in history] == ["search", "repair", "done"] or \
        [h["step"] for h in history] == ["search", "done"]
    # An interrupted search: only its first epoch finished.
    (tmp_path / "final.keras").unlink()
    (tmp_path / "history.json").write_text(json.dumps(history[:1]))
    resumed = autoqnn.search(model, (X, Y), epochs=2, **kwargs)
    steps = [h for h in resumed.history if h["step"] == "search"]
    assert len(steps) == 2 and steps[0] == history[0]  # the finished epoch is kept
    again = autoqnn.search(model, (X, Y), epochs=2, **kwargs)
    assert again.history == resumed.history and again.bits() == resumed.bits()
    del first


def test_same_seed_same_policy(model):
    kwargs = dict(strategy="dnas+qpl", weight_bits_budget=3.0, epochs=1, finetune_epochs=0,
                  verbose=0, seed=3)
    first = autoqnn.search(model, (X[:128], Y[:128]), **kwargs)
    second = autoqnn.search(model, (X[:128], Y[:128]), **kwargs)
    assert [(r.layer, r.scheme, r.weight_bits) for r in first.policy] == \
        [(r.layer, r.scheme, r.weight_bits) for r in second.policy]


def test_bad_input(model):
    with pytest.raises(ValueError, match=r"weight_bits_budget=1.5 is below the smallest "
                                         r"achievable average of 2 bits"):
        autoqnn.search(model, (X, Y), strategy="qpl", weight_bits_budget=1.5)
    with pytest.raises(ValueError, match=r"strategy='qpl' trains: give train_data"):
        autoqnn.search(model, calibration_data=X, strategy="qpl", weight_bits_budget=3.0)
    with pytest.raises(ValueError, match=r"train_data must be an \(x, y\) pair"):
        autoqnn.search(model, X, strategy="qpl", weight_bits_budget=3.0)
    with pytest.raises(ValueError, match="epochs must be a positive int, got 0"):
        autoqnn.search(model, (X, Y), strategy="dnas", weight_bits_budget=3.0, epochs=0)
    with pytest.raises(ValueError, match=r"strategy must be one of \['sensitivity', 'dnas', "
                                         r"'qpl', 'dnas\+qpl'.*\], got 'annealing'"):
        autoqnn.search(model, (X, Y), strategy="annealing", weight_bits_budget=3.0)


def test_repair_stays_in_the_searched_bit_range(model):
    # At a 2.0 budget the repair must reach it without going below QPL's 2-bit floor
    # (pot, a default candidate, would accept 1 bit).
    result = autoqnn.search(model, (X, Y), strategy="dnas+qpl", weight_bits_budget=2.0,
                            epochs=1, finetune_epochs=0, verbose=0)
    assert min(r.weight_bits for r in result.policy) >= 2
    assert result.average_weight_bits <= 2.0
