"""The cluster definitions in cluster/, checked offline with Ray's own validators (no cluster is started).

What each check covers, and what it cannot (nothing here talks to a cloud, a Kubernetes API server or
a container registry):

- Launcher configs (aws, gcp, local): Ray's ``prepare_config`` (defaults merged, setup commands merged,
  node types filled) and ``validate_config`` (the JSON schema ray-schema.json plus Ray's own checks). For
  the local provider this is the whole bootstrap ``ray up`` does before it connects to a machine. The
  AWS and GCP bootstraps (IAM, subnets, firewall, keys) need credentials and their SDKs: not run.
- KubeRay manifests: KubeRay's CRD schema is not available offline, so they are checked for structure
  (apiVersion, kind, the fields KubeRay's v1 API types define, rayVersion, resources, token env, the
  shared volume) and by Ray's own reading of a RayCluster spec: the autoscaling config that the KubeRay
  autoscaler derives from it, validated by Ray against ray-schema.json.
- runtime_env.yaml: Ray's ``RuntimeEnv`` validation, and the working_dir packaged by Ray's packaging code.
- serve_config.yaml: Serve's ``ServeDeploySchema``.
- Every ``gridrl`` command the definitions run is parsed by that command's real argument parser, and the
  training config or sweep file it names is loaded by gridrl's loaders.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
IMAGE_REPO_ROOT = "/opt/gridrl"  # where cluster/Dockerfile puts the repository
RAY_VERSION = "2.60.0"
CLOUD_CONFIGS = ["aws.yaml", "gcp.yaml"]
LAUNCHER_CONFIGS = [*CLOUD_CONFIGS, "local.yaml"]
RAYJOBS = ["rayjob-train.yaml", "rayjob-tune.yaml"]

# Field names of KubeRay's v1 API types (ray-operator/apis/ray/v1/raycluster_types.go, rayjob_types.go).
RAYCLUSTER_SPEC_FIELDS = {
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs", "authOptions",
}
HEAD_GROUP_FIELDS = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_FIELDS = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}
AUTOSCALER_OPTIONS_FIELDS = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode",
    "env", "envFrom", "volumeMounts",
}
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy", "entrypoint", "runtimeEnvYAML",
    "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
    "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dev_sh_citylearn_pin() -> str:
    """The CityLearn requirement scripts/dev.sh installs with --no-deps (the one source of that pin)."""
    m = re.search(r'--no-deps "(citylearn==[^"]+)"', (REPO / "scripts" / "dev.sh").read_text())
    assert m, "scripts/dev.sh no longer installs CityLearn with --no-deps"
    return m.group(1)


# ---------------------------------------------------------------------------------------------------
# gridrl commands run by the definitions


def parse_gridrl(argv: list[str]) -> argparse.Namespace | None:
    """Parse ``gridrl <command> ...`` with that command's own parser; skips a command not built yet."""
    from scripts.cli import COMMANDS

    assert argv[0] == "gridrl", argv
    command = argv[1]
    if command not in COMMANDS:
        pytest.skip(f"`gridrl {command}` is not registered in scripts/cli.py COMMANDS yet")
    module_name = COMMANDS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        pytest.skip(f"`gridrl {command}` is registered but {module_name} does not exist yet")
    parser = argparse.ArgumentParser(prog="gridrl")
    module.add_parser(parser.add_subparsers(dest="command"))
    try:
        return parser.parse_args(argv[1:])
    except SystemExit as exc:  # argparse reports unknown flags this way
        pytest.fail(f"`{shlex.join(argv)}` does not parse (exit {exc.code})")


def repo_path(path: str) -> Path:
    """A path as the image sees it (/opt/gridrl/...) or repository-relative -> the file in this checkout."""
    if path.startswith(IMAGE_REPO_ROOT + "/"):
        return REPO / path[len(IMAGE_REPO_ROOT) + 1:]
    return REPO / path


