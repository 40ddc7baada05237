"""Offline data of the export domain: raw logs in, RLlib-ready Parquet out.

* ``schemas``: the three raw-log streams (columns, types, units); ``rawio``: finding and reading them.
* ``generate`` and ``defects``: simulated logs of the PI, with the defects real logs have, and a sidecar.
* The build (``build``), stage by stage: ``validate`` -> ``align`` -> ``transitions`` (state vector via
  envs/state_spec.py, actions, rewards, k-step lookahead) -> ``split`` (by time, normalisation on train).
* ``audit``: checks a build against the generator's sidecar; ``progress``: the per-stage progress bars.

Command line: ``gridrl data generate`` and ``gridrl data build`` (scripts/data.py).
"""
