"""Static checks of docker-compose.yml's secrets, ``.env.example``, images, ports, volumes, healthchecks,
dependencies, restart policies and profiles (no container engine needed). The compose engine (interpolation,
fixtures) is ``tests/support/compose.py``.

    python -m pytest tests/test_compose_file.py -q
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from infra import jars
from minutecast.settings import WebSettings
from minutecast.topics import replication
from tests.support.compose import (
    BRACED,
    COMMAND_SERVICES,
    ENV_EXAMPLE,
    REPO,
    TEST_SECRETS,
    VAR,
    MissingVariable,
    dockerfile_text,
    ha_env,
    interpolate,
    is_named,
    listeners,
    named_mounts,
    pyproject,
    pyproject_deps,
    read_env_file,
    service_env,
    strings,
    variables,
)


# ---- secrets, .env.example -------------------------------------------------------------------------------
def test_compose_fails_fast_without_each_secret(raw: dict[str, Any], env_example: dict[str, str]) -> None:
    with pytest.raises(MissingVariable):
        interpolate(raw, env_example)  # copied but not filled in
    for secret in TEST_SECRETS:
        env = {k: v for k, v in TEST_SECRETS.items() if k != secret}
        with pytest.raises(MissingVariable, match=secret):
            interpolate(raw, env)
    interpolate(raw, TEST_SECRETS)  # the secrets are all it needs


def test_secrets_only_come_from_required_variables(raw: dict[str, Any], env_example: dict[str, str]) -> None:
    secret_key = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH", re.I)
    required = re.compile(r"^\$\{(?P<name>[A-Z0-9_]+):\?[^}]+\}$")
    used = set()
    for name, svc in raw["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if secret_key.search(key):
                m = required.match(str(value))
                assert m, f"{name}.{key} must be ${{VAR:?message}}, not {value!r}"
                used.add(m.group("name"))
        command = svc.get("command") or []
        for flag, value in zip(command, command[1:], strict=False):
            if isinstance(flag, str) and flag.startswith("-") and (secret_key.search(flag) or flag == "--requirepass"):
                m = required.match(str(value))
                assert m, f"{name}: the argument of {flag} must be ${{VAR:?message}}"
                used.add(m.group("name"))
    assert used == set(TEST_SECRETS)
    for name in used:  # documented, and no secret committed
        assert name in env_example and env_example[name] == "", name
    assert {n for n, ops in variables(raw).items() if ":?" in ops} == set(TEST_SECRETS)


def test_env_example_documents_every_variable_with_the_files_defaults(raw: dict[str, Any],
                                                                       env_example: dict[str, str]) -> None:
    refs = variables(raw)
    assert set(refs) == set(env_example), set(refs) ^ set(env_example)
    defaults: dict[str, set[str]] = {}
    for s in strings(raw):
        for m in VAR.finditer(s):
            b = BRACED.match(m.group("braced") or "")
            if b and b.group("op") == ":-":
                defaults.setdefault(b.group("name"), set()).add(b.group("arg"))
    for name, values in defaults.items():
        assert values == {env_example[name]}, f"{name}: compose default {values} vs .env.example"


# ---- images, ports, volumes, health ---------------------------------------------------------------------
def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc.get("image")
        assert image, f"{name}: no image"
        repo, sep, tag = image.rpartition(":")
        assert sep and "/" not in tag and tag and tag != "latest", f"{name}: {image} is not pinned"
        assert re.match(r"^\d+\.\d+\.\d+", tag), f"{name}: pin a full version, not {tag}"
    services = compose["services"]
    assert services["kafka"]["image"] == f"apache/kafka:{jars.kafka_version()}"  # = the local broker
    assert services["redis"]["image"].startswith("redis:7.")
    version = pyproject()["project"]["version"]
    assert services["stream"]["image"] == f"minutecast:{version}"
    assert services["train-gpu"]["image"] == f"minutecast:{version}-gpu"


def test_ports_are_unique_loopback_and_scaling_is_possible(compose_defaults: dict[str, Any]) -> None:
    seen: dict[int, str] = {}
    for name, svc in compose_defaults["services"].items():
        assert "container_name" not in svc, f"{name}: container_name prevents --scale"
        for spec in svc.get("ports", []):
            assert isinstance(spec, str) and spec.count(":") == 2, f"{name}: write ports as IP:HOST:CONTAINER"
            ip, host, _ = spec.split(":")
            assert ip == "127.0.0.1", f"{name}: publish on loopback only, not {ip}"
            assert int(host) not in seen, f"{name} and {seen.get(int(host))} both bind host port {host}"
            seen[int(host)] = name
    assert set(seen.values()) == {"kafka", "kafka-2", "kafka-3", "redis", "web"}
    # Not the local services' ports (`minutecast infra up`, `minutecast serve`): both stacks can run side by side.
    assert not {9092, 9093, 6379, WebSettings.model_fields["serve_port"].default} & set(seen)


def test_volumes_are_declared_used_and_where_settings_write(compose: dict[str, Any], settings_for: Any) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, svc in compose["services"].items():
        for _target, (source, _ro) in named_mounts(svc).items():
            if is_named(source):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
            elif source.startswith("./"):
                assert (REPO / source).exists() or name == "producer-replay", f"{name}: {source} missing"
    assert used == declared, f"declared but unused: {declared - used}"

    def mounted(service: str, path: Path) -> tuple[str, bool]:
        for target, (source, ro) in named_mounts(compose["services"][service]).items():
            if is_named(source) and PurePosixPath(path).is_relative_to(target):
                return source, ro
        pytest.fail(f"{service}: {path} is on no named volume (lost with the container)")

    infer, train = settings_for("infer"), settings_for("train")
    assert mounted("infer", infer.checkpoint) == ("spark-checkpoints", False)
    assert mounted("infer", infer.models_dir) == ("models", True)  # serving reads the registry only
    assert mounted("train", train.models_dir) == ("models", False)
    assert mounted("train", train.reports)[0] == "reports"
    assert named_mounts(compose["services"]["train-gpu"]) == named_mounts(compose["services"]["train"])
    assert "kafka-data" in {s for s, _ in named_mounts(compose["services"]["kafka"]).values()}
    assert named_mounts(compose["services"]["kafka"])["/var/lib/kafka/data"][0] == "kafka-data"
    assert service_env(compose, "kafka")["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert named_mounts(compose["services"]["redis"])["/data"][0] == "redis-data"
    redis_cmd = compose["services"]["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"  # AOF on its volume


def test_healthchecks_dependencies_and_restart_policies(compose: dict[str, Any], settings_for: Any) -> None:
    services = compose["services"]
    for name in ("kafka", "redis"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    for name, svc in services.items():
        assert svc.get("restart") in ("no", "always", "on-failure", "unless-stopped"), f"{name}: restart"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            condition = cond["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy: no healthcheck"
            elif condition == "service_completed_successfully":
                assert services[dep]["restart"] == "no", f"{dep} is waited for to finish but restarts"
            if dep in ("kafka", "redis") or condition == "service_completed_successfully":
                assert not services[dep].get("profiles"), f"{name} depends on an optional service {dep}"
    for name in COMMAND_SERVICES:  # long-running, started after the topics exist
        assert services[name]["restart"] in ("unless-stopped", "always", "on-failure")
        assert set(services[name]["depends_on"]) == {"kafka", "redis", "topics"}
        assert services[name]["init"] is True
    # The healthchecks probe the metrics port the service's settings open.
    for name in ("stream", "infer"):
        port = settings_for(name).metrics_port
        assert f"http://127.0.0.1:{port}/metrics" in " ".join(services[name]["healthcheck"]["test"])


def test_web_service_serves_the_dashboard_on_loopback_with_a_token(compose: dict[str, Any], settings_for: Any) -> None:
    web = compose["services"]["web"]
    assert web["command"] == ["serve"]
    s = settings_for("web")
    assert not s.loopback and s.serve_token.get_secret_value() == TEST_SECRETS["MINUTECAST_SERVE_TOKEN"]
    assert web["ports"] == [f"127.0.0.1:18080:{s.serve_port}"]
    assert f"http://127.0.0.1:{s.serve_port}/healthz" in " ".join(web["healthcheck"]["test"])
    mounts = named_mounts(web)
    assert all(ro for _, ro in mounts.values()), "the web service only reads"
    assert mounts[str(PurePosixPath(s.reports))][0] == "reports" and mounts[str(s.models_dir)][0] == "models"
    # The image vendors the chart library at build time (the page loads nothing from a CDN).
    text = dockerfile_text()
    assert "web/vendor.sh" in text and "COPY --from=web /src/web/static/vendor/" in text


def test_profiles_replay_and_gpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    default = {n for n, s in services.items() if not s.get("profiles")}
    assert default == {"kafka", "redis", "topics", "producer", "stream", "infer", "train", "web"}
    assert services["producer"]["command"][:3] == ["produce", "--source", "yfinance"]
    assert "--live" in services["producer"]["command"]

    replay = services["producer-replay"]
    assert replay["profiles"] == ["replay"]
    command = replay["command"]
    assert command[:3] == ["produce", "--source", "replay"]
    path = command[command.index("--path") + 1]
    assert named_mounts(replay)[path][1], "the replayed directory is mounted read-only"

    gpu = services["train-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["command"] == services["train"]["command"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    cpu_tf = next(d for d in pyproject_deps() if d.startswith("tensorflow-cpu=="))
    gpu_tf = gpu["build"]["args"]["TF_PACKAGE"]
    assert gpu_tf.split("==")[1] == cpu_tf.split("==")[1], "the GPU image runs the same TensorFlow"
    assert services["train"]["command"][:2] == ["train", "--every"]


def test_ha_profile_is_a_three_node_quorum_with_every_topic_on_three_brokers(raw: dict[str, Any]) -> None:
    env = ha_env(ENV_EXAMPLE) | TEST_SECRETS
    compose = interpolate(raw, read_env_file(ENV_EXAMPLE) | env)
    nodes = {n: service_env(compose, n) for n in ("kafka", "kafka-2", "kafka-3")}
    assert [compose["services"][n].get("profiles") for n in nodes] == [None, ["ha"], ["ha"]]
    voters = dict(v.split("@") for v in nodes["kafka"]["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
    assert len(voters) == 3
    for name, e in nodes.items():
        host = compose["services"][name]["hostname"]
        assert e["KAFKA_CONTROLLER_QUORUM_VOTERS"] == nodes["kafka"]["KAFKA_CONTROLLER_QUORUM_VOTERS"]
        assert e["CLUSTER_ID"] == nodes["kafka"]["CLUSTER_ID"] and e["KAFKA_PROCESS_ROLES"] == "broker,controller"
        bound, advertised = listeners(e["KAFKA_LISTENERS"]), listeners(e["KAFKA_ADVERTISED_LISTENERS"])
        assert voters[e["KAFKA_NODE_ID"]] == f"{host}:{bound['CONTROLLER'][1]}", f"{name}: its voter entry"
        assert bound["BROKER"][0] == host and advertised["BROKER"] == (host, bound["BROKER"][1])
        assert advertised["CLIENT"] == (host, 9092)
        assert host in compose["services"][name]["healthcheck"]["test"][1]
        # Internal topics like ours: three replicas, two in sync, no unclean election.
        assert (e["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"], e["KAFKA_DEFAULT_REPLICATION_FACTOR"],
                e["KAFKA_MIN_INSYNC_REPLICAS"], e["KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE"]) == ("3", "3", "2", "false")
    hosts = {compose["services"][n]["hostname"] for n in nodes}
    ports = {p for n in nodes for p in compose["services"][n]["ports"]}
    assert len(ports) == 3, "each node publishes its own EXTERNAL port"
    client = service_env(compose, "stream")
    assert {hp.split(":")[0] for hp in client["MINUTECAST_KAFKA_BOOTSTRAP"].split(",")} == hosts
    assert client["MINUTECAST_KAFKA_MIN_BROKERS"] == "3"  # topics wait for all three: RF 3 (topics.replication)
    assert replication(int(client["MINUTECAST_KAFKA_MIN_BROKERS"])) == (3, 2)
    # The default (single node) keeps replication and the quorum on loopback inside the container.
    single = service_env(interpolate(raw, read_env_file(ENV_EXAMPLE) | TEST_SECRETS), "kafka")
    assert listeners(single["KAFKA_LISTENERS"])["CONTROLLER"][0] == "127.0.0.1"
    assert single["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@127.0.0.1:9093"