def check_gridrl_command(argv: list[str]) -> None:
    """The command parses, and the config it names exists and loads (training configs and sweep files)."""
    args = parse_gridrl(argv)
    config = getattr(args, "config", None)
    if config is not None:
        assert repo_path(config).is_file(), f"{shlex.join(argv)}: no file {config}"
    if argv[1] == "train":
        from rllib_configs.loader import load_train_config

        load_train_config(repo_path(args.config))
    elif argv[1] == "tune":
        from tune.spec import load_sweep

        load_sweep(repo_path(args.config))


def test_gridrl_train_help_runs():
    res = subprocess.run([sys.executable, "-m", "scripts", "train", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--storage-path" in res.stdout and "--num-env-runners" in res.stdout


# ---------------------------------------------------------------------------------------------------
# Cluster launcher configs


def prepared(name: str) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load(CLUSTER / name))
    validate_config(config)
    return config


@pytest.mark.parametrize("name", CLOUD_CONFIGS)
def test_cloud_launcher_config_passes_rays_validation(name):
    config = prepared(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and head["max_workers"] == 0
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    cpu = [v for v in workers.values() if v["resources"].get("CPU", 0) >= 4 and not v["resources"].get("GPU")]
    gpu = [v for v in workers.values() if v["resources"].get("GPU", 0) >= 1]
    assert cpu and gpu, f"{name}: wants a CPU worker type (env runners) and a GPU worker type (learners)"
    assert sum(v["min_workers"] for v in workers.values()) <= config["max_workers"]
    assert all(v["max_workers"] <= config["max_workers"] for v in workers.values())


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_installs_gridrl_like_dev_sh_and_starts_ray_with_token_auth(name):
    config = prepared(name) if name != "local.yaml" else load(CLUSTER / name)
    setup = " ; ".join(config["setup_commands"])
    assert "bash scripts/dev.sh setup" in setup and "3.11" in setup
    assert config["file_mounts"]["~/gridrl"] == "."
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), f"{name}: {key}"
    assert any("--num-cpus=0" in c for c in config["head_start_ray_commands"])
    # The launcher's own gridrl commands parse with the CLI (the CityLearn schema build).
    for cmd in config["setup_commands"]:
        for part in re.findall(r"\S*/gridrl (citylearn [^;&|]+)", cmd):
            argv = ["gridrl", *shlex.split(part)]
            parse_gridrl(argv)
            site = argv[argv.index("--site") + 1].replace("~/gridrl/", "")
            assert (REPO / site).is_file(), site


def test_local_launcher_config_passes_rays_whole_offline_bootstrap():
    """The local provider's bootstrap is offline: run all of it, as `ray up` does before connecting."""
    from ray.autoscaler._private.commands import _bootstrap_config

    raw = load(CLUSTER / "local.yaml")
    config = _bootstrap_config(copy.deepcopy(raw), no_config_cache=True)
    (node_type,) = config["available_node_types"].values()  # one type: resources detected per machine
    n = len(raw["provider"]["worker_ips"])
    assert node_type["min_workers"] == node_type["max_workers"] == config["max_workers"] == n
    assert config["auth"]["ssh_user"]


@pytest.mark.parametrize("name", CLOUD_CONFIGS)
def test_guides_container_variant_of_the_launcher_configs_validates(name):
    """cluster/README.md's `docker:` snippet, put in place of the install, still passes Ray's validation."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    blocks = re.findall(r"```yaml\n(.*?)```", (CLUSTER / "README.md").read_text(), re.S)
    (snippet,) = [yaml.safe_load(b) for b in blocks if b.startswith("docker:")]
    config = {**load(CLUSTER / name), **snippet}
    validate_config(prepare_config(config))
    head = load(KUBERAY / "raycluster.yaml")["spec"]["headGroupSpec"]
    assert config["docker"]["image"] == head["template"]["spec"]["containers"][0]["image"]


@pytest.mark.parametrize("mistake", ["unknown top-level key", "unknown node-type key", "missing resources"])
def test_rays_launcher_validation_catches_mistakes(mistake):
    """The validation above is not vacuous: a typo or a missing field in these files is an error."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(CLUSTER / "gcp.yaml")
    if mistake == "unknown top-level key":
        config["setup_comands"] = config.pop("setup_commands")
    elif mistake == "unknown node-type key":
        config["available_node_types"]["cpu_runner"]["min_worker"] = 1
    else:
        del config["available_node_types"]["gpu_learner"]["resources"]
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))


