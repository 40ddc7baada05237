"""Baseline controllers of the CityLearn domain: no control and rule-based control.

A controller is any callable ``obs -> action`` on :class:`envs.citylearn.env.CityLearnRLlibEnv`
(``reset()`` optional). The baselines read the simulator's state by name from the env's CityLearnEnv
(current load, PV, each plugged vehicle's SoC, target and hours to departure) rather than from the scaled
observation vector; a policy sees only the vector.

- ``no_control``: what the site does with no controller: the battery stays idle, every plugged vehicle
  charges at its socket's full power until its battery is full (plug and charge).
- ``rbc`` (ours, :class:`SelfConsumptionRBC`): per building and step,

  1. each plugged vehicle gets the energy still missing to its required SoC plus 0.02 (divided by the
     charger's efficiency), spread evenly to finish one step before departure; while PV exceeds the
     building's load, it charges as fast as its socket allows (up to that SoC only); never V2G;
  2. the battery absorbs what is left of the PV surplus, ``load + EV charging - PV < 0``, and covers the
     residual import when it is > 0, within its nominal power (CityLearn enforces SoC and depth of
     discharge).

  CityLearn's own EV controller (``citylearn_rbc`` here) does not fit the mall: it is a fixed hourly
  schedule written for homes (battery discharging 09-21 h, which at a PV mall means exporting its
  energy; EVs discharged 10-20 h, which motorbike sockets cannot do and which leaves vehicles short).
- ``citylearn_rbc``: ``citylearn.agents.rbc.BasicElectricVehicleRBC_ReferenceController``, for reference.
- ``zero``: every action 0 (battery idle, no EV charging): CityLearn's own "no control" action.
- ``rbc_no_ev``: the rule-based battery with the EV sockets left off: how a reward that does not price EV
  satisfaction gets gamed (tests/test_citylearn_reward.py checks that ours scores it below ``rbc``).
- ``random``: every action drawn uniformly in [-1, 1] each step (what an untrained policy does), from a
  generator seeded with ``seed`` at each ``reset()``: the same seed gives the same actions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from envs.citylearn.devices import DeviceTable, rbc_action, state_from_env
from envs.citylearn.env import CityLearnRLlibEnv


class Controller(Protocol):
    """Anything that maps an observation vector to an action vector."""

    def __call__(self, obs: np.ndarray) -> np.ndarray: ...


class _EnvController:
    """Base of the baselines: the env's device table (which action slot drives which device)."""

    def __init__(self, env: CityLearnRLlibEnv) -> None:
        self.env = env
        self.table = DeviceTable.from_env(env.citylearn)
        self.n_actions = self.table.n_actions

    def reset(self) -> None:
        """Nothing to reset; subclasses with state override it."""


class ZeroAction(_EnvController):
    """Every action 0."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros(self.n_actions, dtype=np.float32)


class NoControl(_EnvController):
    """Battery idle; every socket at full charging power (vehicles charge until full)."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        a = np.zeros(self.n_actions, dtype=np.float32)
        for c in self.table.chargers:
            a[c.slot] = 1.0
        return a


class SelfConsumptionRBC(_EnvController):
    """Rule-based control: EVs to their target just in time (fast on PV surplus), battery on the residual.

    The rules are :func:`envs.citylearn.devices.rbc_action` (the module docstring describes them); here they
    read the simulator's state, on any schema. A bundle runs the same function on the raw observation.
    """

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return rbc_action(self.table, state_from_env(self.env.citylearn, self.table))


class BatteryOnlyRBC(SelfConsumptionRBC):
    """The rule-based battery with no EV charging at all: the strongest way to game a reward that does not
    price EV satisfaction (it keeps the battery's savings and skips the vehicles' energy)."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        state = state_from_env(self.env.citylearn, self.table)
        state.ev[:, 0] = 0.0  # as if no vehicle were plugged: the battery does not serve them either
        return rbc_action(self.table, state)


class RandomAction(_EnvController):
    """Every action uniform in [-1, 1], redrawn each step; the same ``seed`` replays the same actions."""

    def __init__(self, env: CityLearnRLlibEnv, seed: int = 0) -> None:
        super().__init__(env)
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Restart the action sequence from the seed."""
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.n_actions).astype(np.float32)


class CityLearnReferenceRBC(_EnvController):
    """CityLearn's ``BasicElectricVehicleRBC_ReferenceController`` on the raw CityLearn observations."""

    def __init__(self, env: CityLearnRLlibEnv) -> None:
        super().__init__(env)
        from citylearn.agents.rbc import BasicElectricVehicleRBC_ReferenceController

        self.agent = BasicElectricVehicleRBC_ReferenceController(env.citylearn)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(self.agent.predict(self.env.citylearn.observations)[0], dtype=np.float32)


BASELINES: dict[str, Callable[[CityLearnRLlibEnv], Controller]] = {
    "no_control": NoControl,
    "rbc": SelfConsumptionRBC,
    "citylearn_rbc": CityLearnReferenceRBC,
    "zero": ZeroAction,
    "rbc_no_ev": BatteryOnlyRBC,
    "random": RandomAction,
}


def make_baseline(name: str, env: CityLearnRLlibEnv, seed: int | None = None) -> Controller:
    """The baseline controller ``name`` (a key of :data:`BASELINES`) bound to ``env``.

    Args:
        name: A key of :data:`BASELINES`.
        env: The env it acts on.
        seed: Seed of ``random`` (None: 0); the other baselines are deterministic.

    Raises:
        ValueError: Unknown name; the message lists the known ones.
    """
    if name not in BASELINES:
        raise ValueError(f"controllers: unknown controller {name!r} (known: {', '.join(BASELINES)}, policy)")
    if name == "random":
        return RandomAction(env, seed=0 if seed is None else seed)
    return BASELINES[name](env)
