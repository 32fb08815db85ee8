"""A small DDPG agent written with Keras: the learner of the "rl" search strategy.

Deep deterministic policy gradient (Lillicrap et al. 2016) with the settings
HAQ uses for its bit-width agent (`../shared/REFERENCES.md`, "HAQ / Jung RL"):

* actor `mu(s)`: state -> 300 -> 300 -> 1, ReLU, sigmoid output (an action
  in [0, 1]); critic `Q(s, a)`: [state, action] -> 300 -> 300 -> 1, ReLU;
  the output layers start uniform in +-3e-3, the hidden ones Glorot, all
  seeded from `seed` (no global random state is touched);
* Adam, learning rates 1e-4 (actor) and 1e-3 (critic); target networks
  follow with soft updates `theta' <- tau * theta + (1 - tau) * theta'`,
  tau = 0.01;
* critic target `y = (r - baseline) + discount * (1 - terminal) * Q'(s', mu'(s'))`
  with discount 1, where `baseline` is a moving average of the sampled
  batches' mean reward (`baseline += baseline_decay * (mean - baseline)`,
  decay 0.5): the critic learns rewards relative to the recent average;
* exploration: a truncated normal around `mu(s)` on [0, 1] with the caller's
  sigma (the strategy decays it per episode);
* a uniform replay buffer (`ReplayBuffer`).

`get_state` / `set_state` carry everything (network and target weights, both
optimizers' slots, the buffer, the baseline) as numpy arrays, so a search
checkpoint resumes the agent exactly. `EpisodeLoop` is HAQ's training loop
around it: per episode one action per layer, warm-up episodes of uniform
random actions, decaying exploration noise, the episode's reward on every
transition, one update per step after the warm-up, a checkpoint after every
batch of episodes (agent, random generator state, history in one `.npz`).

Example:
    >>> import numpy as np
    >>> from autoqnn.mixed.ddpg import DDPG
    >>> agent = DDPG(state_dim=3, hidden=(16, 16), batch_size=4, seed=0)
    >>> rng = np.random.default_rng(0)
    >>> a = agent.act(np.zeros(3, "float32"), sigma=0.5, rng=rng)
    >>> 0.0 <= a <= 1.0
    True
    >>> for _ in range(8):
    ...     agent.observe(rng.random(3), rng.random(), 1.0, rng.random(3), False)
    >>> sorted(agent.update(rng))
    ['actor_loss', 'critic_loss']
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from scipy.stats import truncnorm


class ReplayBuffer:
    """A ring buffer of transitions `(state, action, reward, next state, terminal)`.

    Args:
        capacity: transitions kept (the oldest are overwritten).
        state_dim: length of a state vector.

    Example:
        >>> import numpy as np
        >>> buffer = ReplayBuffer(capacity=2, state_dim=1)
        >>> for i in range(3):
        ...     buffer.add([i], 0.5, float(i), [i + 1], i == 2)
        >>> len(buffer), sorted(buffer.rewards[:len(buffer)].tolist())
        (2, [1.0, 2.0])
    """

    FIELDS = ("states", "actions", "rewards", "next_states", "terminals")

    def __init__(self, capacity: int, state_dim: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self.states = np.zeros((capacity, state_dim), "float32")
        self.actions = np.zeros((capacity, 1), "float32")
        self.rewards = np.zeros((capacity,), "float32")
        self.next_states = np.zeros((capacity, state_dim), "float32")
        self.terminals = np.zeros((capacity,), "float32")
        self.size = 0
        self.position = 0

    def __len__(self):
        return self.size

    def add(self, state, action, reward, next_state, terminal):
        i = self.position
        self.states[i] = state
        self.actions[i] = action
        self.rewards[i] = reward
        self.next_states[i] = next_state
        self.terminals[i] = float(terminal)
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple:
        """`batch_size` transitions drawn uniformly with replacement (as arrays)."""
        if not self.size:
            raise ValueError("the replay buffer is empty")
        index = rng.integers(0, self.size, batch_size)
        return tuple(getattr(self, name)[index] for name in self.FIELDS)

    def get_state(self) -> dict:
        return {**{name: getattr(self, name).copy() for name in self.FIELDS},
                "size": np.array(self.size), "position": np.array(self.position)}

    def set_state(self, state: dict):
        for name in self.FIELDS:
            getattr(self, name)[...] = state[name]
        self.size = int(state["size"])
        self.position = int(state["position"])


def _mlp(inputs, hidden, seed, output_activation, name):
    x = inputs
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, activation="relu", name=f"{name}_h{i}",
                               kernel_initializer=keras.initializers.GlorotUniform(seed + i))(x)
    out = keras.layers.Dense(1, activation=output_activation, name=f"{name}_out",
                             kernel_initializer=keras.initializers.RandomUniform(
                                 -3e-3, 3e-3, seed=seed + len(hidden)))(x)
    return out


class DDPG:
    """The agent (see the module docstring).

    Args:
        state_dim: length of a state vector.
        hidden: hidden layer widths of both networks.
        actor_lr, critic_lr: Adam learning rates.
        tau: soft-update rate of the target networks, in (0, 1].
        discount: the return's discount, in [0, 1].
        batch_size: transitions per update.
        replay_size: replay buffer capacity.
        baseline_decay: rate of the moving-average reward baseline, in (0, 1].
        seed: seeds the initial weights.
    """

    def __init__(self, state_dim: int, *, hidden=(300, 300), actor_lr: float = 1e-4,
                 critic_lr: float = 1e-3, tau: float = 0.01, discount: float = 1.0,
                 batch_size: int = 64, replay_size: int = 2000, baseline_decay: float = 0.5,
                 seed: int = 0):
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau!r}")
        if not 0.0 <= discount <= 1.0:
            raise ValueError(f"discount must be in [0, 1], got {discount!r}")
        self.state_dim, self.tau, self.discount = int(state_dim), float(tau), float(discount)
        self.batch_size, self.baseline_decay = int(batch_size), float(baseline_decay)
        hidden = tuple(int(h) for h in hidden)
        seed = int(seed) * 100
        self.actor = self._actor(hidden, seed, "actor")
        self.target_actor = self._actor(hidden, seed, "target_actor")
        self.critic = self._critic(hidden, seed + 50, "critic")
        self.target_critic = self._critic(hidden, seed + 50, "target_critic")
        self.target_actor.set_weights(self.actor.get_weights())
        self.target_critic.set_weights(self.critic.get_weights())
        self.actor_optimizer = keras.optimizers.Adam(actor_lr)
        self.critic_optimizer = keras.optimizers.Adam(critic_lr)
        self.actor_optimizer.build(self.actor.trainable_variables)
        self.critic_optimizer.build(self.critic.trainable_variables)
        self.buffer = ReplayBuffer(int(replay_size), self.state_dim)
        self.baseline = None
        self._train_step = tf.function(self._step, reduce_retracing=True)

    def _actor(self, hidden, seed, name):
        state = keras.Input((self.state_dim,))
        return keras.Model(state, _mlp(state, hidden, seed, "sigmoid", name), name=name)

    def _critic(self, hidden, seed, name):
        state, action = keras.Input((self.state_dim,)), keras.Input((1,))
        joined = keras.layers.Concatenate()([state, action])
        return keras.Model([state, action], _mlp(joined, hidden, seed, None, name), name=name)

    def act(self, state, sigma: float = 0.0, rng: np.random.Generator | None = None) -> float:
        """The action in [0, 1] for `state`: `mu(s)`, plus truncated-normal noise of `sigma`."""
        mean = float(self.actor(np.asarray(state, "float32")[None], training=False)[0, 0])
        if sigma <= 0:
            return float(np.clip(mean, 0.0, 1.0))
        low, high = (0.0 - mean) / sigma, (1.0 - mean) / sigma
        return float(np.clip(truncnorm.rvs(low, high, loc=mean, scale=sigma, random_state=rng),
                             0.0, 1.0))

    def observe(self, state, action, reward, next_state, terminal):
        """Stores one transition."""
        self.buffer.add(state, action, reward, next_state, terminal)

    def _step(self, states, actions, rewards, next_states, terminals):
        next_q = self.target_critic([next_states, self.target_actor(next_states)])[:, 0]
        target = rewards + self.discount * (1.0 - terminals) * next_q
        with tf.GradientTape() as tape:
            q = self.critic([states, actions], training=True)[:, 0]
            critic_loss = tf.reduce_mean(tf.square(target - q))
        grads = tape.gradient(critic_loss, self.critic.trainable_variables)
        self.critic_optimizer.apply_gradients(zip(grads, self.critic.trainable_variables))
        with tf.GradientTape() as tape:
            actor_loss = -tf.reduce_mean(self.critic([states, self.actor(states, training=True)]))
        grads = tape.gradient(actor_loss, self.actor.trainable_variables)
        self.actor_optimizer.apply_gradients(zip(grads, self.actor.trainable_variables))
        for target_net, net in ((self.target_actor, self.actor),
                                (self.target_critic, self.critic)):
            for t, s in zip(target_net.weights, net.weights):
                t.assign(self.tau * s + (1.0 - self.tau) * t)
        return critic_loss, actor_loss

    def update(self, rng: np.random.Generator) -> dict:
        """One gradient step of critic and actor on a sampled batch, then the soft update."""
        states, actions, rewards, next_states, terminals = self.buffer.sample(self.batch_size, rng)
        mean = float(np.mean(rewards))
        self.baseline = mean if self.baseline is None else \
            self.baseline + self.baseline_decay * (mean - self.baseline)
        critic_loss, actor_loss = self._train_step(states, actions, rewards - self.baseline,
                                                   next_states, terminals)
        return {"critic_loss": float(critic_loss), "actor_loss": float(actor_loss)}

    def soft_update(self, tau: float | None = None):
        """`target <- tau * online + (1 - tau) * target` for both networks (numpy)."""
        tau = self.tau if tau is None else float(tau)
        for target_net, net in ((self.target_actor, self.actor),
                                (self.target_critic, self.critic)):
            target_net.set_weights([tau * s + (1.0 - tau) * t for t, s in
                                    zip(target_net.get_weights(), net.get_weights())])

    def _variables(self):
        return {"actor": self.actor.weights, "target_actor": self.target_actor.weights,
                "critic": self.critic.weights, "target_critic": self.target_critic.weights,
                "actor_optimizer": self.actor_optimizer.variables,
                "critic_optimizer": self.critic_optimizer.variables}

    def get_state(self) -> dict:
        """Everything the agent has learnt, as `{name: numpy array}`."""
        state = {f"{group}/{i}": keras.ops.convert_to_numpy(v)
                 for group, variables in self._variables().items()
                 for i, v in enumerate(variables)}
        state.update({f"buffer/{k}": v for k, v in self.buffer.get_state().items()})
        state["baseline"] = np.array(np.nan if self.baseline is None else self.baseline)
        return state

    def set_state(self, state: dict):
        """Restores `get_state()`'s arrays (same architecture)."""
        for group, variables in self._variables().items():
            for i, v in enumerate(variables):
                v.assign(state[f"{group}/{i}"])
        self.buffer.set_state({k[len("buffer/"):]: v for k, v in state.items()
                               if k.startswith("buffer/")})
        baseline = float(state["baseline"])
        self.baseline = None if np.isnan(baseline) else baseline