# ---------------------------------------------------------------------------------------------------
# KubeRay manifests


def ray_containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, g["template"]["spec"]["containers"][0]) for name, g in groups]


def ray_containers_cpu(group: dict[str, Any]) -> str:
    return group["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]


def assert_token_env(env: list[dict[str, Any]], where: str) -> None:
    by_name = {e["name"]: e for e in env}
    assert by_name.get("RAY_AUTH_MODE", {}).get("value") == "token", where
    ref = by_name.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
    assert ref.get("name") and ref.get("key"), f"{where}: RAY_AUTH_TOKEN must come from a Secret"


def check_raycluster_spec(spec: dict[str, Any], where: str) -> None:
    unknown = set(spec) - RAYCLUSTER_SPEC_FIELDS
    assert not unknown, f"{where}: unknown fields {unknown}"
    assert spec["rayVersion"] == RAY_VERSION
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP_FIELDS
    assert set(spec.get("autoscalerOptions", {})) <= AUTOSCALER_OPTIONS_FIELDS
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_FIELDS, f"{where}: {set(group) - WORKER_GROUP_FIELDS}"
        for key in ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert key in group, f"{where}: {group.get('groupName')} lacks {key}"
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for params in [g["rayStartParams"] for g in groups]:
        assert all(isinstance(v, str) for v in params.values()), f"{where}: rayStartParams values are strings"
    images = set()
    for name, container in ray_containers(spec):
        images.add(container["image"])
        res = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res[kind]), f"{where}/{name}: {kind} needs cpu and memory"
        assert_token_env(container["env"], f"{where}/{name}")
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/mnt/gridrl" in mounts, f"{where}/{name}: the shared volume (--storage-path) is not mounted"
    assert len(images) == 1, f"{where}: one image for every Ray container, got {images}"
    if spec.get("enableInTreeAutoscaling"):
        assert_token_env(spec["autoscalerOptions"]["env"], f"{where}/autoscaler")


