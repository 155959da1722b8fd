"""The cluster configs, their image and the jobs' runtime env: they parse, validate against the schemas of
the tools that read them, name entry points that exist, agree with pyproject.toml, run one image, and hold
no secret. cluster/Dockerfile is checked statically (CI has no network to build it)."""

from __future__ import annotations

import base64
import copy
import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from fnmatch import fnmatch
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
DOCKERFILE = CLUSTER / "Dockerfile"
# Where cluster/Dockerfile puts the repository's files in the image (its WORKDIR).
IMAGE_APP_DIR = "/home/ray/animegan"
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


def ray_cluster_specs() -> list[tuple[str, dict]]:
    """(where, spec) of every Ray cluster the manifests make: the RayCluster's, and each RayJob's own."""
    return [(f"{path.name}: {document['kind']} {document['metadata']['name']}",
             document["spec"] if document["kind"] == "RayCluster" else document["spec"]["rayClusterSpec"])
            for path, document in kuberay_objects()
            if document["kind"] == "RayCluster" or "rayClusterSpec" in document.get("spec", {})]


def ray_pod_containers() -> list[tuple[str, dict]]:
    """(where, container) of every Ray pod's containers, heads and workers, in every cluster."""
    return [(f"{where} {group.get('groupName', 'head')}", container) for where, spec in ray_cluster_specs()
            for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
            for container in group["template"]["spec"]["containers"]]


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
        # The RayJobs run the scripts of the image, which holds the repository's files at IMAGE_APP_DIR.
        entrypoint = job["spec"]["entrypoint"].split()
        assert entrypoint[0] == "python" and entrypoint[1].startswith(IMAGE_APP_DIR + "/"), job["spec"]["entrypoint"]
        script = entrypoint[1][len(IMAGE_APP_DIR) + 1:]
        assert (REPO / script).is_file() and script in files_in_image(), job["spec"]["entrypoint"]


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


def test_runtime_env_pip_list_is_pyprojects_dependencies_without_ray_and_only_for_laptops():
    runtime_env = yaml.safe_load(RUNTIME_ENV.read_text())
    assert _requirements(runtime_env["pip"]["packages"]) == pyproject_requirements()
    assert "only for laptops and local heads" in RUNTIME_ENV.read_text()
    # The cluster's jobs install nothing: their pods run animegan's image, which has it all.
    for job in ray_jobs():
        assert "pip" not in yaml.safe_load(job["spec"]["runtimeEnvYAML"]), job["metadata"]["name"]


def test_runtime_envs_set_the_worker_environment_of_animegan_cluster():
    for env in [yaml.safe_load(RUNTIME_ENV.read_text())] + [yaml.safe_load(job["spec"]["runtimeEnvYAML"])
                                                          for job in ray_jobs()]:
        assert env["env_vars"] == WORKER_ENV_DEFAULTS


def test_runtime_env_uploads_the_repository_without_local_clutter():
    runtime_env = yaml.safe_load(RUNTIME_ENV.read_text())
    assert runtime_env["working_dir"] == "."
    assert {".git", ".venv", "runs", "wandb"} <= set(runtime_env["excludes"])
    for job in ray_jobs():
        # The image's code, not a download that could be of another version than its packages.
        assert "working_dir" not in yaml.safe_load(job["spec"]["runtimeEnvYAML"]), job["metadata"]["name"]


# ------------------------------------------------------------------ cluster/Dockerfile (read, never built)

@dataclass(frozen=True)
class Instruction:
    keyword: str  # FROM, RUN, COPY, ... in capitals
    arguments: str  # continuation lines joined, whitespace runs made single spaces


