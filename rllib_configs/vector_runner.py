"""An RLlib env runner that samples a vector env as arrays: the simulator's speed reaches the learner.

RLlib 2.60's :class:`SingleAgentEnvRunner` steps a vector env in one call but then spends Python on
every member at every step: an episode object's ``add_env_step``, the env-to-module connectors that
gather each episode's last observation, the module-to-env connectors that split the batch back into
items, and an info dict per member. With 256 members that per-member work, not the env or the network,
sets the speed (measured: tests/benchmarks/bench_sampling.py).

:class:`VectorEnvRunner` keeps RLlib's semantics and does the same work per *step* instead:

* observations go to the RLModule as one tensor; actions are drawn from its action distribution
  (``get_exploration_action_dist_cls().from_logits``, deterministic when not exploring) with their
  log-probabilities, then unsquashed or clipped for the env as ``NormalizeAndClipActions`` does;
* the env's arrays are written into per-step buffers; members autoreset gymnasium's way (NEXT_STEP: the
  step after an episode's end returns the next episode's first observation, and its action is ignored);
* at the end of ``sample()`` the buffers are cut into :class:`SingleAgentEpisode` chunks, one per member
  and episode, with the same ids and ``t_started`` as RLlib's own chunks, so the learner connectors
  (GAE, bootstrapping of cut chunks) see exactly what they would have seen.

It takes over only where that equivalence holds: ``num_timesteps`` sampling with RLlib's default
connectors (none configured), a stateless module, and no episode callbacks. It also reports
:data:`REWARD_PER_STEP`, a metric every iteration has. Anything else (evaluation by
episodes, custom connectors, callbacks) falls back to RLlib's loop, unchanged. Configure it with::

    env_runners: {env_runner_cls: rllib_configs.vector_runner.VectorEnvRunner,
                  num_envs_per_env_runner: 64, gym_env_vectorize_mode: vector_entry_point}

tests/test_vector_runner.py checks that it returns the transitions RLlib's loop returns for the same
seed and weights, and that a run with it trains, checkpoints, resumes and evaluates.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.wrappers.vector import DictInfoToList
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import ENV_STEP_TIMER, RLMODULE_INFERENCE_TIMER, WEIGHTS_SEQ_NO
from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

REWARD_PER_STEP = "reward_per_step_mean"
"""Mean reward per env step of the last sample() calls (``env_runners/reward_per_step_mean`` in results):
there in every iteration, unlike ``episode_return_mean``, which waits for an episode to end (hours of
simulated time with long windows). Tune sweeps rank trials by it."""
REWARD_WINDOW = 20  # sample() calls
_NO_INFO: dict[str, Any] = {}
_EPISODE_HOOKS = ("on_episode_created", "on_episode_start", "on_episode_step", "on_episode_end")


class VectorEnvRunner(SingleAgentEnvRunner):
    """SingleAgentEnvRunner that samples ``num_timesteps`` as arrays (see the module docstring)."""

    def __init__(self, *, config: Any, **kwargs: Any) -> None:
        super().__init__(config=config, **kwargs)
        self._fast: dict[str, Any] | None = None  # per-member state between sample() calls

    # --- when the array path applies

    def _array_path_ok(self) -> bool:
        cfg = self.config
        if self.module is None or self.env is None or self.module.is_stateful():
            return False
        if cfg._env_to_module_connector is not None or cfg._module_to_env_connector is not None:
            return False
        if not (cfg.add_default_connectors_to_env_to_module_pipeline
                and cfg.add_default_connectors_to_module_to_env_pipeline):  # fmt: skip
            return False
        if any(getattr(cfg, f"callbacks_{hook}", None) for hook in _EPISODE_HOOKS):
            return False
        for cb in self._callbacks:  # a user callback class that overrides an episode hook
            if any(getattr(type(cb), hook) is not getattr(RLlibCallback, hook) for hook in _EPISODE_HOOKS):
                return False
        space = self.env.single_action_space
        return isinstance(space, gym.spaces.Box) and isinstance(
            self.env.single_observation_space, gym.spaces.Box
        )

    def _sample(
        self,
        *,
        num_timesteps: int | None = None,
        num_episodes: int | None = None,
        explore: bool,
        random_actions: bool = False,
        force_reset: bool = False,
    ) -> list[SingleAgentEpisode]:
        if num_timesteps is None or random_actions or not self._array_path_ok():
            if self._fast is not None:  # the env was stepped by the array path: RLlib's episodes start afresh
                self._fast, force_reset = None, True
            return super()._sample(
                num_timesteps=num_timesteps, num_episodes=num_episodes, explore=explore,
                random_actions=random_actions, force_reset=force_reset,
            )  # fmt: skip
        return self._sample_arrays(num_timesteps, explore, force_reset)

    # --- the array path

    def _raw_env(self) -> Any:
        """The vector env without RLlib's DictInfoToList (it builds a dict per member per step)."""
        return self.env.env if isinstance(self.env, DictInfoToList) else self.env

    def _reset_arrays(self) -> None:
        obs, _ = self._try_env_reset(seed=self._seed if self._needs_initial_reset else None, options=None)
        self._needs_initial_reset = False
        n = self.num_envs
        now = time.perf_counter()
        self._fast = {
            "obs": np.asarray(obs),
            "resetting": np.zeros(n, bool),  # the next step returns a first observation (NEXT_STEP)
            "ids": [uuid.uuid4().hex for _ in range(n)],
            "t": np.zeros(n, np.int64),  # steps of each member's current episode so far
            "ret": np.zeros(n),  # its return so far (metrics)
            "start": np.full(n, now),  # its wall-clock start (metrics)
        }

    def _act(self, obs: np.ndarray, explore: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Actions for the module (as sampled) and the extra outputs an episode keeps (logp, dist inputs)."""
        batch = {Columns.OBS: torch.from_numpy(np.ascontiguousarray(obs, np.float32)).to(self._device)}
        with torch.no_grad(), self.metrics.log_time(RLMODULE_INFERENCE_TIMER):
            if explore:
                out = self.module.forward_exploration(batch, t=self.num_env_steps_sampled_lifetime)
                dist_cls = self.module.get_exploration_action_dist_cls()
            else:
                out = self.module.forward_inference(batch)
                dist_cls = self.module.get_inference_action_dist_cls()
            if Columns.ACTIONS in out:
                actions = out.pop(Columns.ACTIONS)
            else:
                dist = dist_cls.from_logits(out[Columns.ACTION_DIST_INPUTS])
                if not explore:
                    dist = dist.to_deterministic()
                actions = dist.sample()
                if Columns.ACTION_LOGP not in out:
                    out[Columns.ACTION_LOGP] = dist.logp(actions)
        extra = {k: v.detach().cpu().numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}
        return actions.detach().cpu().numpy(), extra

    def _for_env(self, actions: np.ndarray) -> np.ndarray:
        space = self.env.single_action_space
        if self.config.normalize_actions:
            return unsquash_action(actions, space)
        if self.config.clip_actions:
            return clip_action(actions, space)
        return actions

    def _sample_arrays(
        self, num_timesteps: int, explore: bool, force_reset: bool
    ) -> list[SingleAgentEpisode]:
        if force_reset or self._fast is None or self._needs_initial_reset:
            self._reset_arrays()
        st = self._fast
        env = self._raw_env()
        obs_buf, act_buf, rew, term, trunc, valid, extra_buf = [], [], [], [], [], [], {}
        ts = 0
        while ts < num_timesteps:
            obs = st["obs"]
            actions, extra = self._act(obs, explore)
            with self.metrics.log_time(ENV_STEP_TIMER):
                next_obs, r, te, tr, _ = env.step(self._for_env(actions))
            stepped = ~st["resetting"]
            obs_buf.append(obs)
            act_buf.append(actions)
            for k, v in extra.items():
                extra_buf.setdefault(k, []).append(v)
            rew.append(np.asarray(r, np.float64))
            term.append(np.asarray(te, bool))
            trunc.append(np.asarray(tr, bool))
            valid.append(stepped)
            ts += int(stepped.sum())
            st["resetting"] = stepped & (term[-1] | trunc[-1])
            st["obs"] = np.asarray(next_obs)
        # (T, N, ...) arrays; next observations are the following step's observations, the last one st["obs"]
        OBS = np.stack(obs_buf + [st["obs"]])
        A, R = np.stack(act_buf), np.stack(rew)
        TE, TR, V = np.stack(term), np.stack(trunc), np.stack(valid)
        X = {k: np.stack(v) for k, v in extra_buf.items()}
        done_eps, ongoing_eps = self._cut_episodes(OBS, A, R, TE, TR, V, X)
        if ts:
            self.metrics.log_value(REWARD_PER_STEP, float(R[V].mean()), window=REWARD_WINDOW)
        self._log_env_steps(metric=self._metrics_num_env_steps_sampled, num_steps=ts)
        self._increase_sampled_metrics(ts, len(done_eps))
        return done_eps + ongoing_eps

    def _cut_episodes(self, OBS, A, R, TE, TR, V, X) -> tuple[list, list]:  # noqa: N803 (array names)
        st = self._fast
        seq_no = self._weights_seq_no
        obs_space, act_space = self.env.single_observation_space, self.env.single_action_space
        done_eps: list[SingleAgentEpisode] = []
        ongoing: list[SingleAgentEpisode] = []
        now = time.perf_counter()
        for i in range(self.num_envs):
            steps = np.nonzero(V[:, i])[0]
            if steps.size == 0:
                continue
            ends = np.nonzero(TE[steps, i] | TR[steps, i])[0]
            bounds = np.split(steps, ends + 1)
            for j, seg in enumerate(bounds):
                if seg.size == 0:
                    continue
                finished = j < len(ends)
                last = seg[-1]
                obs = np.concatenate([OBS[seg, i], OBS[last + 1, i][None]])
                ep = SingleAgentEpisode(
                    st["ids"][i],
                    observations=obs,
                    observation_space=obs_space,
                    infos=[_NO_INFO]
                    * len(obs),  # the env's infos are not kept (RLlib's learners ignore them)
                    actions=A[seg, i],
                    action_space=act_space,
                    rewards=R[seg, i],
                    terminated=bool(finished and TE[last, i]),
                    truncated=bool(finished and not TE[last, i] and TR[last, i]),
                    extra_model_outputs={
                        **{k: v[seg, i] for k, v in X.items()},
                        WEIGHTS_SEQ_NO: np.full(seg.size, seq_no),
                    },
                    t_started=int(st["t"][i]),
                    len_lookback_buffer=0,
                )
                st["t"][i] += seg.size
                st["ret"][i] += float(R[seg, i].sum())
                if finished:
                    self._log_episode_metrics(int(st["t"][i]), float(st["ret"][i]), now - st["start"][i])
                    done_eps.append(ep)
                    st["ids"][i], st["t"][i], st["ret"][i], st["start"][i] = uuid.uuid4().hex, 0, 0.0, now
                else:
                    ongoing.append(ep)
        return done_eps, ongoing
