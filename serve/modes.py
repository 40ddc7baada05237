"""Controller modes: who answers a request, the policy or the PI.

===========  ================================================================================
mode         the policy answers ...
===========  ================================================================================
shadow       never: the PI acts; the policy is evaluated on the same state and logged
ab           in the hours of the week the A/B schedule gives it (serve/config.py ABSchedule),
             at the request's time (``time_s``, the site's meter time) in the sites' local time
rollout      for the sites whose bucket is below the percentage: ``bucket = sha256(salt:key)``
             mapped to [0, 100); ``key`` is the site id, or the request id for requests without
             one. Deterministic: a site stays in or out; raising the percentage only adds sites
production   always (behind the safety wrapper, whose PI takes over on a violation)
===========  ================================================================================

After an automatic rollback (serve/rollback.py) the PI answers in every mode until an operator sets a
mode again. In every mode both controllers are evaluated, so the log always holds both proposals.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from serve.config import ABSchedule


def rollout_bucket(key: str, salt: str) -> float:
    """A stable position of ``key`` in [0, 100)."""
    h = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 * 100.0


def ab_policy_acts(schedule: ABSchedule, time_s: float) -> bool:
    """Whether the schedule gives the hour containing UTC time ``time_s`` to the policy."""
    local = dt.datetime.fromtimestamp(time_s, dt.UTC) + dt.timedelta(hours=schedule.utc_offset_h)
    return schedule.policy_acts(local.weekday(), local.hour)


def policy_acts(
    mode: str,
    *,
    rolled_back: bool,
    rollout_pct: float,
    rollout_key: str,
    salt: str,
    schedule: ABSchedule,
    time_s: float,
) -> bool:
    """Whether the policy answers this request (module docstring)."""
    if rolled_back or mode == "shadow":
        return False
    if mode == "production":
        return True
    if mode == "rollout":
        return rollout_bucket(rollout_key, salt) < rollout_pct
    if mode == "ab":
        return ab_policy_acts(schedule, time_s)
    raise ValueError(f"unknown mode {mode!r}")
