"""`autoqnn.search(strategy="rl")` and its DDPG agent (tiny model, a few episodes)."""

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.evaluate import top1_accuracy
from autoqnn.mixed import rl_env
from autoqnn.mixed.ddpg import DDPG, ReplayBuffer

RNG = np.random.default_rng(0)
X = RNG.random((160, 10, 10, 1), dtype=np.float32)
Y = (X[:, :5].mean(axis=(1, 2, 3)) > X[:, 5:].mean(axis=(1, 2, 3))).astype("int64") + \
    (X[:, :, :5].mean(axis=(1, 2, 3)) > 0.5).astype("int64")
TRAIN, VAL = (X[:96], Y[:96]), (X[96:], Y[96:])
SMALL = {"hidden": (32, 32), "batch_size": 16, "warmup_episodes": 1}


@pytest.fixture(scope="module")
def cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 10, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.DepthwiseConv2D(3, strides=2, activation="relu", name="dw")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu", name="pw")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu", name="fc1")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*TRAIN, epochs=15, batch_size=32, verbose=0)
    return model


def _search(model, train_data=None, **kwargs):
    settings = {"val_data": VAL, "calibration_data": X[:64], "strategy": "rl", "episodes": 4,
                "verbose": 0, "num_samples": 64, "finetune_epochs": 0, "agent": SMALL}
    settings.update(kwargs)
    return autoqnn.search(model, train_data, **settings)


def _episodes(result):
    return [h for h in result.history if h["step"] == "episode"]


def test_average_bits_budget_end_to_end(cnn):
    # HAQ's 300x300 agent, one warm-up episode
    result = _search(cnn, weight_bits_budget=3.0, agent={"warmup_episodes": 1})
    report = result.model.autoqnn_report
    assert result.strategy == "rl"
    assert result.average_weight_bits <= 3.0
    assert result.average_weight_bits == pytest.approx(report.weight_bits_avg)
    episodes = _episodes(result)
    assert [h["episode"] for h in episodes] == [0, 1, 2, 3]
    assert [h["warmup"] for h in episodes] == [True, False, False, False]
    assert all(h["average_bits"] <= 3.0 + 1e-9 for h in episodes)
    assert all(set(h["policy"].values()) <= {2, 3, 4, 8} for h in episodes)
    assert sorted(episodes[0]["policy"]) == ["conv1", "dw", "fc1", "logits", "pw"]
    best = max(episodes, key=lambda h: h["reward"])
    assert result.bits() == best["policy"]
    steps = [h["step"] for h in result.history]
    assert steps[0] == "start" and steps[-2:] == ["best", "done"]
    start = result.history[0]
    assert start["float_accuracy"] == pytest.approx(top1_accuracy(cnn, VAL))
    assert start["layers"] == 5
    # The reward: 0.1 x the accuracy change in percent, less the bit term.
    h = episodes[1]
    params = {r.layer: r.params for r in result.policy}
    average = sum(params[p] * b for p, b in h["policy"].items()) / sum(params.values())
    expected = 10 * (h["accuracy"] - start["float_accuracy"]) - 0.1 * (average - 2) / 6
    assert h["reward"] == pytest.approx(expected)


def test_size_budget_is_honoured_exactly(cnn):
    full = autoqnn.quantize(cnn, weight_bits=8, calibration_data=X[:64]).autoqnn_report
    budget = full.size_bytes * 0.5
    result = _search(cnn, size_budget_bytes=budget, episodes=3)
    assert result.size_bytes <= budget
    assert result.size_bytes == pytest.approx(result.model.autoqnn_report.size_bytes)
    for h in _episodes(result):
        assert h["size_bytes"] <= budget + 1e-6
    # The size each episode records is the size the report counts for that policy.
    best = max(_episodes(result), key=lambda h: h["reward"])
    assert best["size_bytes"] == pytest.approx(result.size_bytes)


