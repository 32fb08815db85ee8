"""The differentiable strategies of `autoqnn.search`: qpl, dnas, dnas+qpl (tiny settings)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import autoqnn
from autoqnn.mixed.budget import expected_cost, project_bits
from autoqnn.mixed.differentiable import DifferentiableSearch

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
    assert len(search) == 2 and result.history[-1]["step"] == "done"
    derive = next(h for h in result.history if h["step"] == "derive")
    assert derive["val_accuracy"] > 0.5  # the searched (not yet fine-tuned) model works
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
    assert sorted(r.layer for r in result.policy) == ["fc1", "logits"]
    assert {r.scheme for r in result.policy} <= {"uniform", "pot"}
    for layer in result.model.layers:  # one scheme left per tensor, no mixture
        for q in getattr(layer, "weight_quantizers", {}).values():
            assert q.is_final and len(q.candidates) == 1


def test_precision_loss_pulls_the_bits_down(model):
    qmodel = autoqnn.quantize(model, weight_bits=6, activation_bits=None, config={
        ".*": {"weight_quantizer": {"trainable_bits": True, "bits_range": (2, 8)}}})
    loop = DifferentiableSearch(qmodel, (X, Y), (X, Y), budget_cost=3.0, epochs=1,
                                batch_size=64, precision_weight=10.0, verbose=0,
                                project=False)
    before = float(expected_cost(qmodel, size=False))
    record = loop.run_epoch(0)
    assert record["expected_cost"] < before and record["precision_loss"] > 0


def test_projection_shifts_every_bitwidth_down_to_the_budget(model):
    qmodel = autoqnn.quantize(model, weight_bits=6, activation_bits=None, config={
        ".*": {"weight_quantizer": {"trainable_bits": True, "bits_range": (2, 8)}}})
    layers = [layer for layer in qmodel.layers if getattr(layer, "weight_quantizers", None)]
    params = [int(np.prod(layer.kernel.shape)) for layer in layers]
    layers[0].weight_quantizers["kernel"].bits_variable.assign(6.0)
    layers[1].weight_quantizers["kernel"].bits_variable.assign(5.0)
    # Average (n0 * (6 - s) + n1 * (5 - s)) / (n0 + n1) = 3 gives the common shift s
    # (both stay above the range's bottom, 2).
    shift = (6 * params[0] + 5 * params[1]) / sum(params) - 3.0
    assert 5.0 - shift > 2.0
    assert project_bits(qmodel, 3.0) == pytest.approx(shift, abs=1e-6)
    got = [layer.weight_quantizers["kernel"].bits for layer in layers]
    assert got == pytest.approx([6.0 - shift, 5.0 - shift], abs=1e-5)
    assert float(expected_cost(qmodel, size=False)) == pytest.approx(3.0, abs=1e-5)
    assert project_bits(qmodel, 3.0) == 0.0  # already within the budget
    # A size budget (total weight bits) works the same way.
    total = float(expected_cost(qmodel, size=True))
    project_bits(qmodel, 0.9 * total, size=True)
    assert float(expected_cost(qmodel, size=True)) == pytest.approx(0.9 * total, rel=1e-5)


def test_search_trains_within_the_budget_with_projection(model):
    qmodel = autoqnn.quantize(model, weight_bits=6, activation_bits=None, config={
        ".*": {"weight_quantizer": {"trainable_bits": True, "bits_range": (2, 8)}}})
    loop = DifferentiableSearch(qmodel, (X, Y), (X, Y), budget_cost=3.0, epochs=1,
                                batch_size=64, verbose=0)
    assert float(expected_cost(qmodel, size=False)) == pytest.approx(3.0, abs=1e-5)
    record = loop.run_epoch(0)
    assert record["expected_cost"] <= 3.0 + 1e-5


def test_joint_update_trains_weights_and_bits_on_training_batches_only(model):
    def joint(val):
        keras.utils.set_random_seed(0)
        qmodel = autoqnn.quantize(model, weight_bits=6, activation_bits=None, verbose=0,
                                  config={".*": {"weight_quantizer": {
                                      "trainable_bits": True, "bits_range": (2, 8)}}})
        loop = DifferentiableSearch(qmodel, (X, Y), val, budget_cost=3.0, epochs=1,
                                    batch_size=64, verbose=0, arch_update="joint")
        return qmodel, loop

    qmodel, loop = joint((X[:8], Y[:8]))
    bits = [q.bits_variable for layer in qmodel.layers
            for q in getattr(layer, "weight_quantizers", {}).values()]
    kernel = qmodel.get_layer("fc1").kernel.numpy().copy()
    start = [float(b.numpy()) for b in bits]
    loop._joint_step(X[:64], Y[:64])
    assert not np.allclose(qmodel.get_layer("fc1").kernel.numpy(), kernel)
    assert [float(b.numpy()) for b in bits] != start  # the bits' gradients flowed
    loop.run_epoch(1)
    assert float(expected_cost(qmodel, size=False)) <= 3.0 + 1e-5
    # The validation split only measures: another one trains the very same weights.
    a, loop_a = joint((X[:8], Y[:8]))
    b, loop_b = joint((X[8:16], 1 - Y[8:16]))
    loop_a.run_epoch(0), loop_b.run_epoch(0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    with pytest.raises(ValueError, match="arch_update must be one of"):
        DifferentiableSearch(qmodel, (X, Y), (X, Y), budget_cost=3.0, arch_update="alternate")


def test_size_and_memory_budgets_hold(model):
    size = autoqnn.quantize(model, weight_bits=3, activation_bits=8,
                            calibration_data=X[:64]).autoqnn_report.size_bytes
    # The largest activation is fc1's 32 values: 32 bytes at 8 bits, 16 at 4.
    result = autoqnn.search(model, (X, Y), strategy="dnas+qpl", size_budget_bytes=size,
                            memory_budget_bytes=20, activation_bits=8, epochs=1,
                            finetune_epochs=0, verbose=0)
    assert result.size_bytes <= size and result.model.autoqnn_report.size_bytes <= size
    assert result.memory_bytes <= 20
    assert result.history[-1]["step"] == "memory"


def test_checkpoint_resumes_and_a_finished_search_returns_at_once(model, tmp_path):
    kwargs = dict(strategy="qpl", weight_bits_budget=3.0, epochs=2, finetune_epochs=0,
                  verbose=0, checkpoint_dir=tmp_path)
    first = autoqnn.search(model, (X, Y), **kwargs)
    (folder,) = tmp_path.iterdir()  # one folder, keyed by the model, data and settings
    history = json.loads((folder / "history.json").read_text())
    assert [h["step"] for h in history] == ["start", "search", "search"]
    # An interrupted search: only its first epoch finished.
    (folder / "result.json").unlink()
    (folder / "history.json").write_text(json.dumps(history[:2]))
    resumed = autoqnn.search(model, (X, Y), **kwargs)
    steps = [h for h in resumed.history if h["step"] == "search"]
    assert len(steps) == 2 and steps[0] == history[1]  # the finished epoch is kept
    assert steps[1] != history[2]  # the second one ran again
    again = autoqnn.search(model, (X, Y), **kwargs)
    assert again.history == resumed.history and again.bits() == resumed.bits()
    del first


def test_another_budget_in_the_same_checkpoint_dir_starts_fresh(model, tmp_path):
    kwargs = dict(strategy="qpl", epochs=1, finetune_epochs=0, verbose=0,
                  checkpoint_dir=tmp_path)
    high = autoqnn.search(model, (X, Y), weight_bits_budget=4.0, **kwargs)
    low = autoqnn.search(model, (X, Y), weight_bits_budget=2.5, **kwargs)
    assert low.average_weight_bits <= 2.5
    assert high.average_weight_bits > 2.5  # (else the test proves nothing)
    assert len(list(tmp_path.iterdir())) == 2
    other_seed = autoqnn.search(model, (X, Y), weight_bits_budget=2.5, seed=1, **kwargs)
    assert len(list(tmp_path.iterdir())) == 3
    del other_seed


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
                                         r"'qpl', 'dnas\+qpl'.*\] or a strategy config, "
                                         r"got 'annealing'"):
        autoqnn.search(model, (X, Y), strategy="annealing", weight_bits_budget=3.0)
    with pytest.raises(ValueError, match=r"arch_update must be one of \['bilevel', 'joint'\], "
                                         "got 'both'"):
        autoqnn.search(model, (X, Y), strategy="qpl", weight_bits_budget=3.0,
                       arch_update="both")


def test_repair_stays_in_the_searched_bit_range(model):
    # At a 2.0 budget the repair must reach it without going below QPL's 2-bit floor
    # (pot, a default candidate, would accept 1 bit).
    result = autoqnn.search(model, (X, Y), strategy="dnas+qpl", weight_bits_budget=2.0,
                            epochs=1, finetune_epochs=0, verbose=0)
    assert min(r.weight_bits for r in result.policy) >= 2
    assert result.average_weight_bits <= 2.0


def test_hard_mode_forward_is_the_argmax_candidate_and_logits_still_learn():
    from autoqnn.layers import QuantDense

    candidates = [{"name": "uniform", "bits": 3, "granularity": "per_channel"},
                  {"name": "pot", "bits": 3}]
    mixed = QuantDense(4, weight_quantizers={"kernel": {"candidates": candidates}})
    alone = QuantDense(4, weight_quantizers={"kernel": {"scheme": candidates[1]}})
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    mixed(x), alone(x)
    alone.kernel.assign(mixed.kernel)
    alone.bias.assign(mixed.bias)
    q = mixed.weight_quantizers["kernel"]
    q.logits.assign([0.1, 0.3])
    q.temperature_variable.assign(0.0)
    np.testing.assert_allclose(np.asarray(mixed(x)), np.asarray(alone(x)), atol=1e-6)
    with tf.GradientTape() as tape:
        loss = keras.ops.sum(keras.ops.square(mixed(x)))
    grad = tape.gradient(loss, q.logits)
    assert grad is not None and float(np.abs(np.asarray(grad)).sum()) > 0


def test_one_scheme_for_the_whole_model(model):
    candidates = [{"name": "uniform", "bits": 4, "granularity": "per_channel"},
                  {"name": "pot", "bits": 4, "granularity": "per_channel"}]
    result = autoqnn.search(model, (X, Y), strategy="dnas", candidates=candidates,
                            weight_bits_budget=4.0, epochs=2, finetune_epochs=0, verbose=0,
                            scheme_scope="model")
    assert len({r.scheme for r in result.policy}) == 1
    chosen = [h["model_scheme"] for h in result.history if "model_scheme" in h]
    assert chosen == [result.policy[0].scheme]
    with pytest.raises(ValueError, match=r"scheme_scope must be one of \['layer', 'model'\], "
                                         "got 'net'"):
        autoqnn.search(model, (X, Y), strategy="dnas", weight_bits_budget=4.0,
                       scheme_scope="net", verbose=0)


def test_default_candidates_search_exports_to_tflite_with_parity(tmp_path):
    """dnas+qpl with the default (per-channel) candidates on Conv + BN: the searched model
    keeps BatchNorm unfolded for its fine-tune; export folds it and LiteRT matches Keras."""
    from autoqnn.export import run_tflite

    rng = np.random.default_rng(3)
    images = rng.random((192, 10, 10, 1), dtype=np.float32)
    labels = (images[:, :5].mean(axis=(1, 2, 3)) > images[:, 5:].mean(axis=(1, 2, 3))) \
        .astype("int64")
    inputs = keras.Input((10, 10, 1))
    h = keras.layers.Conv2D(8, 3, use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    float_model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(h))
    float_model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    float_model.fit(images, labels, epochs=2, verbose=0)
    result = autoqnn.search(float_model, (images[:160], labels[:160]),
                            (images[160:], labels[160:]), strategy="dnas+qpl",
                            weight_bits_budget=3.0, activation_bits=8, epochs=2,
                            finetune_epochs=1, batch_size=32, verbose=0)
    assert result.average_weight_bits <= 3.0
    assert {r.scheme for r in result.policy} <= {"uniform", "pot", "apot", "acd"}
    assert any(isinstance(layer, keras.layers.BatchNormalization)
               for layer in result.model.layers)
    info = autoqnn.export_tflite(result.model, tmp_path / "searched.tflite")
    expected = result.model.predict(images[:32], verbose=0)
    step = info.output_quantization[0][0]  # the int8 output's scale
    steps = np.abs(run_tflite(info.path, images[:32]) - expected) / step
    assert steps.max() <= 2.0 + 1e-4


def test_qpl_starts_at_the_sensitivity_policy_or_at_the_budget(model):
    kwargs = dict(strategy="qpl", weight_bits_budget=3.0, epochs=1, finetune_epochs=0,
                  verbose=0)
    result = autoqnn.search(model, (X, Y), **kwargs)
    start = result.history[0]
    assert start["step"] == "start" and set(start["policy"]) == {"fc1", "logits"}
    params = {r.layer: r.params for r in result.policy}
    average = sum(params[p] * b for p, b in start["policy"].items()) / sum(params.values())
    assert average <= 3.0 + 1e-9 and all(2 <= b <= 6 for b in start["policy"].values())
    plain = autoqnn.search(model, (X, Y), qpl_start="budget", **kwargs)
    assert "start" not in [h["step"] for h in plain.history]
    with pytest.raises(ValueError, match=r"qpl_start must be one of \['sensitivity', 'budget'\], "
                                         "got 'x'"):
        autoqnn.search(model, (X, Y), qpl_start="x", **kwargs)


def test_dnas_qpl_on_a_keras_application_model(tmp_path):
    """The whole trained search on keras.applications MobileNetV2 (weights=None, 32x32):
    every conv / depthwise / dense layer searched, the budget honoured, the searched model
    saves and loads with plain Keras. Candidates that take tensor bits keep the trace short."""
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                           classes=3)
    images = RNG.random((64, 32, 32, 3), dtype=np.float32)
    labels = RNG.integers(0, 3, size=64)
    candidates = [{"name": "uniform", "bits": 4, "granularity": "per_channel"},
                  {"name": "pot", "bits": 4, "granularity": "per_channel"}]
    result = autoqnn.search(model, (images[:48], labels[:48]), (images[48:], labels[48:]),
                            strategy="dnas+qpl", candidates=candidates, weight_bits_budget=3.0,
                            activation_bits=8, epochs=1, finetune_epochs=0, batch_size=16,
                            verbose=0)
    assert result.average_weight_bits <= 3.0
    assert len(result.policy) > 50 and {r.scheme for r in result.policy} <= {"uniform", "pot"}
    result.model.save(tmp_path / "searched.keras")
    loaded = keras.models.load_model(tmp_path / "searched.keras")
    np.testing.assert_allclose(np.asarray(loaded(images[:4])),
                               np.asarray(result.model(images[:4])), atol=1e-5)