def autoscaling_view(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """What Ray's KubeRay autoscaler makes of the spec (validated by Ray against ray-schema.json)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": name, "namespace": "default"},
          "spec": copy.deepcopy(spec)}
    return _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"]


def test_raycluster_manifest_structure_and_rays_reading_of_it():
    doc = load(KUBERAY / "raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster" and doc["metadata"]["name"]
    check_raycluster_spec(doc["spec"], "raycluster.yaml")
    types = autoscaling_view(doc["spec"], doc["metadata"]["name"])
    assert types["headgroup"]["resources"]["CPU"] == 0
    cpu_group = types["cpu-env-runners"]["resources"]
    assert cpu_group["CPU"] >= 4 and "GPU" not in cpu_group
    assert types["gpu-learners"]["resources"]["GPU"] == 1


@pytest.mark.parametrize("mistake", ["typo in a group field", "no token on a worker", "GPU limit dropped"])
def test_raycluster_checks_catch_mistakes(mistake):
    """The KubeRay checks above are not vacuous."""
    spec = load(KUBERAY / "raycluster.yaml")["spec"]
    gpu_group = spec["workerGroupSpecs"][1]
    container = gpu_group["template"]["spec"]["containers"][0]
    if mistake == "typo in a group field":
        gpu_group["maxReplica"] = gpu_group.pop("maxReplicas")
    elif mistake == "no token on a worker":
        container["env"] = [e for e in container["env"] if e["name"] != "RAY_AUTH_TOKEN"]
    else:
        for kind in ("requests", "limits"):
            del container["resources"][kind]["nvidia.com/gpu"]
    with pytest.raises(AssertionError):
        check_raycluster_spec(spec, "mutated")
        assert autoscaling_view(spec, "mutated")["gpu-learners"]["resources"].get("GPU") == 1


def test_shared_volume_claim_is_read_write_many_and_is_the_one_mounted():
    pvc = load(KUBERAY / "storage.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ["raycluster.yaml", *RAYJOBS]:
        doc = load(KUBERAY / name)
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        volumes = [v for g in groups for v in g["template"]["spec"]["volumes"]]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes}
        assert claims == {pvc["metadata"]["name"]}, name


@pytest.mark.parametrize("name", RAYJOBS)
def test_rayjob_manifest(name):
    from ray.runtime_env import RuntimeEnv

    doc = load(KUBERAY / name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob" and doc["metadata"]["name"]
    spec = doc["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, f"unknown fields {set(spec) - RAYJOB_SPEC_FIELDS}"
    # Same cluster as raycluster.yaml (initial replicas aside), so a fix in one is not forgotten in the other.
    def without_replicas(cluster_spec: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(cluster_spec)
        for group in out["workerGroupSpecs"]:
            group.pop("replicas", None)
        return out

    reference = load(KUBERAY / "raycluster.yaml")["spec"]
    assert without_replicas(spec["rayClusterSpec"]) == without_replicas(reference)
    check_raycluster_spec(spec["rayClusterSpec"], name)
    autoscaling_view(spec["rayClusterSpec"], doc["metadata"]["name"])
    # KubeRay pastes the entrypoint into the submitter's shell command line.
    entrypoint = spec["entrypoint"]
    assert not re.search(r"&&|\|\||[;|`$<>]", entrypoint), "shell operators in the entrypoint"
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["gridrl", name.removeprefix("rayjob-").removesuffix(".yaml")]
    assert argv[argv.index("--storage-path") + 1].startswith("/mnt/gridrl/")
    if argv[1] == "tune":  # gridrl tune runs as many trials at once as the CPUs present when it starts
        groups = spec["rayClusterSpec"]["workerGroupSpecs"]
        cpus = sum(int(g["replicas"]) * int(ray_containers_cpu(g)) for g in groups)
        assert cpus >= int(argv[argv.index("--num-samples") + 1]), f"{cpus} CPUs at start for the sweep"
    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))
    submitter = spec["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] == "Never"
    assert_token_env(submitter["containers"][0]["env"], f"{name}/submitter")
    assert "command" not in submitter["containers"][0], "KubeRay supplies the submitter's command"


@pytest.mark.parametrize("name", RAYJOBS)
def test_rayjob_entrypoint_parses_with_the_gridrl_cli(name):
    check_gridrl_command(shlex.split(load(KUBERAY / name)["spec"]["entrypoint"]))


# ---------------------------------------------------------------------------------------------------
# runtime_env.yaml, Serve config, Dockerfile


def test_runtime_env_passes_rays_validation_and_installs_citylearn_without_deps():
    from ray.runtime_env import RuntimeEnv

    raw = load(CLUSTER / "runtime_env.yaml")
    env = RuntimeEnv(**raw)
    pip = env.pip_config()
    assert pip["packages"] == [dev_sh_citylearn_pin()]
    assert "--no-deps" in pip["pip_install_options"]
    assert env.working_dir() == "."


def test_runtime_env_working_dir_packages_small_without_the_venv(tmp_path):
    """Ray's own packaging of working_dir with the file's excludes (and .gitignore not applied)."""
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE, create_package

    raw = load(CLUSTER / "runtime_env.yaml")
    target = tmp_path / "working_dir.zip"
    create_package(str(REPO), target, include_gitignore=False, excludes=raw["excludes"])
    names = zipfile.ZipFile(target).namelist()
    assert not [n for n in names if n.startswith((".venv/", ".git/", "runs/")) or "__pycache__" in n]
    assert "scripts/cli.py" in names and "rllib_configs/export/ppo.yaml" in names
    assert target.stat().st_size < min(64 * 1024**2, GCS_STORAGE_MAX_SIZE)


def test_serve_config_passes_serves_schema():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(load(CLUSTER / "serve_config.yaml"))
    (app,) = schema.applications
    assert app.import_path == "serve.app:build_app"
    assert {"bundle", "mode", "rollout_pct"} <= set(app.args)
    from serve.config import ServeConfig

    ServeConfig.from_args(app.args, source="serve_config.yaml")  # every key known, every value valid
    assert app.args["mode"] in {"shadow", "ab", "rollout", "production"}
    assert 0 <= app.args["rollout_pct"] <= 100
    assert app.args["bundle"].startswith("/mnt/gridrl/"), "the bundle must be on storage every node reaches"


def test_serve_config_import_path_resolves():
    module_name, attr = load(CLUSTER / "serve_config.yaml")["applications"][0]["import_path"].split(":")
    if not (REPO / (module_name.replace(".", "/") + ".py")).is_file():
        pytest.skip(f"{module_name} (the Serve application, issue 9) does not exist yet")
    builder = getattr(importlib.import_module(module_name), attr)
    assert callable(builder)


def test_dockerfile_pins_match_the_project():
    """cluster/Dockerfile installs what pyproject.toml and scripts/dev.sh pin (not built here: no daemon)."""
    text = (CLUSTER / "Dockerfile").read_text()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d for d in deps if d.startswith("torch"))
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert f'"{torch_pin}"' in text
    assert "tomllib.load(open('pyproject.toml'" in text, "the stack comes from pyproject.toml"
    assert f'pip install --no-deps "{dev_sh_citylearn_pin()}"' in text
    assert "ray': '2.60.0'" in text and "gymnasium': '1.2.2'" in text
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "runs"} <= set(ignored)


# ---------------------------------------------------------------------------------------------------
# The guide's commands


def guide_commands() -> list[list[str]]:
    """Every `gridrl ...` run by a `ray job submit` line of cluster/README.md (continuations joined)."""
    text = (CLUSTER / "README.md").read_text().replace("\\\n", " ")
    pattern = r"^\s*(?:RAY_AUTH_MODE=token )?ray job submit .*? -- (gridrl .+)$"
    return [shlex.split(m) for m in re.findall(pattern, text, re.M)]


def test_guide_has_the_three_submissions():
    text = (CLUSTER / "README.md").read_text()
    cmds = guide_commands()
    assert any(c[1] == "train" for c in cmds) and any(c[1] == "tune" and "50" in c for c in cmds)
    assert "serve deploy cluster/serve_config.yaml --address" in text


@pytest.mark.parametrize("argv", guide_commands(), ids=lambda a: " ".join(a[:2]))
def test_guide_gridrl_commands_parse(argv):
    check_gridrl_command(argv)


# ---------------------------------------------------------------------------------------------------
# Serve's switches on every node: one source, serve/launch.py node_env


def serve_node_env() -> dict[str, str]:
    from serve.launch import node_env

    return node_env()


def exported(command: str) -> dict[str, str]:
    """The VAR=value pairs of a shell command's `export` statements."""
    out = {}
    for statement in re.findall(r"\bexport\s+([^;&|]+)", command):
        for token in shlex.split(statement):
            key, sep, value = token.partition("=")
            if sep:
                out[key] = value
    return out


def dockerfile_env() -> dict[str, str]:
    """The image's ENV (cluster/Dockerfile), continuation lines joined."""
    out = {}
    for line in (CLUSTER / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        if line.startswith("ENV "):
            out.update(t.split("=", 1) for t in shlex.split(line[4:]) if "=" in t)
    return out


def kuberay_container_envs(name: str) -> list[tuple[str, dict[str, Any]]]:
    doc = load(KUBERAY / name)
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    return [(f"{name}/{group}", {e["name"]: e.get("value") for e in c.get("env", [])})
            for group, c in ray_containers(spec)]  # fmt: skip


def launcher_start_envs(config: dict[str, Any], name: str) -> list[tuple[str, dict[str, str]]]:
    return [(f"{name} {key}", exported(c)) for key in ("head_start_ray_commands", "worker_start_ray_commands")
            for c in config[key] if "ray start" in c]  # fmt: skip


def check_serve_switches(env: dict[str, Any], where: str) -> None:
    want = serve_node_env()
    wrong = {k: env.get(k) for k, v in want.items() if env.get(k) != v}
    assert not wrong, f"{where}: Serve's switches {wrong}, want {want} (serve/launch.py node_env)"


def test_node_env_is_gridrl_serves_default():
    """What the configs must carry is what `gridrl serve` starts with (its embedded Ray's env)."""
    from serve.launch import serve_env

    want = serve_node_env()
    assert want["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and want["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert {k: v for k, v in serve_env().items() if k in want} == want


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_nodes_start_ray_with_serves_switches(name):
    starts = launcher_start_envs(load(CLUSTER / name), name)
    assert len(starts) >= 2, f"{name}: a head and a worker `ray start`"
    for where, env in starts:
        check_serve_switches(env, where)


@pytest.mark.parametrize("name", ["raycluster.yaml", *RAYJOBS])
def test_kuberay_ray_containers_carry_serves_switches(name):
    envs = kuberay_container_envs(name)
    assert len(envs) == 3, name  # head, cpu-env-runners, gpu-learners
    for where, env in envs:
        check_serve_switches(env, where)


def test_image_carries_serves_switches():
    check_serve_switches(dockerfile_env(), "cluster/Dockerfile ENV")


def test_serve_config_lets_haproxy_on_every_node_reach_the_replicas():
    """HAProxy on other nodes forwards to the replicas' own HTTP servers: all interfaces, every node."""
    config = load(CLUSTER / "serve_config.yaml")
    assert config["http_options"]["host"] == "0.0.0.0"
    assert config["proxy_location"] == "EveryNode"


@pytest.mark.parametrize(
    "mistake", ["worker without a switch", "container with HAProxy off", "node_env changes"]
)
def test_serve_switch_checks_catch_mistakes(mistake, monkeypatch):
    """The checks above can fail: a config drifting from serve/launch.py, or launch.py from the configs."""
    import serve.launch

    aws = load(CLUSTER / "aws.yaml")
    if mistake == "worker without a switch":
        aws["worker_start_ray_commands"] = [c.replace(" RAY_SERVE_THROUGHPUT_OPTIMIZED=1", "")
                                            for c in aws["worker_start_ray_commands"]]  # fmt: skip
        with pytest.raises(AssertionError, match="RAY_SERVE_THROUGHPUT_OPTIMIZED"):
            for where, env in launcher_start_envs(aws, "aws.yaml"):
                check_serve_switches(env, where)
    elif mistake == "container with HAProxy off":
        where, env = kuberay_container_envs("raycluster.yaml")[1]
        with pytest.raises(AssertionError, match="RAY_SERVE_ENABLE_HA_PROXY"):
            check_serve_switches({**env, "RAY_SERVE_ENABLE_HA_PROXY": "0"}, where)
    else:  # the chosen settings change in launch.py: every config is then out of date
        original = serve.launch.node_env
        monkeypatch.setattr(serve.launch, "node_env", lambda: original("proxy", False))
        for check in (lambda: test_launcher_nodes_start_ray_with_serves_switches("gcp.yaml"),
                      lambda: test_kuberay_ray_containers_carry_serves_switches("raycluster.yaml"),
                      test_image_carries_serves_switches):  # fmt: skip
            with pytest.raises(AssertionError, match="node_env"):
                check()