def test_resume_from_checkpoint_runs_no_episode_twice(cnn, tmp_path, monkeypatch):
    calls = []
    original = rl_env.EpisodeEvaluator.__call__

    def counting(self, policy):
        calls.append(dict(policy))
        return original(self, policy)

    monkeypatch.setattr(rl_env.EpisodeEvaluator, "__call__", counting)
    settings = {"weight_bits_budget": 3.0, "seed": 3, "agent": SMALL}
    first = _search(cnn, episodes=2, checkpoint_dir=tmp_path, **settings)
    assert len(calls) == 2 and list(tmp_path.glob("rl_*/agent.npz"))
    second = _search(cnn, episodes=5, checkpoint_dir=tmp_path, **settings)
    assert len(calls) == 5  # episodes 2, 3, 4 only
    assert _episodes(second)[:2] == _episodes(first)
    # A finished search returns at once, with the same model and history.
    third = _search(cnn, episodes=5, checkpoint_dir=tmp_path, **settings)
    assert len(calls) == 5 and third.history == second.history
    assert third.bits() == second.bits()
    # Same seed, no interruption: the same episodes (agent, buffer and RNG were restored).
    fresh = _search(cnn, episodes=5, **settings)
    strip = [{k: v for k, v in h.items() if "seconds" not in k} for h in _episodes(fresh)]
    assert strip == [{k: v for k, v in h.items() if "seconds" not in k}
                     for h in _episodes(second)]
    assert fresh.bits() == second.bits()


def test_same_seed_same_policy_other_seed_other_episodes(cnn):
    a = _search(cnn, weight_bits_budget=3.5, seed=1, episodes=3)
    b = _search(cnn, weight_bits_budget=3.5, seed=1, episodes=3)
    c = _search(cnn, weight_bits_budget=3.5, seed=2, episodes=3)
    assert a.bits() == b.bits()
    assert [h["policy"] for h in _episodes(a)] == [h["policy"] for h in _episodes(b)]
    assert [h["policy"] for h in _episodes(a)] != [h["policy"] for h in _episodes(c)]


def test_pinned_layers_memory_budget_and_finetune(cnn):
    result = _search(cnn, TRAIN, weight_bits_budget=3.5, episodes=2, finetune_epochs=1,
                     finetune_steps=1, batch_size=32, memory_budget_bytes=300,
                     config={"logits": {"weight_bits": 8}})
    assert "logits" not in _episodes(result)[0]["policy"]
    assert result.bits()["logits"] == 8 and result.average_weight_bits <= 3.5
    assert result.memory_bytes <= 300
    assert [h["step"] for h in result.history if h["step"] in ("memory", "finetune")] == \
        ["memory", "finetune"]


def test_bad_inputs(cnn):
    with pytest.raises(ValueError, match=r"strategy must be one of \['sensitivity', 'dnas', "
                                         r"'qpl', 'dnas\+qpl', 'rl'\] or a strategy config, "
                                         r"got 'x'"):
        _search(cnn, weight_bits_budget=3.0, strategy="x")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=f"episodes must be a positive int, got {bad!r}"):
            _search(cnn, weight_bits_budget=3.0, episodes=bad)
    with pytest.raises(ValueError, match=r"weight_bits_budget=1.5 is below the smallest "
                                         r"achievable average of 2.0000 bits"):
        _search(cnn, weight_bits_budget=1.5)
    with pytest.raises(ValueError, match=r"size_budget_bytes=10 is below the smallest "
                                         r"achievable size of"):
        _search(cnn, size_budget_bytes=10)
    with pytest.raises(ValueError, match="rewards validation accuracy"):
        _search(cnn, weight_bits_budget=3.0, val_data=None)
    with pytest.raises(ValueError, match="memory_budget_bytes= alone"):
        _search(cnn, memory_budget_bytes=300)
    with pytest.raises(ValueError, match="threads would share the model"):
        _search(cnn, weight_bits_budget=3.0, executor=2)
    with pytest.raises(ValueError, match="executor= is not a setting of strategy .sensitivity.; "
                                         "it is used by .rl."):
        autoqnn.search(cnn, calibration_data=X, weight_bits_budget=3.0, executor="ray")
    with pytest.raises(ValueError, match=r"agent has unknown keys \['gamma'\]"):
        _search(cnn, weight_bits_budget=3.0, agent={"gamma": 1.0})
    with pytest.raises(ValueError, match="tau must be a number in"):
        _search(cnn, weight_bits_budget=3.0, agent={"tau": 2.0})
    with pytest.raises(ValueError, match="finetune_steps > 0 trains"):
        _search(cnn, weight_bits_budget=3.0, finetune_steps=2)


