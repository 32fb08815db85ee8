"""`autoqnn.finetune`: convergence over seeds, distillation, SQNR, BatchNorm, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import autoqnn
from autoqnn.finetune import finetune

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _task(n=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype("float32")
    y = ((x[:, 0] * x[:, 1] > 0).astype(int) + (x[:, 2] > 0.5)).astype("int64")
    return x, y


def _mlp(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16,))
    h = keras.layers.Dense(64, activation="relu")(inputs)
    h = keras.layers.Dense(64, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h))


def _loss(model, x, y):
    return float(LOSS(y, model.predict(x, verbose=0)))


def test_w4a4_converges_on_every_seed_where_float_does():
    x, y = _task()
    for seed in range(4):
        model = _mlp(seed)
        start = _loss(model, x, y)
        reference = keras.models.clone_model(model)
        reference.set_weights(model.get_weights())
        reference.compile(keras.optimizers.Adam(1e-2), LOSS)
        reference.fit(x, y, epochs=3, batch_size=32, verbose=0)
        assert _loss(reference, x, y) <= 0.9 * start  # float converges on this seed
        qmodel = autoqnn.quantize(model, weight_bits=4, activation_bits=4)  # uncalibrated
        history = finetune(qmodel, (x, y), epochs=3, batch_size=32, learning_rate=1e-2,
                           verbose=0)
        assert _loss(qmodel, x, y) <= 0.9 * start, (seed, history)
        assert history["learning_rate"][-1] < 1e-4  # cosine decay reaches ~0


def test_uncalibrated_quantizers_are_calibrated_first_and_model_is_trained_in_place():
    x, y = _task(128)
    qmodel = autoqnn.quantize(_mlp(0), weight_bits=4, activation_bits=4)
    assert not all(q.is_calibrated for q in autoqnn.activation_quantizers(qmodel))
    before = [np.array(w) for w in qmodel.get_weights()]
    finetune(qmodel, (x, y), epochs=1, verbose=0)
    assert all(q.is_calibrated for q in autoqnn.activation_quantizers(qmodel))
    assert any(not np.allclose(a, b) for a, b in zip(before, qmodel.get_weights()))


def test_distillation_from_a_teacher_and_tf_data_input():
    x, y = _task(256)
    teacher = _mlp(1)
    teacher.compile(keras.optimizers.Adam(1e-2), LOSS)
    teacher.fit(x, y, epochs=3, batch_size=32, verbose=0)
    qmodel = autoqnn.quantize(teacher, weight_bits=3, activation_bits=4, calibration_data=x)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    history = finetune(qmodel, dataset, epochs=2, teacher=teacher, distill_weight=1.0,
                       verbose=0)
    assert len(history["loss"]) == 2 and np.isfinite(history["loss"]).all()
    # Pure distillation pulls the student toward the teacher's outputs.
    gap = np.mean(np.abs(qmodel.predict(x, verbose=0) - teacher.predict(x, verbose=0)))
    assert gap < 1.0


def test_sqnr_term_is_applied_during_training_and_restored():
    x, y = _task(128)
    qmodel = autoqnn.quantize(_mlp(0), weight_bits=2, activation_bits=2, calibration_data=x)
    config = qmodel.get_config()
    plain = finetune(qmodel, (x, y), epochs=1, verbose=0)
    with_sqnr = finetune(qmodel, (x, y), epochs=1, sqnr_weight=1.0, verbose=0)
    # The term is -mean SQNR in dB (a few dB at 2 bits): the total loss drops below the task's.
    assert with_sqnr["loss"][0] < plain["loss"][0] - 1.0
    assert qmodel.get_config() == config


def test_batchnorm_frozen_throughout_keeps_its_statistics():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 3, 64)
    qmodel = autoqnn.quantize(model, weight_bits=4, activation_bits=8, fold_batchnorm=False,
                              calibration_data=x)
    bn = qmodel.get_layer("bn")
    mean = np.array(bn.moving_mean)
    finetune(qmodel, (x, y), epochs=1, freeze_batchnorm_after=0, verbose=0)
    np.testing.assert_array_equal(np.array(bn.moving_mean), mean)
    assert bn.trainable
    finetune(qmodel, (x, y), epochs=1, freeze_batchnorm_after=1, verbose=0)
    assert not np.array_equal(np.array(bn.moving_mean), mean)


def test_validation_history_and_best_epoch_restored():
    x, y = _task(384)
    qmodel = autoqnn.quantize(_mlp(2), weight_bits=4, activation_bits=4, calibration_data=x)
    val = (x[-128:], y[-128:])
    history = finetune(qmodel, (x[:-128], y[:-128]), epochs=3, val_data=val, verbose=0)
    assert len(history["val_accuracy"]) == 3 and len(history["val_loss"]) == 3
    accuracy = np.mean(np.argmax(qmodel.predict(val[0], verbose=0), -1) == val[1])
    assert accuracy == pytest.approx(max(history["val_accuracy"]))


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs must be a positive int, got 0"),
    ({"sqnr_weight": -1.0}, r"sqnr_weight must be a number >= 0.0, got -1.0"),
    ({"learning_rate": 0.0}, r"learning_rate must be a number > 0.0, got 0.0"),
    ({"distill_weight": 2.0}, r"distill_weight must be in \[0, 1\], got 2.0"),
    ({"freeze_batchnorm_after": -1}, "freeze_batchnorm_after must be an int >= 0"),
])
def test_bad_arguments(kwargs, message):
    x, y = _task(32)
    qmodel = autoqnn.quantize(_mlp(0), weight_bits=4, activation_bits=None)
    with pytest.raises(ValueError, match=message):
        finetune(qmodel, (x, y), verbose=0, **kwargs)


def test_bad_models_teacher_and_data():
    x, y = _task(32)
    with pytest.raises(ValueError, match="finetune needs a model quantized by autoqnn"):
        finetune(_mlp(0), (x, y), verbose=0)
    qmodel = autoqnn.quantize(_mlp(0), weight_bits=4, activation_bits=None)
    inputs = keras.Input((16,))
    wrong = keras.Model(inputs, keras.layers.Dense(5)(inputs))
    with pytest.raises(ValueError, match=r"teacher outputs shape \(2, 5\) but the quantized "
                                         r"model outputs \(2, 3\)"):
        finetune(qmodel, (x, y), teacher=wrong, verbose=0)
    with pytest.raises(ValueError, match="train_data must be an \\(x, y\\) pair"):
        finetune(qmodel, x, verbose=0)
    with pytest.raises(ValueError, match="same positive number of inputs and labels, got 32 "
                                         "and 31"):
        finetune(qmodel, (x, y[:-1]), verbose=0)


def test_reestimate_batchnorm_sets_the_average_batch_statistics():
    from autoqnn.finetune import reestimate_batchnorm

    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h))
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1), dtype=np.float32)
    qmodel = autoqnn.quantize(keras.Model(inputs, outputs), weight_bits=4, activation_bits=8,
                              fold_batchnorm=False, calibration_data=x)
    ranges = [np.array(v) for q in autoqnn.activation_quantizers(qmodel) for v in q.weights]
    assert reestimate_batchnorm(qmodel, x, batch_size=16) == 1
    conv = qmodel.get_layer("conv")
    features = keras.Model(qmodel.inputs, conv.output)(x).numpy().reshape(4, -1, 4)
    batch_means = features.mean(axis=1).mean(axis=0)  # average over the 4 batches of 16
    np.testing.assert_allclose(np.array(qmodel.get_layer("bn").moving_mean), batch_means,
                               rtol=1e-4, atol=1e-6)
    after = [np.array(v) for q in autoqnn.activation_quantizers(qmodel) for v in q.weights]
    assert all(np.array_equal(a, b) for a, b in zip(ranges, after))  # ranges restored


def test_teacher_is_not_trained_and_keeps_its_flag():
    x, y = _task(64)
    teacher = _mlp(1)
    before = [np.array(w) for w in teacher.get_weights()]
    qmodel = autoqnn.quantize(teacher, weight_bits=4, activation_bits=8, calibration_data=x)
    finetune(qmodel, (x, y), epochs=1, teacher=teacher, verbose=0)
    assert teacher.trainable
    assert all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights()))


def test_a_model_compiled_with_a_string_loss_finetunes():
    """The task loss comes from the model's compile() when not given (a loss function by
    name is wrapped as a Keras Loss)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    qmodel = autoqnn.quantize(model, weight_bits=8, calibration_data=x, verbose=0)
    qmodel.compile("adam", "sparse_categorical_crossentropy")
    history = autoqnn.finetune(qmodel, (x, y), epochs=1, verbose=0)
    assert np.isfinite(history["loss"][0])
