"""The cluster configs and the jobs' runtime env: they parse, validate against the schemas of the tools
that read them, name entry points that exist, agree with pyproject.toml, and hold no secret."""

from __future__ import annotations

import base64
import copy
import http.server
import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from animegan.cluster import WORKER_ENV_DEFAULTS
from tests.conftest import REPO
from tests.support import kuberay_schema
from tests.support.ports import free_port

CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
RUNTIME_ENV = REPO / "jobs" / "runtime_env.yaml"
CONFIG_FILES = sorted(CLUSTER.rglob("*.yaml")) + [RUNTIME_ENV]
SCANNED_FILES = sorted(path for folder in (CLUSTER, REPO / "jobs") for path in folder.rglob("*") if path.is_file()
                       and "__pycache__" not in path.parts)


def documents(path: Path) -> list:
    return list(yaml.safe_load_all(path.read_text()))


def kuberay_objects() -> list[tuple[Path, dict]]:
    return [(path, document) for path in sorted(KUBERAY.glob("*.yaml")) for document in documents(path)]


def gcp_config() -> dict:
    return yaml.safe_load((CLUSTER / "gcp.yaml").read_text())


def ray_jobs() -> list[dict]:
    return [document for _, document in kuberay_objects() if document["kind"] == "RayJob"]


# ------------------------------------------------------------------ parsing and entry points

def test_every_config_file_parses_into_mappings():
    assert {path.name for path in CONFIG_FILES} >= {"gcp.yaml", "raycluster.yaml", "rayjob-train.yaml",
                                                     "rayjob-sweep.yaml", "runtime_env.yaml"}
    for path in CONFIG_FILES:
        parsed = documents(path)
        assert parsed and all(isinstance(document, dict) for document in parsed), path
    for job in ray_jobs():
        assert isinstance(yaml.safe_load(job["spec"]["runtimeEnvYAML"]), dict), job["metadata"]["name"]


def test_entry_points_named_in_cluster_files_exist():
    named = set()
    for path in [*CLUSTER.rglob("*"), RUNTIME_ENV]:
        if path.is_file():
            named |= set(re.findall(r"jobs/[\w-]+\.py", path.read_text()))
    assert {"jobs/train.py", "jobs/tune.py", "jobs/submit.py"} <= named
    for script in named:
        assert (REPO / script).is_file(), f"{script} is named in cluster/ but does not exist"
    for job in ray_jobs():
        entrypoint = job["spec"]["entrypoint"].split()
        assert entrypoint[0] == "python" and (REPO / entrypoint[1]).is_file(), job["spec"]["entrypoint"]


def test_each_job_script_shows_its_submit_command():
    for name in ["train", "generate", "tune"]:
        docstring = (REPO / "jobs" / f"{name}.py").read_text().split('"""')[1]
        assert f"jobs/submit.py -- python jobs/{name}.py" in docstring
        assert "--smoke-test" in docstring


# ------------------------------------------------------------------ jobs/runtime_env.yaml

def _requirements(lines: list[str]) -> dict[str, str]:
    from packaging.requirements import Requirement

    parsed = [Requirement(line) for line in lines]
    return {requirement.name.lower(): str(requirement.specifier) for requirement in parsed}


def pyproject_requirements() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {name: spec for name, spec in _requirements(dependencies).items() if name != "ray"}


def test_runtime_env_pip_list_is_pyprojects_dependencies_without_ray():
    runtime_env = yaml.safe_load(RUNTIME_ENV.read_text())
    assert _requirements(runtime_env["pip"]["packages"]) == pyproject_requirements()
    for job in ray_jobs():
        job_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
        assert _requirements(job_env["pip"]["packages"]) == pyproject_requirements()
        # The stock Ray image has no CUDA libraries that TensorFlow can use: pip brings them.
        assert "tensorflow[and-cuda]" in " ".join(job_env["pip"]["packages"])


def test_runtime_envs_set_the_worker_environment_of_animegan_cluster():
    for env in [yaml.safe_load(RUNTIME_ENV.read_text())] + [yaml.safe_load(job["spec"]["runtimeEnvYAML"])
                                                          for job in ray_jobs()]:
        assert env["env_vars"] == WORKER_ENV_DEFAULTS


def test_runtime_env_uploads_the_repository_without_local_clutter():
    runtime_env = yaml.safe_load(RUNTIME_ENV.read_text())
    assert runtime_env["working_dir"] == "."
    assert {".git", ".venv", "runs", "wandb"} <= set(runtime_env["excludes"])
    for job in ray_jobs():
        assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"].endswith(".zip")