def _save(path: Path, state: dict, agent_state: dict):
    """One file, replaced atomically: the JSON state beside the agent's arrays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, state_json=np.array(json.dumps(state)), **agent_state)
    os.replace(tmp, path)


def _load(path: Path):
    if not path.is_file():
        return None, None
    with np.load(path, allow_pickle=False) as data:
        state = json.loads(str(data["state_json"]))
        agent_state = {k: data[k] for k in data.files if k != "state_json"}
    return state, agent_state


class EpisodeLoop:
    """HAQ's episode loop: one action per step (layer), one reward per episode.

    Args:
        static: `(L, F)` normalised per-step features; the state of step t is
            `static[t]` plus the previous action (0 at t = 0).
        policy_of: `fn(actions) -> policy` (a JSON-able dict), the environment.
        score: `fn(policy, evaluation value) -> {"reward": r, ...}` (recorded).
        evaluate: `fn(policy) -> value`, mapped through `executor`.
        config: the agent settings (`autoqnn.mixed.rl.RLConfig`'s fields).
        episodes: episodes to reach (those in `checkpoint` count).
        seed: seeds the agent's weights and the random generator.
        executor: an `Executor`; episodes run in batches of its `max_workers`
            (the agent acts with the same weights within a batch).
        checkpoint: a `.npz` path written after every batch and resumed from.
        verbose: 1 shows a progress bar.
        start: fields of the history's first record.
    """

    def __init__(self, static, policy_of, score, evaluate, *, config, episodes: int, seed: int,
                 executor, checkpoint=None, verbose: int = 0, start=None):
        self.static = np.asarray(static, "float32")
        self.policy_of, self.score, self.evaluate = policy_of, score, evaluate
        self.config, self.episodes, self.executor = config, episodes, executor
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.verbose = verbose
        steps = len(self.static)
        self.agent = DDPG(self.static.shape[1] + 1, hidden=config.hidden,
                          actor_lr=config.actor_lr, critic_lr=config.critic_lr, tau=config.tau,
                          discount=config.discount, batch_size=config.batch_size,
                          replay_size=config.replay_episodes * steps,
                          baseline_decay=config.baseline_decay, seed=seed)
        self.rng = np.random.default_rng(seed)
        self.warmup = config.warmup_episodes
        self.history = [{"step": "start", **(start or {}), "warmup_episodes": self.warmup}]
        self.done = 0
        if self.checkpoint is not None:
            state, agent_state = _load(self.checkpoint)
            if state is not None:
                self.history, self.done = state["history"], state["episodes_done"]
                self.rng.bit_generator.state = state["rng"]
                self.agent.set_state(agent_state)

    def _rollout(self, episode):
        warm = episode < self.warmup
        sigma = 0.0 if warm else self.config.sigma * self.config.sigma_decay ** (
            episode - self.warmup)
        actions, previous = [], 0.0
        for t in range(len(self.static)):
            state = np.append(self.static[t], np.float32(previous))
            previous = self.rng.uniform() if warm else self.agent.act(state, sigma, self.rng)
            actions.append(float(previous))
        return np.array(actions, "float32"), sigma

    def _learn(self, episode, actions, reward):
        previous = np.concatenate([[0.0], actions[:-1]]).astype("float32")[:, None]
        states = np.concatenate([self.static, previous], axis=1)
        last = len(actions) - 1
        for t in range(len(actions)):  # every transition carries the episode's reward (HAQ)
            following = states[t + 1] if t < last else states[t]
            self.agent.observe(states[t], actions[t], reward, following, t == last)
        if episode >= self.warmup:
            for _ in range(len(actions)):
                self.agent.update(self.rng)

    def run(self) -> list:
        """Runs the episodes not done yet; returns the history."""
        bar = keras.utils.Progbar(self.episodes, unit_name="episode", stateful_metrics=[
            "reward", "best_reward"]) if self.verbose else None
        if bar is not None and self.done:
            bar.update(min(self.done, self.episodes))
        while self.done < self.episodes:
            batch = list(range(self.done, min(self.done + max(1, self.executor.max_workers),
                                              self.episodes)))
            start = time.perf_counter()
            rollouts = [self._rollout(e) for e in batch]
            policies = [self.policy_of(actions) for actions, _ in rollouts]
            outcomes = self.executor.map(self.evaluate, policies)
            for episode, (actions, sigma), policy, outcome in zip(batch, rollouts, policies,
                                                                  outcomes):
                if outcome.error is not None:
                    raise RuntimeError(f"episode {episode} failed: {outcome.error}")
                record = self.score(policy, outcome.value)
                self.history.append({"step": "episode", "episode": episode, **record,
                                     "warmup": episode < self.warmup, "sigma": sigma,
                                     "policy": policy, "seconds": round(outcome.seconds, 4)})
                self._learn(episode, actions, record["reward"])
            self.done += len(batch)
            self.history[-1]["batch_seconds"] = round(time.perf_counter() - start, 3)
            if self.checkpoint is not None:
                _save(self.checkpoint, {"history": self.history, "episodes_done": self.done,
                                        "rng": self.rng.bit_generator.state},
                      self.agent.get_state())
            if bar is not None:
                best = max(h["reward"] for h in self.history if h["step"] == "episode")
                bar.update(self.done, [("reward", self.history[-1]["reward"]),
                                       ("best_reward", best)])
        return self.history

    def best(self) -> dict:
        """The best-reward episode among the first `episodes` (the earliest on ties)."""
        episodes = [h for h in self.history if h["step"] == "episode"][:self.episodes]
        return max(episodes, key=lambda h: (h["reward"], -h["episode"]))
