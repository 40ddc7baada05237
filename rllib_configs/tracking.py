"""Optional experiment tracking with MLflow (``--mlflow [URI]`` on ``gridrl train`` and ``gridrl tune``).

Tune's own ``MLflowLoggerCallback`` (ray.air.integrations.mlflow) does the work: one MLflow run per trial,
named after it, in an MLflow experiment named after the run (or the sweep); every numeric result Tune
reports, at each training iteration, and the trial's parameters. Without a URI the store is a local file
store, ``<storage-path>/mlruns`` (``mlflow ui --backend-store-uri <storage-path>/mlruns`` shows it).

mlflow is an extra (``pip install gridrl[mlflow]``: mlflow-skinny). MLflow 3 keeps the file store in
maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``: for a ``file:`` URI that is set
here. A ``sqlite:`` store needs SQLAlchemy, which mlflow-skinny does not install (the full ``mlflow``
package does); a tracking server (``http://...``) works with either.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rllib_configs import storage

INSTALL = "pip install gridrl[mlflow]"
STORE_DIR = "mlruns"
PARAM_MAX_CHARS = 500
"""Longer parameter values (whole env configs, normalisation tables, class reprs) are left out: MLflow
refuses values over 6,000 characters, and a table in a parameter helps nobody compare runs."""


class TrackingError(ValueError):
    """--mlflow cannot work as asked (mlflow missing, no place for the default store)."""


def resolve(flag: str | None, storage_path: str | Path) -> str | None:
    """The tracking URI of ``--mlflow [URI]`` (None without the flag): the URI given, or a file store under
    ``storage_path``. Checked before anything starts: TrackingError if mlflow is missing or the URI cannot
    work with what is installed."""
    if flag is None:
        return None
    try:
        import mlflow  # noqa: F401
    except ImportError as exc:
        raise TrackingError(f"--mlflow needs mlflow, which is not installed: {INSTALL}") from exc
    if not flag:
        if storage.is_uri(str(storage_path)):
            raise TrackingError(
                "--mlflow without a URI keeps a local file store under --storage-path, which is "
                f"{storage_path}: give --mlflow a tracking URI (a tracking server's http://..., or file:///a/local/folder)"
            )
        flag = (Path(storage_path).resolve() / STORE_DIR).as_uri()
    if flag.startswith("sqlite:"):
        try:
            import sqlalchemy  # noqa: F401
        except ImportError as exc:
            raise TrackingError(
                f"--mlflow {flag}: a sqlite store needs SQLAlchemy, which mlflow-skinny (gridrl[mlflow]) "
                "does not install: pip install mlflow, or use a file: URI or a tracking server"
            ) from exc
    return flag


def mlflow_callbacks(uri: str | None, experiment: str, tags: dict[str, str] | None = None) -> list[Any]:
    """``[]`` without a URI; else Tune's ``MLflowLoggerCallback`` logging to ``uri`` in the MLflow
    experiment ``experiment``, the trial's short parameters only (PARAM_MAX_CHARS)."""
    if uri is None:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: the file store needs the opt-in

    class Callback(MLflowLoggerCallback):
        def log_trial_start(self, trial: Any) -> None:  # as Ray's, with short_params(trial.config)
            if trial not in self._trial_runs:
                tags = {**self.tags, "trial_name": str(trial)}
                run = self.mlflow_util.start_run(tags=tags, run_name=str(trial))
                self._trial_runs[trial] = run.info.run_id
            params = short_params(trial.config)
            self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=params)

    return [Callback(tracking_uri=uri, experiment_name=experiment, tags=dict(tags or {}))]


def short_params(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened config's scalar values, each at most PARAM_MAX_CHARS characters as text."""
    from ray.tune.utils import flatten_dict  # as MLflowLoggerCallback flattens

    out = {}
    for k, v in flatten_dict(dict(config or {})).items():
        if v is None or isinstance(v, (bool, int, float, str)) and len(str(v)) <= PARAM_MAX_CHARS:
            out[k] = v
    return out
