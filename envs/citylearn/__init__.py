"""The CityLearn domain: the Iquitos mall schema builder, the RLlib env, the multi-objective reward,
baselines and KPIs.

Modules, one idea each:

- :mod:`envs.citylearn.site`: the site YAML as typed dataclasses;
- :mod:`envs.citylearn.profiles`: hourly weather, PV, load, tariff and EV sessions;
- :mod:`envs.citylearn.schema`: writes a CityLearn schema.json plus CSVs for a site;
- :mod:`envs.citylearn.reward`: the weighted multi-objective reward (CityLearn RewardFunction);
- :mod:`envs.citylearn.env`: the central-agent gymnasium env for RLlib, registered as ``gridrl-citylearn``;
- :mod:`envs.citylearn.baselines`: no-control and rule-based controllers;
- :mod:`envs.citylearn.kpis`: KPIs of an episode (CityLearn's and the seed's CO2 accounting);
- :mod:`envs.citylearn.evaluate`: runs controllers over an episode and writes kpis.json and a plot.

Importing this package is cheap: CityLearn, torch and Ray are imported by the modules that need them.
"""