# ------------------------------------------------------------------ cluster/gcp.yaml

def test_gcp_config_passes_the_ray_cluster_launchers_validation():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(gcp_config(), schema)
    # What `ray up` does before it talks to Google Cloud: defaults filled in, then validated.
    validate_config(prepare_config(gcp_config()))


@pytest.mark.parametrize("misspelling", ["max_worker", "available_node_type"])
def test_gcp_schema_check_catches_a_misspelled_field(misspelling):
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = gcp_config()
    config[misspelling] = config.pop(misspelling + "s")
    with pytest.raises(jsonschema.ValidationError, match=misspelling):
        jsonschema.validate(config, schema)


def test_gcp_gpu_workers_autoscale_stop_for_maintenance_and_name_their_accelerator():
    config = gcp_config()
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and "guestAccelerators" not in head["node_config"]
    gpu_types = {name: node for name, node in node_types.items() if node["resources"].get("GPU", 0) > 0}
    assert len(gpu_types) >= 2
    for name, node in gpu_types.items():
        scheduling = node["node_config"]["scheduling"]
        # Compute Engine takes an object here (Ray's own examples wrongly use a list).
        assert isinstance(scheduling, dict), name
        assert scheduling["onHostMaintenance"] == "TERMINATE", name
        assert node["node_config"]["machineType"] == "g2-standard-8", name  # G2 = NVIDIA L4 attached
        assert node["labels"]["accelerator"] == "nvidia-l4", name
        assert "nvidia-" in node["node_config"]["disks"][0]["initializeParams"]["sourceImage"], name
        assert node["min_workers"] == 0 < node["max_workers"], name
    spot = [node["node_config"]["scheduling"] for node in gpu_types.values()
            if node["node_config"]["scheduling"].get("provisioningModel") == "SPOT"]
    assert spot and spot[0]["automaticRestart"] is False
    images = config["docker"]
    version = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-gpu", images["worker_image"]).group(1)
    assert images["head_image"].startswith(f"rayproject/ray:{version}-")


def test_gcp_installs_the_project_on_every_node_and_names_the_bucket_once():
    config = gcp_config()
    assert config["file_mounts"] == {"~/animegan": "."}
    assert any("pip install" in command and "animegan" in command for command in config["head_setup_commands"])
    assert any("animegan[gpu]" in command for command in config["worker_setup_commands"])
    text = (CLUSTER / "gcp.yaml").read_text()
    assert len(re.findall(r"ANIMEGAN_BUCKET=", text)) == 1
    for commands in [config["head_start_ray_commands"], config["worker_start_ray_commands"]]:
        assert any(command.startswith("source ~/.animegan_env") for command in commands)


# ------------------------------------------------------------------ cluster/kuberay/

def test_kuberay_manifests_use_only_fields_of_their_crds():
    kinds = [document["kind"] for _, document in kuberay_objects()]
    assert kinds.count("RayCluster") == 1 and kinds.count("RayJob") == 2
    for path, document in kuberay_objects():
        assert kuberay_schema.problems(document) == [], path


RAY_CLUSTER_TEXT = (KUBERAY / "raycluster.yaml").read_text()


@pytest.mark.parametrize("correct, misspelled, reported", [
    ("workerGroupSpecs:", "workerGroupSpec:", "RayCluster.spec.workerGroupSpec: unknown field"),
    ("      rayStartParams: {}", "      rayStartParam: {}", "workerGroupSpecs[0].rayStartParam: unknown field"),
    ("nodeSelector:", "nodeSelecter:", "template.spec.nodeSelecter: unknown field"),
    ("              resources: &gpu", "              resource: &gpu", "containers[0].resource: unknown field"),
    ("  headGroupSpec:", "  headGroup:", "RayCluster.spec: missing required field 'headGroupSpec'"),
])
def test_kuberay_field_check_reports_misspelled_fields(correct, misspelled, reported):
    assert correct in RAY_CLUSTER_TEXT
    broken = [document for document in yaml.safe_load_all(RAY_CLUSTER_TEXT.replace(correct, misspelled, 1))
              if document["kind"] == "RayCluster"][0]
    assert any(reported in problem for problem in kuberay_schema.problems(broken)), kuberay_schema.problems(broken)


def test_kuberay_field_check_reports_misspelled_rayjob_fields_and_wrong_shapes():
    job = copy.deepcopy(ray_jobs()[0])
    job["spec"]["entryPoint"] = job["spec"].pop("entrypoint")
    job["spec"]["clusterSelector"] = ["ray.io/cluster", "animegan"]
    found = kuberay_schema.problems(job)
    assert any(problem.startswith("RayJob.spec.entryPoint: unknown field") for problem in found), found
    assert "RayJob.spec.clusterSelector: expected a map of strings, got list" in found
    assert kuberay_schema.problems({"apiVersion": "ray.io/v2", "kind": "RayJob"})[0].startswith("no schema")


