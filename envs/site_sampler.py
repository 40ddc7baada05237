"""Sites drawn at random around a base site: held-out sites for ``gridrl benchmark`` (and for training on
more than one site).

A drawn site keeps the base site's devices (a water heater, an EV charger, a heat pump: the kinds the
dispatcher and the PI know) and its action bound (``control.max_power_per_phase_w``: a policy's actions
are fractions of it), and changes what differs from house to house: where it is (latitude, and longitude
within its time zone), its PV (size, and a single-phase inverter on a random phase or none), its base load
per phase, which phase each device is on, their sizes (heater power and tank, EV energy and times,
heat-pump power, tank, draw), and the Zigbee link (delay, loss). The ranges are those of detached houses in
Europe with 3-15 kWp of PV; ``random_site`` draws from them uniformly, so every site is a plausible one, not an extreme one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from envs.site import DEFAULT_SITE_PATH, Site, load_site


def _u(rng: np.random.Generator, lo: float, hi: float, digits: int = 1) -> float:
    return round(float(rng.uniform(lo, hi)), digits)


def random_site(
    rng: np.random.Generator, name: str, base: str | Path | None = None, permute_phases: bool = True
) -> dict[str, Any]:
    """A site mapping (the YAML's form) drawn around ``base`` (default: the shipped default site).
    ``permute_phases=False`` keeps each device on its phase in ``base`` (the other draws are the same)."""
    data = yaml.safe_load(Path(base or DEFAULT_SITE_PATH).read_text())
    site = copy.deepcopy(data)
    site["name"] = name
    site["latitude_deg"] = _u(rng, 38.0, 56.0)
    three = _u(rng, 3.0, 12.0)
    pv = [{"kwp": three, "phases": [1, 2, 3]}]
    if rng.random() < 0.6:  # a second, single-phase inverter on some houses
        pv.append({"kwp": _u(rng, 1.0, 3.5), "phases": [int(rng.integers(1, 4))]})
    site["pv"] = pv
    site["base_load"] = {
        "mean_w": [_u(rng, 80.0, 320.0, 0) for _ in range(3)],
        "events_per_day": _u(rng, 12.0, 40.0),
    }
    phases = rng.permutation([1, 2, 3])
    for slave, phase in zip(site["slaves"], phases):
        if permute_phases:
            slave["phase"] = int(phase)
        kind = slave["kind"]
        if kind == "water_heater":
            slave.update(max_power_w=_u(rng, 2000.0, 4000.0, 0), tank_kwh=_u(rng, 5.0, 12.0),
                         initial_fill=_u(rng, 0.2, 0.6, 2), draw_kwh_per_day=_u(rng, 4.0, 10.0))  # fmt: skip
        elif kind == "ev_charger":
            lo = _u(rng, 4.0, 12.0)
            slave.update(energy_kwh=[lo, round(lo + _u(rng, 4.0, 14.0), 1)],
                         arrive_h=[_u(rng, 7.0, 9.0), _u(rng, 9.5, 12.0)],
                         depart_h=[_u(rng, 15.0, 17.0), _u(rng, 17.5, 20.0)])  # fmt: skip
        elif kind == "heat_pump":
            slave.update(max_power_w=_u(rng, 1200.0, 2600.0, 0), tank_kwh=_u(rng, 3.0, 8.0),
                         initial_fill=_u(rng, 0.3, 0.6, 2), draw_kwh_per_day=_u(rng, 5.0, 14.0))  # fmt: skip
    link = site["link"]
    link.update(delay_median_s=_u(rng, 1.0, 3.5), delay_sigma=_u(rng, 0.3, 0.7, 2),
                ack_rate=_u(rng, 0.88, 0.99, 2))  # fmt: skip
    link["delay_max_s"] = max(float(link["delay_max_s"]), round(link["delay_median_s"] * 3, 1))
    # Where in its time zone the house is: solar noon moves by up to +-30 min on the local clock.
    site["longitude_deg"] = _u(rng, -7.5, 7.5) + 15.0 * float(data.get("timezone_offset_h", 0.0))
    return site


def write_sites(out: str | Path, n: int, seed: int, base: str | Path | None = None) -> list[Path]:
    """``n`` drawn sites written as ``out/site_<seed>_<i>.yaml`` (each checked by :func:`load_site`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        name = f"site_{seed}_{i}"
        path = out / f"{name}.yaml"
        path.write_text(
            f"# drawn by envs/site_sampler.py around {base or 'the default site'}, seed {seed}, #{i}\n"
            + yaml.safe_dump(random_site(rng, name, base), sort_keys=False)
        )
        load_site(path)  # a drawn site that the loader refuses is a bug here, not the user's
        paths.append(path)
    return paths


def describe(site: Site) -> str:
    """One line: PV kWp, the devices' phases, the link."""
    kwp = sum(a.kwp for a in site.pv)
    devices = ", ".join(f"{s.kind} L{s.phase}" for s in site.slaves)
    return f"{site.name}: {kwp:.1f} kWp at {site.latitude_deg:.0f} deg, {devices}, delay {site.link.delay_median_s:.1f} s"