def test_state_features_action_mapping_and_budget_rule(cnn):
    qmodel = autoqnn.quantize(cnn, weight_bits=8, calibration_data=X[:8])
    from autoqnn.mixed.table import searchable_layers

    features = rl_env.layer_features(searchable_layers(qmodel))
    # index, conv, depthwise, c_in, c_out, kernel, stride, input h*w, params, share
    np.testing.assert_array_equal(features[:, 0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(features[:, 1], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(features[:, 2], [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(features[:, 3:8], [[1, 8, 9, 1, 100], [8, 8, 9, 2, 64],
                                                     [8, 16, 1, 1, 9], [144, 32, 1, 1, 1],
                                                     [32, 3, 1, 1, 1]])
    np.testing.assert_array_equal(features[:, 8], [72, 72, 128, 4608, 96])
    assert features[:, 9].sum() == pytest.approx(1.0)
    state = rl_env.normalise(features)
    assert state.min() == 0.0 and state.max() == 1.0
    assert [rl_env.action_index(a, 4) for a in (0.0, 0.24, 0.25, 0.99, 1.0)] == [0, 0, 1, 3, 3]
    # HAQ's rule: from the last layer backwards, one step at a time, until it fits.
    params = [100, 100, 100]
    bits = (2, 4, 8)

    def fits(indices):
        return sum(p * bits[i] for p, i in zip(params, indices)) <= 4.0 * 300

    assert rl_env.enforce_budget([2, 2, 2], fits) == [1, 1, 1]
    assert rl_env.enforce_budget([2, 0, 2], fits) == [1, 0, 1]  # 8,2,4 > 4 bits; 4,2,4 fits
    assert rl_env.enforce_budget([1, 1, 1], fits) == [1, 1, 1]


def test_actor_output_in_unit_interval():
    agent = DDPG(state_dim=4, hidden=(8, 8), seed=0)
    states = np.concatenate([RNG.normal(scale=100, size=(32, 4)), np.eye(4) * 1e6])
    means = np.asarray(agent.actor(states.astype("float32")))
    assert means.shape == (36, 1) and np.all((means >= 0) & (means <= 1))
    rng = np.random.default_rng(0)
    noisy = [agent.act(s, sigma=0.5, rng=rng) for s in states]
    assert all(0.0 <= a <= 1.0 for a in noisy) and len(set(noisy)) > 1
    assert agent.act(states[0]) == pytest.approx(float(means[0, 0]), abs=1e-6)


def test_soft_update_with_tau():
    agent = DDPG(state_dim=3, hidden=(8, 8), tau=0.01, batch_size=4, seed=0)
    online = agent.actor.get_weights()
    agent.target_actor.set_weights([np.zeros_like(w) for w in online])
    agent.soft_update()
    for t, s in zip(agent.target_actor.get_weights(), online):
        np.testing.assert_allclose(t, 0.01 * s, rtol=1e-6, atol=1e-9)
    # The update step's own soft update: target' = tau * online' + (1 - tau) * target.
    rng = np.random.default_rng(1)
    for _ in range(4):
        agent.observe(rng.random(3), rng.random(), 1.0, rng.random(3), True)
    before = agent.target_critic.get_weights()
    agent.update(rng)
    after = agent.critic.get_weights()
    for t, b, s in zip(agent.target_critic.get_weights(), before, after):
        np.testing.assert_allclose(t, 0.01 * s + 0.99 * b, rtol=1e-5, atol=1e-7)


def test_replay_buffer_sample_and_state():
    buffer = ReplayBuffer(capacity=3, state_dim=2)
    for i in range(5):  # 0 and 1 are overwritten
        buffer.add([i, i], i / 10, float(i), [i + 1, i + 1], i == 4)
    assert len(buffer) == 3
    states, actions, rewards, next_states, terminals = buffer.sample(
        50, np.random.default_rng(0))
    assert states.shape == (50, 2) and actions.shape == (50, 1) and rewards.shape == (50,)
    assert set(rewards.tolist()) == {2.0, 3.0, 4.0}
    np.testing.assert_allclose(states[:, 0], rewards)
    np.testing.assert_allclose(next_states[:, 0], rewards + 1)
    np.testing.assert_allclose(actions[:, 0], rewards / 10, rtol=1e-6)
    np.testing.assert_array_equal(terminals, rewards == 4.0)
    copy = ReplayBuffer(capacity=3, state_dim=2)
    copy.set_state(buffer.get_state())
    assert copy.position == buffer.position and np.array_equal(copy.rewards, buffer.rewards)
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(2, 1).sample(1, np.random.default_rng(0))


def test_agent_state_round_trip():
    rng = np.random.default_rng(0)
    agent = DDPG(state_dim=3, hidden=(8, 8), batch_size=4, seed=0)
    for _ in range(6):
        agent.observe(rng.random(3), rng.random(), rng.random(), rng.random(3), False)
    agent.update(rng)
    other = DDPG(state_dim=3, hidden=(8, 8), batch_size=4, seed=5)
    other.set_state(agent.get_state())
    state = np.array([0.1, 0.5, 0.9], "float32")
    assert other.act(state) == agent.act(state) and other.baseline == agent.baseline
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    assert other.update(a) == agent.update(b)  # optimizer slots restored too