def test_kuberay_gpu_groups_request_an_l4_each_and_jobs_run_on_the_cluster():
    cluster = [document for _, document in kuberay_objects() if document["kind"] == "RayCluster"][0]
    groups = cluster["spec"]["workerGroupSpecs"]
    assert {group["groupName"] for group in groups} == {"gpu-l4", "gpu-l4-spot"}
    for group in groups:
        pod = group["template"]["spec"]
        assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert group["minReplicas"] == 0 < group["maxReplicas"]
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    for job in ray_jobs():
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}


# ------------------------------------------------------------------ no secrets

SECRET_PATTERNS = {
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "AWS access key id": r"\bAKIA[0-9A-Z]{16}\b",
    "Google API key": r"\bAIza[0-9A-Za-z_\-]{35}\b",
    "service-account key file field": r"[\"']private_key(_id)?[\"']\s*:",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36}\b",
    "long hex token (a W&B API key is 40 hex digits)": r"\b[0-9a-fA-F]{32,}\b",
    "credential with a literal value": r"(?i)\b[\w-]*(api[_-]?key|token|secret|password)[\"']?\s*[:=]\s*[\"']?"
                                       r"[A-Za-z0-9+/_\-]{16,}",
}
CREDENTIAL_NAME = re.compile(r"(?i)(key|token|secret|password)")


def secrets_in(text: str) -> list[str]:
    return [name for name, pattern in SECRET_PATTERNS.items() if re.search(pattern, text)]


def test_cluster_and_job_files_hold_no_secret():
    assert len(SCANNED_FILES) >= 9
    for path in SCANNED_FILES:
        assert secrets_in(path.read_text()) == [], path


def test_credentials_reach_jobs_from_outside_the_files():
    # Runtime envs name no credential at all: jobs/submit.py adds them at submit time.
    for env in [yaml.safe_load(RUNTIME_ENV.read_text())] + [yaml.safe_load(job["spec"]["runtimeEnvYAML"])
                                                          for job in ray_jobs()]:
        assert not [name for name in env["env_vars"] if CREDENTIAL_NAME.search(name)]
    # Pods take them from a Secret.
    for _, document in kuberay_objects():
        containers = [] if document["kind"] != "RayCluster" else [
            container for group in [document["spec"]["headGroupSpec"], *document["spec"]["workerGroupSpecs"]]
            for container in group["template"]["spec"]["containers"]]
        for container in containers:
            for variable in container.get("env", []):
                if CREDENTIAL_NAME.search(variable["name"]):
                    assert "value" not in variable and "secretKeyRef" in variable["valueFrom"], variable


def test_every_ray_pod_takes_the_wandb_key_from_the_kubernetes_secret():
    cluster = [document for _, document in kuberay_objects() if document["kind"] == "RayCluster"][0]
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            [key] = [variable for variable in container["env"] if variable["name"] == "WANDB_API_KEY"]
            # Optional: without the Secret the pods start, and W&B logs offline.
            assert key == {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {
                "name": "wandb", "key": "api-key", "optional": True}}}, container["name"]


def test_gcp_nodes_export_the_wandb_key_from_secret_manager_before_ray_starts(tmp_path):
    config = gcp_config()
    setup = config["setup_commands"]
    [fetch] = [command for command in setup if "fetch_secret.py" in command]
    assert fetch == "python ~/animegan/cluster/fetch_secret.py wandb-api-key ~/.animegan/wandb-api-key"
    assert setup.index(fetch) < len(setup) - 1  # the export line comes after it
    # The setup's shell lines, as a node runs them (the fetch aside), then what `ray start` sees.
    shell_lines = [command for command in setup if command != fetch]
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    (tmp_path / ".bashrc").write_text("")
    for command in shell_lines:
        subprocess.run(["bash", "-c", command], env=environment, check=True)

    def key_seen_by_ray_start() -> str:
        start = config["head_start_ray_commands"][-1].split(";")[0]  # source ~/.animegan_env
        return subprocess.run(["bash", "-c", f"{start}; printf %s \"${{WANDB_API_KEY-unset}}\""], env=environment,
                              capture_output=True, text=True, check=True).stdout

    assert key_seen_by_ray_start() == "unset"  # no secret: W&B logs offline
    (tmp_path / ".animegan").mkdir()
    (tmp_path / ".animegan" / "wandb-api-key").write_text("k" * 40)
    assert key_seen_by_ray_start() == "k" * 40