def dockerfile_instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile as Docker reads them: continued lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(arguments.split())))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def dockerfile_stages(text: str) -> list[tuple[str, list[Instruction]]]:
    """(base image with build arguments' defaults filled in, the stage's instructions) for each FROM."""
    instructions = dockerfile_instructions(text)
    defaults = {}
    for instruction in instructions[:[i.keyword for i in instructions].index("FROM")]:
        assert instruction.keyword == "ARG", f"{instruction.keyword} before the first FROM"
        name, _, value = instruction.arguments.partition("=")
        defaults[name] = value
    stages: list[tuple[str, list[Instruction]]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            base = instruction.arguments.split()[-1 if " AS " not in f" {instruction.arguments.upper()} " else 0]
            base = re.sub(r"\$\{?(\w+)\}?", lambda match: defaults[match.group(1)], base)
            stages.append((base, []))
        elif stages:
            stages[-1][1].append(instruction)
    return stages


def shell_commands(stage: list[Instruction]) -> list[list[str]]:
    """Each command of the stage's RUN instructions (split at &&, || and ;), as the shell's words."""
    commands: list[list[str]] = [[]]
    for instruction in stage:
        if instruction.keyword == "RUN":
            lexer = shlex.shlex(instruction.arguments, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            for word in lexer:
                if word in {"&&", "||", ";"}:
                    commands.append([])
                else:
                    commands[-1].append(word)
            commands.append([])
    return [command for command in commands if command]


def copied_sources(stage: list[Instruction]) -> list[str]:
    return [source for instruction in stage if instruction.keyword == "COPY"
            for source in [word for word in instruction.arguments.split() if not word.startswith("--")][:-1]]


def sent_to_docker(path: str) -> bool:
    """Whether `docker build .` sends `path` (relative to the repository) under .dockerignore's patterns."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[:count]) for count in range(1, len(parts) + 1)]
    sent = True
    for pattern in patterns:  # the last pattern that matches the path or a folder above it decides
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch(prefix, pattern) for prefix in prefixes):
            sent = negated
    return sent


def files_in_image() -> set[str]:
    """The repository's files (tracked ones, as in a clean checkout) that the Dockerfile copies in."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    sources = copied_sources(dockerfile_stages(DOCKERFILE.read_text())[-1][1])
    return {path for path in tracked.split() if sent_to_docker(path)
            and any(path == source or path.startswith(source.rstrip("/") + "/") for source in sources)}


RAY_CLUSTER = next(document for _, document in kuberay_objects() if document["kind"] == "RayCluster")


def test_dockerfile_builds_on_a_pinned_ray_gpu_image_of_the_clusters_ray_version():
    stages = dockerfile_stages(DOCKERFILE.read_text())
    for base, _ in stages:
        name, _, digest = base.partition("@")
        assert ":" in name.rsplit("/", 1)[-1] or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{base} is not pinned"
        assert not name.endswith(":latest"), base
    base = stages[-1][0]
    version = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-gpu(@sha256:[0-9a-f]{64})?", base).group(1)
    # The nodes' Ray is the one the configs declare and one that pyproject.toml allows.
    assert version == RAY_CLUSTER["spec"]["rayVersion"]
    from packaging.specifiers import SpecifierSet

    tomllib = pytest.importorskip("tomllib")
    ray_requirement = [line for line in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
                       if line.startswith("ray[")][0]
    assert version in SpecifierSet(ray_requirement.split("]", 1)[1])


def test_dockerfile_installs_pyprojects_requirements_and_no_package_of_its_own():
    stage = dockerfile_stages(DOCKERFILE.read_text())[-1][1]
    installs = [command for command in shell_commands(stage) if command[:2] == ["pip", "install"]]
    # The dependencies from the file that pyproject_requirements.py writes (Ray held at the base's
    # version), then animegan itself without dependencies: no package is named in the Dockerfile.
    assert installs == [["pip", "install", "--requirement", "/tmp/requirements.txt", "--constraint",
                         "/tmp/constraints.txt"], ["pip", "install", "--no-deps", "--editable", "."]]
    [written] = [command for command in shell_commands(stage) if "/tmp/requirements.txt" in command
                 and command[0] == "python"]
    assert written[:2] == ["python", "cluster/pyproject_requirements.py"] and written[-2] == ">"
    arguments = written[2:-2]
    assert arguments[0] == "pyproject.toml" and "gpu" in arguments[1:]
    [pinned] = [command for command in shell_commands(stage) if "/tmp/constraints.txt" in command
                and command[0] == "python"]
    assert pinned[:3] == ["python", "-c", "import ray; print('ray==' + ray.__version__)"]

    # What the script prints is pyproject.toml's dependencies and the gpu extra's, exactly.
    printed = subprocess.run([sys.executable, str(CLUSTER / "pyproject_requirements.py"),
                              str(REPO / "pyproject.toml"), *arguments[1:]], capture_output=True, text=True, check=True)
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    expected = project["dependencies"] + [requirement for extra in arguments[1:]
                                          for requirement in project["optional-dependencies"][extra]]
    assert printed.stdout.splitlines() == expected
    assert any(requirement.startswith("optuna") for requirement in expected)  # sweeps with --search optuna
    assert "tensorflow[and-cuda]>=2.18,<2.22" in expected  # TensorFlow's own CUDA libraries

    wrong = subprocess.run([sys.executable, str(CLUSTER / "pyproject_requirements.py"), str(REPO / "pyproject.toml"),
                            "cuda"], capture_output=True, text=True)
    extras = ", ".join(sorted(project["optional-dependencies"]))
    assert wrong.returncode == 2 and wrong.stderr.endswith(f"no extra named cuda (it has: {extras})\n")


def test_dockerfile_fills_the_fid_cache_at_a_fixed_path_as_an_unprivileged_user():
    from animegan.metrics.fid_weights import CACHE_VARIABLE, FILL_COMMAND

    instructions = dockerfile_stages(DOCKERFILE.read_text())[-1][1]
    keywords = [instruction.keyword for instruction in instructions]
    users = [instruction.arguments for instruction in instructions if instruction.keyword == "USER"]
    assert users and all(user.split(":")[0] not in {"root", "0"} for user in users)
    assert keywords.index("USER") < keywords.index("RUN")  # nothing runs as root
    environment = dict(re.findall(r"(\w+)=(\S+)", " ".join(instruction.arguments for instruction in instructions
                                                            if instruction.keyword == "ENV")))
    assert environment[CACHE_VARIABLE].startswith("/home/ray/")  # absolute, and the user's own
    commands = shell_commands(instructions)
    fill = commands.index(FILL_COMMAND.split())
    assert fill > commands.index(["pip", "install", "--no-deps", "--editable", "."])
    [workdir] = [instruction.arguments for instruction in instructions if instruction.keyword == "WORKDIR"]
    assert workdir == IMAGE_APP_DIR


def test_dockerfile_copies_only_what_dockerignore_sends_and_bakes_in_no_secret():
    instructions = dockerfile_stages(DOCKERFILE.read_text())[-1][1]
    assert not [instruction for instruction in instructions if instruction.keyword == "ADD"]  # no URLs, no archives
    for instruction in instructions:
        if instruction.keyword in {"ENV", "ARG", "LABEL"}:
            names = re.findall(r"(\w+)=", instruction.arguments) or instruction.arguments.split()[:1]
            assert not [name for name in names if CREDENTIAL_NAME.search(name)], instruction
    for source in copied_sources(instructions):
        assert (REPO / source).exists() and sent_to_docker(source), source
    image = files_in_image()
    assert {"pyproject.toml", "README.md", "animegan/cli.py", "jobs/train.py", "cluster/fetch_secret.py"} <= image
    # A checkout's clutter and anything else stays out of the build context.
    for path in [".venv/bin/python", ".git/config", "runs/faces/metrics.jsonl", "wandb/settings", "tests/conftest.py",
                 "animegan/__pycache__/cli.cpython-311.pyc", "service-account.json", "cluster/gcp.yaml"]:
        assert not sent_to_docker(path), path


# ------------------------------------------------------------------ the one image of the cluster configs

def images_named(document) -> list[str]:
    """Every value of an `image` field, at any depth (container specs, autoscaler options)."""
    if isinstance(document, dict):
        return [value for key, value in document.items() if key == "image" and isinstance(value, str)] + [
            image for value in document.values() for image in images_named(value)]
    if isinstance(document, list):
        return [image for value in document for image in images_named(value)]
    return []


def load_image_script(cluster: Path = CLUSTER):
    """cluster/image.py as a module; loaded from a copy of cluster/, it works on the copy."""
    spec = importlib.util.spec_from_file_location("cluster_image", cluster / "image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_cluster_config_runs_the_one_image():
    script = load_image_script()
    image = script.current()
    script.check_reference(image)
    config = gcp_config()
    assert config["docker"]["image"] == image and not {"head_image", "worker_image"} & set(config["docker"])
    assert not [node for node in config["available_node_types"].values() if "docker" in node]
    # The nodes log in to the image's registry before they pull it.
    logins = [command for commands in [config["initialization_commands"]] + [
        node.get("initialization_commands", []) for node in config["available_node_types"].values()]
        for command in commands if "configure-docker" in command]
    assert logins and set(logins) == {f"gcloud auth configure-docker {script.registry_host(image)} --quiet"}
    with_images = {"gcp.yaml"}
    for path, document in kuberay_objects():
        named = images_named(document)
        assert set(named) <= {image}, path
        if named:
            with_images.add(str(path.relative_to(CLUSTER)))
    # image.py rewrites every file that starts nodes or pods, and only those.
    assert with_images == set(script.CONFIGS)


def test_image_script_sets_the_image_everywhere_and_refuses_unversioned_ones(tmp_path, capsys):
    copy_of_cluster = tmp_path / "cluster"
    shutil.copytree(CLUSTER, copy_of_cluster, ignore=shutil.ignore_patterns("__pycache__"))
    script = load_image_script(copy_of_cluster)
    image = "europe-west4-docker.pkg.dev/faces-project/animegan/animegan:2026-12-01"
    # The command line, as README shows it.
    changed = subprocess.run([sys.executable, str(copy_of_cluster / "image.py"), "set", image], capture_output=True,
                             text=True, timeout=60)
    assert changed.returncode == 0 and changed.stderr.startswith(f"{image} set in cluster/gcp.yaml, "), changed.stderr
    assert script.main([]) == 0 and capsys.readouterr().out == image + "\n"
    gcp = yaml.safe_load((copy_of_cluster / "gcp.yaml").read_text())
    assert gcp["docker"]["image"] == image
    assert gcp["initialization_commands"] == ["gcloud auth configure-docker europe-west4-docker.pkg.dev --quiet"]
    for config in script.CONFIGS:
        documents_of_copy = list(yaml.safe_load_all((copy_of_cluster / config).read_text()))
        assert {found for document in documents_of_copy for found in images_named(document)} == {image}, config

    for wrong, message in [("animegan/animegan", "names no version"), ("animegan/animegan:latest", "`latest`"),
                           ("Animegan:1", "is not an image reference")]:
        before = (copy_of_cluster / "gcp.yaml").read_text()
        assert script.main(["set", wrong]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error
        assert (copy_of_cluster / "gcp.yaml").read_text() == before

    # A file edited by hand to another image: the script says which files disagree.
    raycluster = copy_of_cluster / "kuberay" / "raycluster.yaml"
    raycluster.write_text(raycluster.read_text().replace(image, image.replace("2026-12-01", "2026-11-30")))
    assert script.main([]) == 2
    error = capsys.readouterr().err
    assert "the cluster configs name different images" in error
    assert "cluster/kuberay/raycluster.yaml: europe-west4-docker.pkg.dev/faces-project/animegan/animegan:2026-11-30" \
        in error


def test_readme_shows_the_image_the_own_cluster_job_and_the_token_with_files_that_exist():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Run on a cluster\n"):]
    section = section[:section.index("\n## ", 1)]
    for command in ["python3 cluster/image.py set ", 'docker push "$(python3 cluster/image.py)"',
                    'docker build -f cluster/Dockerfile -t "$(python3 cluster/image.py)" .',
                    "kubectl create secret generic animegan-ray-token",
                    "gcloud secrets create ray-auth-token", "--ray-token-file $TOKEN",
                    "-f cluster/kuberay/rayjob-train-own-cluster.yaml", "--node-taints cloud.google.com/gke-spot=true"]:
        assert command in section, command
    for named in set(re.findall(r"(?:cluster|jobs)/[\w./-]*\w", section)):
        assert (REPO / named).exists(), f"README names {named}, which does not exist"


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


def test_gcp_nodes_install_nothing_and_name_the_bucket_once():
    config = gcp_config()
    # The image has animegan and its dependencies; a bind mount of a checkout would hide the image's copy.
    assert not config.get("file_mounts")
    commands = [command for key, value in config.items() if key.endswith("_commands") for command in value]
    commands += [command for node in config["available_node_types"].values()
                 for key, value in node.items() if key.endswith("_commands") for command in value]
    assert commands and not [command for command in commands if "pip " in command or "install" in command]
    text = (CLUSTER / "gcp.yaml").read_text()
    assert len(re.findall(r"ANIMEGAN_BUCKET=", text)) == 1
    for commands in [config["head_start_ray_commands"], config["worker_start_ray_commands"]]:
        assert any(command.startswith("source ~/.animegan_env") for command in commands)


# ------------------------------------------------------------------ cluster/kuberay/

def test_kuberay_manifests_use_only_fields_of_their_crds():
    kinds = [document["kind"] for _, document in kuberay_objects()]
    assert kinds.count("RayCluster") == 1 and kinds.count("RayJob") == 3 and kinds.count("ServiceAccount") == 1
    for path, document in kuberay_objects():
        assert kuberay_schema.problems(document) == [], path


RAY_CLUSTER_TEXT = (KUBERAY / "raycluster.yaml").read_text()


@pytest.mark.parametrize("correct, misspelled, reported", [
    ("workerGroupSpecs:", "workerGroupSpec:", "RayCluster.spec.workerGroupSpec: unknown field"),
    ("      rayStartParams: {}", "      rayStartParam: {}", "workerGroupSpecs[0].rayStartParam: unknown field"),
    ("nodeSelector:", "nodeSelecter:", "template.spec.nodeSelecter: unknown field"),
    ("              resources: &gpu", "              resource: &gpu", "containers[0].resource: unknown field"),
    ("  headGroupSpec:", "  headGroup:", "RayCluster.spec: missing required field 'headGroupSpec'"),
    ("    secretName:", "    secret:", "RayCluster.spec.authOptions.secret: unknown field"),
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


SPOT_LABEL = "cloud.google.com/gke-spot"


def test_kuberay_clusters_keep_on_demand_and_spot_gpu_workers_apart():
    for where, spec in ray_cluster_specs():
        groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
        assert set(groups) == {"gpu-l4", "gpu-l4-spot"}, where
        for name, group in groups.items():
            pod = group["template"]["spec"]
            assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4", (where, name)
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            resources = pod["containers"][0]["resources"]
            assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
            assert group["minReplicas"] == 0 < group["maxReplicas"], (where, name)
        # Spot workers only on spot nodes, whose pool's taint they tolerate ...
        spot = groups["gpu-l4-spot"]["template"]["spec"]
        assert spot["nodeSelector"][SPOT_LABEL] == "true"
        assert {"key": SPOT_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"} in spot["tolerations"]
        assert spot["terminationGracePeriodSeconds"] < 30  # inside a spot VM's notice
        # ... and on-demand workers never on one, tainted or not.
        on_demand = groups["gpu-l4"]["template"]["spec"]
        assert SPOT_LABEL not in on_demand["nodeSelector"]
        assert not [toleration for toleration in on_demand["tolerations"] if toleration["key"] == SPOT_LABEL]
        [term] = on_demand["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"]
        assert {"key": SPOT_LABEL, "operator": "DoesNotExist"} in term["matchExpressions"], where
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0"
        assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_every_kuberay_cluster_requires_rays_token_from_its_secret():
    for where, spec in ray_cluster_specs():
        # KubeRay puts RAY_AUTH_MODE=token and the Secret's token into every pod and a RayJob's submitter.
        assert spec["authOptions"] == {"mode": "token", "secretName": "animegan-ray-token"}, where
    for where, container in ray_pod_containers():
        # A value here would win over KubeRay's (it adds its own only where none is set).
        assert not [variable for variable in container.get("env", []) if variable["name"].startswith("RAY_AUTH")], where
    for job in ray_jobs():
        assert "RAY_AUTH" not in job["spec"]["runtimeEnvYAML"]


def test_rayjobs_join_the_long_lived_cluster_or_bring_an_equal_one():
    cluster = RAY_CLUSTER
    joining = [job for job in ray_jobs() if "clusterSelector" in job["spec"]]
    owning = [job for job in ray_jobs() if "rayClusterSpec" in job["spec"]]
    assert len(joining) == 2 and len(owning) == 1 and len(ray_jobs()) == 3
    for job in joining:
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    # The job's own cluster is the long-lived one's spec, field for field: the two cannot drift apart.
    assert owning[0]["spec"]["rayClusterSpec"] == cluster["spec"]


def test_own_cluster_rayjob_tears_its_cluster_down_and_retries_into_the_same_workdir():
    from animegan.cli import build_parser
    from animegan.lease import HEARTBEAT_SECONDS, STALE_SECONDS, WAIT_POLL_SECONDS

    [job] = [job for job in ray_jobs() if "rayClusterSpec" in job["spec"]]
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and 0 < spec["ttlSecondsAfterFinished"] <= 3600
    # A failed attempt (a lost head) runs again on a new cluster; a failed submitter pod is retried too.
    assert 1 <= spec["backoffLimit"] <= 3 and spec["submitterConfig"]["backoffLimit"] >= 1
    assert "pip" not in yaml.safe_load(spec["runtimeEnvYAML"])
    words = spec["entrypoint"].split()
    assert words[:2] == ["python", f"{IMAGE_APP_DIR}/jobs/train.py"]
    arguments = build_parser().parse_args(["train", *words[2:]])  # every flag is one `animegan train` knows
    # Every attempt resumes the same run: a fixed workdir in the bucket, never a per-attempt default.
    assert re.fullmatch(r"gs://[\w.-]+(/[\w.-]+)+", arguments.workdir) and "$" not in spec["entrypoint"]
    # It waits long enough for a lost driver's lease to go stale: the last heartbeat may be one interval
    # old already, clocks may differ by a minute, and the lease is looked at every WAIT_POLL_SECONDS.
    assert arguments.wait_for_workdir >= STALE_SECONDS + HEARTBEAT_SECONDS + 60 + WAIT_POLL_SECONDS
    assert f"--wait-for-workdir {arguments.wait_for_workdir:g}" in (KUBERAY / "rayjob-train-own-cluster.yaml"
                                                                   ).read_text()


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
    containers = ray_pod_containers()
    assert len(containers) == 6  # a head and two worker groups, in the RayCluster and in the RayJob's own
    for where, container in containers:
        for variable in container.get("env", []):
            if CREDENTIAL_NAME.search(variable["name"]):
                assert "value" not in variable and "secretKeyRef" in variable["valueFrom"], (where, variable)


def test_every_ray_pod_takes_the_wandb_key_from_the_kubernetes_secret():
    for where, container in ray_pod_containers():
        [key] = [variable for variable in container["env"] if variable["name"] == "WANDB_API_KEY"]
        # Optional: without the Secret the pods start, and W&B logs offline.
        assert key == {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {
            "name": "wandb", "key": "api-key", "optional": True}}}, where


def test_gcp_nodes_export_the_wandb_key_from_secret_manager_before_ray_starts(tmp_path):
    config = gcp_config()
    setup = config["setup_commands"]
    [fetch] = [command for command in setup if "fetch_secret.py wandb-api-key" in command]
    assert fetch == "python ~/animegan/cluster/fetch_secret.py wandb-api-key ~/.animegan/wandb-api-key"
    assert setup.index(fetch) < len(setup) - 1  # the export line comes after it
    # The setup's shell lines, as a node runs them (the fetches aside), then what `ray start` sees.
    shell_lines = [command for command in setup if "fetch_secret.py" not in command]
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

    secrets = {"wandb-api-key": b"k" * 40 + b"\n", "ray-auth-token": b"7" * 64 + b"\n"}

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


def test_gcp_nodes_start_ray_requiring_the_token_from_secret_manager(tmp_path):
    config = gcp_config()
    setup = config["setup_commands"]
    [fetch] = [command for command in setup if "fetch_secret.py" in command and "ray-auth-token" in command]
    # Where Ray looks for its token by default; required, unlike the W&B key.
    assert fetch == "python ~/animegan/cluster/fetch_secret.py --required ray-auth-token ~/.ray/auth_token"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GoogleEndpoints)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    environment = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "node"), "GCE_METADATA_HOST": address,
                   "SECRET_MANAGER_ENDPOINT": f"http://{address}"}
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / ".bashrc").write_text("")
    script = str(CLUSTER / "fetch_secret.py")
    try:
        # The node's setup, as it runs in the image (~/animegan/cluster/fetch_secret.py is this repository's).
        for command in setup:
            command = command.replace("python ~/animegan/cluster/fetch_secret.py", f"{sys.executable} {script}")
            subprocess.run(["bash", "-c", command], env=environment, check=True, timeout=60)
        token = tmp_path / "node" / ".ray" / "auth_token"
        assert token.read_bytes() == b"7" * 64 and stat.S_IMODE(token.stat().st_mode) == 0o600
        for start in [config["head_start_ray_commands"][-1], config["worker_start_ray_commands"][-1]]:
            sourced = start.split(";")[0]
            assert sourced == "source ~/.animegan_env"
            seen = subprocess.run(["bash", "-c", f"{sourced}; printf %s \"$RAY_AUTH_MODE\""], env=environment,
                                  capture_output=True, text=True, check=True).stdout
            assert seen == "token"

        # Without the secret, the node's setup stops (Ray would not start without a token).
        missing = subprocess.run([sys.executable, script, "--required", "no-such-token", str(tmp_path / "t")],
                                 env=environment, capture_output=True, text=True, timeout=60)
        assert missing.returncode == 1 and not (tmp_path / "t").exists()
        assert missing.stderr == ("fetch_secret: no-such-token not read from Secret Manager (HTTP 404 (no such "
                                  "secret)); it is required, so this node's setup stops here (README, \"Run on a "
                                  "cluster\", says how to create it)\n")
    finally:
        server.shutdown()


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
