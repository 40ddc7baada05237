"""Settings of the policy server (serve/app.py): a typed dataclass per concern, read from YAML or Serve args.

``serve.app:build_app`` takes the arguments of a Serve config's ``args`` (``cluster/serve_config.yaml``:
``bundle``, ``mode``, ``rollout_pct``) plus, optionally, every other key of :class:`ServeConfig`, or
``config: FILE.yaml`` holding them. Unknown keys and wrong types are errors naming the key.

Two values never appear in a config file in clear:

* the admin token: ``$GRIDRL_SERVE_TOKEN``, or the file named by ``$GRIDRL_SERVE_TOKEN_FILE`` (a mounted
  secret), read by each replica; or its sha256 in ``admin_token_sha256``. Without any, the admin
  endpoints answer 403 "admin disabled";
* the log folder defaults to ``$GRIDRL_SERVE_LOG_DIR``, else ``$GRIDRL_STORAGE/serve`` (``~/gridrl/serve``).
  Every replica must reach it (shared storage on a multi-node cluster): the control state and the logs
  live there.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from envs.config import ConfigError, from_mapping, load_yaml, to_mapping

MODES = ("shadow", "ab", "rollout", "production")
Mode = Literal["shadow", "ab", "rollout", "production"]
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
"""Site ids (the keys of ``sites``, the API's ``site_id``) and request ids: serve/api.py validates with it."""
TOKEN_ENV = "GRIDRL_SERVE_TOKEN"
TOKEN_FILE_ENV = "GRIDRL_SERVE_TOKEN_FILE"
LOG_DIR_ENV = "GRIDRL_SERVE_LOG_DIR"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class ABSchedule:
    """Mode ``ab``: which controller acts in each hour of the week (local time of the site)."""

    utc_offset_h: float = 0.0
    """Offset of the sites' local time from UTC (h), e.g. 1.0 for CET. Fixed: no daylight saving."""
    policy_hours: dict[str, list[int]] | None = None
    """Weekday (mon..sun) -> local hours (0-23) in which the policy acts; the PI acts in the others.
    None = alternate hours, shifted by one each day, so every hour of the day gets both arms within
    two days: the policy acts when (weekday + hour) is even."""

    def __post_init__(self) -> None:
        if not -14.0 <= self.utc_offset_h <= 14.0:
            raise ValueError(f"utc_offset_h: must be within [-14, 14], got {self.utc_offset_h}")
        for day, hours in (self.policy_hours or {}).items():
            if day not in WEEKDAYS:
                raise ValueError(f"policy_hours: unknown weekday {day!r} (use {', '.join(WEEKDAYS)})")
            bad = [h for h in hours if not 0 <= h <= 23]
            if bad:
                raise ValueError(f"policy_hours: {day}: hours must be 0-23, got {bad}")

    def policy_acts(self, weekday: int, hour: int) -> bool:
        """Weekday 0 = Monday, local hour 0-23."""
        if self.policy_hours is None:
            return (weekday + hour) % 2 == 0
        return hour in self.policy_hours.get(WEEKDAYS[weekday], [])


@dataclass(frozen=True)
class RollbackConfig:
    """Automatic rollback to the PI: triggers over a rolling window of decisions (serve/rollback.py)."""

    enabled: bool = True
    """Watch the triggers at all."""
    window_s: float = 900.0
    """Length of the rolling window (s of the server's clock)."""
    max_violations: int = 1
    """Safety violations of the policy (policy_error, policy_deadline, policy_output) while it acts that
    trigger a rollback. The wrapper's own 1 h fallback is per site and per replica; this one is global."""
    max_anomalies: int = 1
    """Anomalies (the wrapper's detector) on requests the policy answers that trigger a rollback."""
    max_changes_per_min: float = 10.0
    """Oscillation: target changes per minute per site, while the policy acts (the design's < 10)."""
    change_threshold_w: float = 60.0
    """A target 'changes' when a phase moves by more than this (W); the default site's deadband."""
    min_policy_decisions: int = 300
    """Decisions the policy must have answered in the window before the export and oscillation triggers
    are evaluated (5 minutes of one site at 1 Hz)."""
    export_worse_pct: float = 5.0
    """Export trigger: the policy's export share of PV exceeds the PI's by more than this (%)."""
    baseline_window_s: float = 86400.0
    """The PI's export share is measured over the PI's decisions of this long (shadow time, A/B slots, the
    sites outside the rollout), so that a baseline survives a switch to production."""
    min_baseline_decisions: int = 300
    """PI decisions needed before the export trigger is evaluated."""
    baseline_export_share: float | None = None
    """Fixed baseline instead: exported energy / PV energy of the PI (0-1), e.g. from gridrl evaluate."""

    def __post_init__(self) -> None:
        for name in ("window_s", "baseline_window_s", "max_changes_per_min", "export_worse_pct"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("max_violations", "max_anomalies", "min_policy_decisions", "min_baseline_decisions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.baseline_export_share is not None and not 0 <= self.baseline_export_share <= 1:
            raise ValueError(
                f"baseline_export_share: must be within [0, 1], got {self.baseline_export_share}"
            )


@dataclass(frozen=True)
class LogConfig:
    """The decision log (serve/decision_log.py): write-ahead JSON lines, compacted to Parquet in batches."""

    flush_interval_s: float = 30.0
    """Seal the write-ahead segment and write it to Parquet at least this often (s)."""
    batch_rows: int = 20_000
    """... or when it holds this many decisions."""
    fsync_interval_s: float = 0.5
    """fsync the write-ahead file this often (s); 0 = before every response. Every acknowledged decision
    has been written to the file before its response: a killed replica loses nothing; this bounds what
    a power cut can take."""

    compact_in_process: bool = False
    """Compact in the replica's own process (a thread) instead of a child process. The child keeps the
    Parquet writes (one file per site, stream and segment) off the request loop's interpreter lock."""

    def __post_init__(self) -> None:
        if not self.flush_interval_s > 0 or self.batch_rows < 1 or self.fsync_interval_s < 0:
            raise ValueError("flush_interval_s > 0, batch_rows >= 1 and fsync_interval_s >= 0 required")


@dataclass(frozen=True)
class SiteConfig:
    """One site's settings in a fleet (ServeConfig ``sites``); an absent field takes the default."""

    bundle: str | None = None
    """The site's own bundle folder (any domain serve/domains.py knows)."""
    mode: Mode | None = None
    """The site's mode."""
    rollout_pct: float | None = None
    """Mode rollout: the percentage this site's bucket is compared with (serve/modes.py)."""

    def __post_init__(self) -> None:
        if self.rollout_pct is not None and not 0.0 <= self.rollout_pct <= 100.0:
            raise ValueError(f"rollout_pct: must be within [0, 100], got {self.rollout_pct}")


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``build_app`` needs. Only ``bundle`` is required."""

    bundle: str
    """Bundle folder (gridrl export). Readable from every replica."""
    mode: Mode = "shadow"
    """shadow (PI acts, policy logged), ab (weekday-hour schedule), rollout (a share of sites),
    production (the policy, with fallback)."""
    rollout_pct: float = 0.0
    """Mode rollout: the share of sites (or requests without a site id) the policy answers, 0-100."""
    rollout_salt: str = "gridrl"
    """Salt of the rollout's hash: which sites are in the first 25 % (a rollout only ever adds sites)."""
    log_dir: str | None = None
    """Control state and logs; None = $GRIDRL_SERVE_LOG_DIR, else $GRIDRL_STORAGE/serve."""
    admin_token_sha256: str | None = None
    """sha256 (hex) of the admin bearer token; None = from $GRIDRL_SERVE_TOKEN(_FILE) in each replica."""
    num_replicas: int = 1
    """Replicas of the ingress. The control state (mode, rollback) is shared; the safety wrapper's
    per-site timers are per replica (see serve/session.py)."""
    replica_cpus: float = 0.5
    """CPUs reserved per replica."""
    max_ongoing_requests: int = 64
    """Concurrent requests per replica before Serve queues them."""
    max_body_bytes: int = 16_384
    """Larger request bodies are refused with 413 (a state is < 2 KB)."""
    max_sites: int = 10_000
    """Per-site sessions kept per replica (least recently used dropped first)."""
    max_bundles: int = 16
    """Bundles loaded per replica (least recently used dropped first, with their sites' sessions; the
    deployed bundle stays). Size it to the distinct bundles a replica's sites use: a dropped bundle is
    loaded again at its site's next request (tens of ms)."""
    metrics_max_sites: int = 2000
    """Sites labelled in /metrics per replica; further sites count under ``site="_other"``."""
    sites: dict[str, SiteConfig] | None = None
    """Per-site settings of the fleet: site id -> bundle, mode, rollout_pct. The admin API changes them
    while serving; a new deployment with other ``sites`` starts from these again."""
    control_poll_s: float = 0.2
    """How often a replica re-reads the shared control state (s)."""
    access_log: bool = False
    """Serve's per-request access log lines in the replicas (the decision log already records every
    decision; at hundreds of requests per second the lines cost more CPU than the decisions)."""
    ab: ABSchedule = field(default_factory=ABSchedule)
    rollback: RollbackConfig = field(default_factory=RollbackConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.rollout_pct <= 100.0:
            raise ValueError(f"rollout_pct: must be within [0, 100], got {self.rollout_pct}")
        for name in ("num_replicas", "max_ongoing_requests", "max_sites", "max_bundles", "metrics_max_sites"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        import re

        bad = [s for s in self.sites or {} if not re.match(ID_PATTERN, s)]
        if bad:
            raise ValueError(f"sites: site ids must match {ID_PATTERN}, got {bad[:3]}")
        if not 1024 <= self.max_body_bytes <= 1 << 20:
            raise ValueError(f"max_body_bytes: must be within [1024, 1 MiB], got {self.max_body_bytes}")
        if self.admin_token_sha256 is not None and len(self.admin_token_sha256) != 64:
            raise ValueError("admin_token_sha256: must be 64 hex digits (sha256 of the token)")

    @classmethod
    def from_args(cls, args: dict[str, Any] | None, source: str = "serve args") -> ServeConfig:
        """Serve's ``args``: the keys of this class, or ``config: FILE.yaml`` plus overrides."""
        data = dict(args or {})
        path = data.pop("config", None)
        if path is not None:
            data = {**load_yaml(path), **data}
            source = str(path)
        return from_mapping(cls, data, source=source)

    def to_dict(self) -> dict[str, Any]:
        return to_mapping(self)

    def resolved_log_dir(self) -> Path:
        if self.log_dir:
            return Path(self.log_dir).expanduser()
        if os.environ.get(LOG_DIR_ENV):
            return Path(os.environ[LOG_DIR_ENV]).expanduser()
        from rllib_configs.storage import storage_path

        return storage_path() / "serve"


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def admin_token_digest(config: ServeConfig) -> str | None:
    """The admin token's sha256 from the config or this process's environment; None = admin disabled."""
    if config.admin_token_sha256:
        return config.admin_token_sha256.lower()
    token = os.environ.get(TOKEN_ENV)
    if not token and os.environ.get(TOKEN_FILE_ENV):
        p = Path(os.environ[TOKEN_FILE_ENV])
        if not p.is_file():
            raise ConfigError(p, TOKEN_FILE_ENV, "token file not found")
        token = p.read_text().strip()
    if token and len(token) < 16:
        raise ConfigError(TOKEN_ENV, "token", "an admin token must have at least 16 characters")
    return token_sha256(token) if token else None