class GoogleEndpoints(http.server.BaseHTTPRequestHandler):
    """Stands in for a node's metadata server and Secret Manager, answering as Google documents them."""

    secrets = {"wandb-api-key": b"k" * 40 + b"\n"}

    def do_GET(self):  # noqa: N802 (the http.server API)
        if self.path.startswith("/computeMetadata/v1/"):
            if self.headers.get("Metadata-Flavor") != "Google":
                return self.answer(403, b"missing Metadata-Flavor")
            answers = {"/computeMetadata/v1/instance/service-accounts/default/token":
                       json.dumps({"access_token": "node-token", "expires_in": 3599, "token_type": "Bearer"}).encode(),
                       "/computeMetadata/v1/project/project-id": b"faces-project"}
            return self.answer(200, answers[self.path]) if self.path in answers else self.answer(404, b"")
        match = re.fullmatch(r"/v1/projects/faces-project/secrets/([\w-]+)/versions/latest:access", self.path)
        if self.headers.get("Authorization") != "Bearer node-token":
            return self.answer(401, b"{}")
        if not match or match.group(1) not in self.secrets:
            return self.answer(404, b'{"error": {"code": 404, "status": "NOT_FOUND"}}')
        data = base64.b64encode(self.secrets[match.group(1)]).decode()
        self.answer(200, json.dumps({"name": match.group(1), "payload": {"data": data}}).encode())

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_fetch_secret_writes_the_key_for_this_user_only_and_never_fails_the_setup(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GoogleEndpoints)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    environment = {**os.environ, "GCE_METADATA_HOST": address, "SECRET_MANAGER_ENDPOINT": f"http://{address}"}
    script = [sys.executable, str(CLUSTER / "fetch_secret.py")]
    try:
        target = tmp_path / "home" / ".animegan" / "wandb-api-key"
        fetched = subprocess.run([*script, "wandb-api-key", str(target)], env=environment, capture_output=True,
                                 text=True, timeout=60)
        assert fetched.returncode == 0 and fetched.stderr == "", fetched.stderr
        assert target.read_bytes() == b"k" * 40 and stat.S_IMODE(target.stat().st_mode) == 0o600
        assert "k" * 40 not in fetched.stdout

        missing = subprocess.run([*script, "no-such-secret", str(tmp_path / "other")], env=environment,
                                 capture_output=True, text=True, timeout=60)
        assert missing.returncode == 0 and not (tmp_path / "other").exists()
        assert missing.stderr == ("fetch_secret: no-such-secret not read from Secret Manager (HTTP 404 (no such "
                                  "secret)); jobs on this node log W&B offline\n")
    finally:
        server.shutdown()
    unreachable = subprocess.run([*script, "wandb-api-key", str(tmp_path / "third")], capture_output=True, text=True,
                                 env={**environment, "GCE_METADATA_HOST": f"127.0.0.1:{free_port()}"}, timeout=60)
    assert unreachable.returncode == 0 and "not read from Secret Manager (URLError" in unreachable.stderr


@pytest.mark.parametrize("planted", [
    "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEow...",
    "aws_access_key_id: AKIA" + "ABCDEFGHIJKLMNOP",
    "key: AIza" + "Sy" + "A" * 33,
    '{"type": "service_account", "private_key": "..."}',
    "WANDB_API_KEY: " + "0123456789abcdef" * 2 + "01234567",
    "env_vars:\n  WANDB_API_KEY: local-wandb-" + "x" * 20,
    "password = " + "hunter2hunter2hunter2",
    "token: ghp_" + "a" * 36,
])
def test_secret_scan_catches_planted_secrets(planted):
    assert secrets_in(planted)


# ------------------------------------------------------------------ cluster/local.sh (no Ray started)

def test_local_sh_reports_no_head_and_rejects_unknown_commands(tmp_path):
    script = str(CLUSTER / "local.sh")
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ANIMEGAN_RAY_TEMP_DIR": str(tmp_path / "ray")}
    status = subprocess.run([script, "status"], env=environment, capture_output=True, text=True, timeout=60)
    assert status.returncode == 3 and f"No Ray head of {tmp_path / 'ray'} is running" in status.stdout
    stop = subprocess.run([script, "stop"], env=environment, capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0 and "No Ray head" in stop.stdout
    unknown = subprocess.run([script, "restart"], env=environment, capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "usage:" in unknown.stderr
