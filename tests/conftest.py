"""Shared pytest fixtures and paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GRIDRL_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found at {SHARED} (set GRIDRL_SHARED)")
    return SHARED


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray (2 CPUs) for the tests of one module, shut down after them."""
    import ray

    from cluster.local import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A small dataset built by the project itself: 2 days x 1.5 daylight hours of PI logs, 2 % defects."""
    from offline_data.build import BuildConfig, build
    from offline_data.generate import GenerateConfig, generate

    root = tmp_path_factory.mktemp("small_dataset")
    generate(GenerateConfig(days=2, hours=1.5, start_hour=10.0, seed=0, defects=0.02, scenario="broken_clouds"), root / "raw")
    build(root / "raw", root / "dataset", BuildConfig(), seed=0, progress=False)
    return root / "dataset"
