"""Static checks of docker-compose.yml, the Dockerfile and their helpers (no container engine needed).

    python -m pytest tests/test_compose_static.py -q

What can be checked without running a container: the compose file against the Compose Specification's
JSON schema (as vendored by the check-jsonschema package); every service's command against the
``minutecast`` CLI (and its component's argument parser once that component exists); every environment
variable against the service's Settings class, and the Settings built from that environment against the
listeners, volumes and healthchecks of the file; pinned image tags; ports, volumes and secrets; the
Dockerfile's versions against pyproject.toml and the Maven poms; the Kafka entry point script's logic
(with a stand-in for Kafka's storage tool). Running the stack for real is the `compose` test (podman).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from pydantic_settings import BaseSettings

from infra import jars
from minutecast.cli import SUBCOMMANDS
from minutecast.settings import (
    InferenceSettings,
    InfraSettings,
    ProducerSettings,
    StreamSettings,
    TrainingSettings,
    WebSettings,
    env_names,
)

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
KAFKA_ENTRYPOINT = REPO / "docker" / "kafka-entrypoint.sh"
# Values for the secrets .env.example leaves empty (compose must refuse to start without them).
TEST_SECRETS = {"MINUTECAST_REDIS_PASSWORD": "redis-Test_pw1", "MINUTECAST_KAFKA_SASL_PASSWORD": "kafka-Test_pw1",
                "MINUTECAST_SERVE_TOKEN": "web-Test_token1"}

# Which Settings class each minutecast service reads. Every service on the minutecast image is listed.
SERVICE_SETTINGS: dict[str, type[BaseSettings]] = {
    "topics": InfraSettings,
    "producer": ProducerSettings,
    "producer-replay": ProducerSettings,
    "stream": StreamSettings,
    "infer": InferenceSettings,
    "train": TrainingSettings,
    "train-gpu": TrainingSettings,
    "web": WebSettings,
}
COMMAND_SERVICES = [s for s in SERVICE_SETTINGS if s != "topics"]  # `topics` runs python -c (see below)


# ---- compose interpolation (the Compose Specification's rules, enough for this file) ---------------------
class MissingVariable(Exception):
    pass


_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)


def interpolate_str(text: str, env: Mapping[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("plain"):
            return env.get(m.group("plain"), "")
        braced = _BRACED.match(m.group("braced"))
        if not braced:
            raise ValueError(f"unsupported interpolation ${{{m.group('braced')}}}")
        name, op, arg = braced.group("name"), braced.group("op"), braced.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?"):
            if value is None or (op == ":?" and not value):
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return arg if value is not None else ""
        return value or ""

    return _VAR.sub(one, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Compose interpolates values (not keys) everywhere, extension fields included."""
    if isinstance(node, str):
        return interpolate_str(node, env)
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    return node


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)


def variables(node: Any) -> dict[str, set[str]]:
    """Variable name -> the operators it is used with (``''`` for a bare reference)."""
    found: dict[str, set[str]] = {}
    for s in strings(node):
        for m in _VAR.finditer(s):
            if m.group("plain"):
                found.setdefault(m.group("plain"), set()).add("")
            elif m.group("braced") is not None:
                b = _BRACED.match(m.group("braced"))
                assert b, f"unsupported interpolation in {s!r}"
                found.setdefault(b.group("name"), set()).add(b.group("op") or "")
    return found


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        out[key.strip()] = value.strip()
    return out


# ---- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def dot_env(env_example: dict[str, str]) -> dict[str, str]:
    """A filled-in .env: .env.example plus the secrets."""
    return env_example | TEST_SECRETS


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], dot_env: dict[str, str]) -> dict[str, Any]:
    return interpolate(raw, dot_env)


@pytest.fixture(scope="module")
def compose_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """The file as `docker compose up` sees it with only the two secrets in .env."""
    return interpolate(raw, TEST_SECRETS)


def service_env(compose: dict[str, Any], name: str) -> dict[str, str]:
    env = compose["services"][name].get("environment") or {}
    assert isinstance(env, dict), f"{name}: write environment as a mapping"
    return {k: "" if v is None else str(v) for k, v in env.items()}


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_compose_test_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def minutecast_image(compose: dict[str, Any]) -> str:
    return str(compose["services"]["stream"]["image"]).split(":")[0]


# ---- the Compose Specification ------------------------------------------------------------------------
def compose_validator() -> Any:
    import jsonschema
    from check_jsonschema.builtin_schemas import get_builtin_schema

    schema = get_builtin_schema("vendor.compose-spec")  # the Compose Specification's compose-spec.json
    # Its "$schema" names draft-07 without the trailing '#', which validator_for() would not recognise.
    draft = schema.get("$schema", "")
    cls = jsonschema.Draft7Validator if "draft-07" in draft else jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_file_is_valid_against_the_compose_specification(raw: dict[str, Any],
                                                                  compose: dict[str, Any]) -> None:
    validator = compose_validator()
    for doc in (raw, compose):
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:10])
    # The validator is live: a misspelt key and a wrong type are caught.
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["redis"]["restrat"] = "always"
    broken["services"]["kafka"]["healthcheck"] = ["CMD", "true"]
    broken["services"]["stream"]["depends_on"] = 5
    assert len(list(validator.iter_errors(broken))) >= 3


def test_every_minutecast_service_is_mapped_to_its_settings(compose: dict[str, Any]) -> None:
    image = minutecast_image(compose)
    on_image = {n for n, s in compose["services"].items() if str(s.get("image", "")).startswith(image + ":")}
    assert on_image == set(SERVICE_SETTINGS)
    for name in on_image:
        assert compose["services"][name]["build"]["context"] == "."
    assert (REPO / compose["services"]["stream"]["build"]["dockerfile"]).is_file()


# ---- commands -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", COMMAND_SERVICES)
def test_command_is_a_minutecast_subcommand_its_parser_accepts(compose: dict[str, Any], service: str) -> None:
    svc = compose["services"][service]
    assert "entrypoint" not in svc, "the image's entry point runs `minutecast <command>`"
    command = svc["command"]
    assert isinstance(command, list) and command, "exec form, so no shell mangles arguments"
    sub, *args = command
    assert sub in SUBCOMMANDS, f"{service}: `minutecast {sub}` is not a subcommand ({sorted(SUBCOMMANDS)})"
    module_name = SUBCOMMANDS[sub][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            pytest.skip(f"{module_name} is not written yet: its parser cannot be checked")
        raise
    parser = argparse.ArgumentParser(prog=f"minutecast {sub}", exit_on_error=False)
    module.add_arguments(parser)
    try:
        parser.parse_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        pytest.fail(f"{service}: `minutecast {' '.join(command)}` is refused by {module_name}: {exc}")


def test_image_entrypoint_runs_minutecast_after_waiting_for_services() -> None:
    ep = load_module(REPO / "docker" / "entrypoint.py")
    # It reads the one subcommand list; the long-running ones of the compose file wait for the services.
    assert ep.SUBCOMMANDS is SUBCOMMANDS
    assert all(ep.needs_services([c]) for c in ("produce", "stream", "infer", "train"))
    assert ep.subcommand(["-v", "stream", "--web-port", "0"]) == "stream"
    assert ep.needs_services(["infer"]) and ep.needs_services(["-v", "train", "--every", "1h"])
    assert not ep.needs_services(["infer", "--help"])
    assert not ep.needs_services(["--help"]) and not ep.needs_services([])
    assert not ep.needs_services(["report"]) and not ep.needs_services(["infra", "fetch"])
    assert '"/opt/minutecast/entrypoint.py"' in dockerfile_text()


def test_image_entrypoint_execs_minutecast_or_exits_1_when_services_never_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from minutecast.errors import ServiceUnavailable

    ep = load_module(REPO / "docker" / "entrypoint.py")
    execs: list[tuple[str, list[str]]] = []
    waits: list[float] = []
    monkeypatch.setattr(ep.os, "execvp", lambda file, argv: execs.append((file, list(argv))))
    monkeypatch.setattr(ep, "wait_for_services", lambda timeout_s=ep.WAIT_S: waits.append(timeout_s))
    assert ep.main(["stream"]) == 0 and execs[-1] == ("minutecast", ["minutecast", "stream"]) and waits
    waits.clear()
    assert ep.main(["--help"]) == 0 and execs[-1] == ("minutecast", ["minutecast", "--help"]) and not waits

    def never(timeout_s: float = 0.0) -> None:
        raise ServiceUnavailable("Kafka at kafka:9092 did not answer within 300 s")

    monkeypatch.setattr(ep, "wait_for_services", never)
    execs.clear()
    assert ep.main(["infer"]) == 1 and not execs  # the restart policy tries again


def test_topics_init_is_the_infra_topics_command(compose: dict[str, Any]) -> None:
    """The one-shot init runs `minutecast infra topics` once (its behaviour is tested in test_infra.py)."""
    svc = compose["services"]["topics"]
    assert svc["command"] == ["infra", "topics"] and svc["restart"] == "no"
    assert "entrypoint" not in svc  # the image's entry point waits for Kafka first


@pytest.fixture
def settings_for(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Build a service's Settings from exactly the environment compose gives it."""

    def build(service: str) -> Any:
        for key in list(os.environ):
            if key.startswith("MINUTECAST_"):
                monkeypatch.delenv(key)
        for key, value in service_env(compose, service).items():
            monkeypatch.setenv(key, value)
        return SERVICE_SETTINGS[service]()

    return build


@pytest.mark.parametrize("service", list(SERVICE_SETTINGS))
def test_environment_is_the_services_settings(compose: dict[str, Any], settings_for: Any, service: str) -> None:
    cls = SERVICE_SETTINGS[service]
    env = service_env(compose, service)
    unknown = set(env) - env_names(cls)
    assert not unknown, f"{service}: not fields of {cls.__name__}: {sorted(unknown)}"
    required = {name for name, f in cls.model_fields.items() if f.is_required()}
    assert not required - {k.removeprefix("MINUTECAST_").lower() for k in env}
    # Needed in a container although they have defaults: the defaults point at 127.0.0.1 and a local file.
    for key in ("MINUTECAST_KAFKA_BOOTSTRAP", "MINUTECAST_REDIS_HOST", "MINUTECAST_REDIS_PASSWORD",
                "MINUTECAST_KAFKA_SECURITY_PROTOCOL", "MINUTECAST_KAFKA_SASL_USERNAME",
                "MINUTECAST_KAFKA_SASL_PASSWORD", "MINUTECAST_NAMESPACE", "MINUTECAST_HOME"):
        assert env.get(key), f"{service}: {key} must be set"
    s = settings_for(service)  # pydantic validates types and the SASL/password rules
    assert s.kafka.security_protocol.startswith("SASL") and s.kafka.sasl_password is not None
    assert s.redis.password is not None
    assert s.redis.password.get_secret_value() == TEST_SECRETS["MINUTECAST_REDIS_PASSWORD"]
    assert s.home == PurePosixPath("/var/lib/minutecast")


@pytest.mark.parametrize("service", ["stream", "train"])
def test_ticker_allowlist_is_on_by_default_in_compose(compose_defaults: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                                     service: str) -> None:
    from minutecast.universe import allowlist, sp500

    for key in list(os.environ):
        if key.startswith("MINUTECAST_"):
            monkeypatch.delenv(key)
    for key, value in service_env(compose_defaults, service).items():
        monkeypatch.setenv(key, value)
    s = SERVICE_SETTINGS[service]()
    allowed = allowlist(s)
    assert s.ticker_allowlist and allowed is not None
    assert allowed == frozenset([*sp500(), s.market_ticker]) and "AAPL" in allowed and "SPY" in allowed
    assert "ZZZT" not in allowed  # a synthetic ticker is dead-lettered there (unknown_ticker)


def listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def test_clients_match_the_brokers_listeners_and_redis(compose: dict[str, Any], settings_for: Any) -> None:
    kafka = service_env(compose, "kafka")
    advertised = listeners(kafka["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(kafka["KAFKA_LISTENERS"])
    protocols = dict(p.split(":") for p in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    mechanisms = kafka["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
    assert set(bound) <= set(protocols) and set(advertised) <= set(bound)
    for name, protocol in protocols.items():  # every SASL listener can authenticate SCRAM users
        if protocol.startswith("SASL"):
            for mech in mechanisms:
                key = f"KAFKA_LISTENER_NAME_{name}_{mech.replace('-', '___')}_SASL_JAAS_CONFIG"
                assert "ScramLoginModule required" in kafka.get(key, ""), key
    # Replication and the controller stay on loopback inside the broker's container.
    assert bound[kafka["KAFKA_INTER_BROKER_LISTENER_NAME"]][0] == "127.0.0.1"
    assert bound[kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]][0] == "127.0.0.1"
    # The SCRAM user created at format time is the one the services log in as.
    raw_doc = yaml.safe_load(COMPOSE.read_text())
    raw_kafka, raw_common = raw_doc["services"]["kafka"]["environment"], raw_doc["x-minutecast-env"]
    for scram, client in (("SCRAM_USERNAME", "MINUTECAST_KAFKA_SASL_USERNAME"),
                          ("SCRAM_PASSWORD", "MINUTECAST_KAFKA_SASL_PASSWORD")):
        assert variables(raw_kafka[scram]).keys() == variables(raw_common[client]).keys() == {client}
    assert kafka["SCRAM_PASSWORD"] == TEST_SECRETS["MINUTECAST_KAFKA_SASL_PASSWORD"]

    for service in SERVICE_SETTINGS:
        s = settings_for(service)
        host, _, port = s.kafka.bootstrap.partition(":")
        match = [n for n, (h, p) in advertised.items() if (h, p) == (host, int(port))]
        assert match, f"{service}: {s.kafka.bootstrap} is no advertised listener of kafka"
        assert host in compose["services"] and protocols[match[0]] == s.kafka.security_protocol
        assert s.kafka.sasl_mechanism in mechanisms
        assert s.kafka.sasl_username == kafka["SCRAM_USERNAME"]
        assert s.redis.host == "redis" and s.redis.port == 6379

    # The host-facing listener is advertised at the port published on the host.
    ports = compose["services"]["kafka"]["ports"]
    ip, host_port, container_port = ports[0].split(":")
    assert advertised["EXTERNAL"] == ("127.0.0.1", int(host_port)) and bound["EXTERNAL"][1] == int(container_port)


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
        for m in _VAR.finditer(s):
            b = _BRACED.match(m.group("braced") or "")
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
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
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
    assert set(seen.values()) == {"kafka", "redis", "web"}
    # Not the local services' ports (`minutecast infra up`, `minutecast serve`): both stacks can run side by side.
    assert not {9092, 9093, 6379, WebSettings.model_fields["serve_port"].default} & set(seen)


def named_mounts(svc: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read_only) for short-syntax volumes."""
    out = {}
    for spec in svc.get("volumes", []):
        assert isinstance(spec, str), "short volume syntax expected"
        parts = spec.split(":")
        out[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
    return out


def is_named(source: str) -> bool:
    return not source.startswith((".", "/", "~", "$"))


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


# ---- Dockerfile -----------------------------------------------------------------------------------------
def dockerfile_text() -> str:
    return DOCKERFILE.read_text()


def pyproject_deps() -> list[str]:
    return list(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])


def stages(text: str) -> list[str]:
    return re.split(r"(?m)^FROM ", text)[1:]


def test_dockerfile_versions_match_pyproject_and_poms() -> None:
    text = dockerfile_text()
    base = re.search(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", text)
    assert base, "ARG PYTHON_IMAGE=python:X.Y-... before the first FROM"
    m = re.match(r"python:(\d+\.\d+)(?:\.\d+)?-slim-bookworm$", base.group(1))
    assert m, base.group(1)
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert Version(m.group(1)) in SpecifierSet(requires), f"python {m.group(1)} vs requires-python {requires}"
    froms = re.findall(r"(?m)^FROM (\S+)", text)
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms), "every stage on the same Python base"
    # Versions are read from the poms at build time, never written twice.
    assert "infra/maven/spark-pom.xml" in text and "<spark.version>" in text
    for version in (jars.spark_version(), jars.kafka_version()):
        assert version not in text, f"{version} is hard-coded in the Dockerfile: read it from the pom"
    # horovod as infra/bootstrap.sh builds it.
    bootstrap = (REPO / "infra" / "bootstrap.sh").read_text()
    horovod = re.search(r'"horovod==([\d.]+)"', bootstrap)
    assert horovod and f'"horovod=={horovod.group(1)}"' in text
    for flag in ("HOROVOD_WITH_TENSORFLOW=1", "HOROVOD_WITH_GLOO=1", "HOROVOD_WITHOUT_MPI=1",
                 "HOROVOD_WITHOUT_PYTORCH=1", "HOROVOD_WITHOUT_MXNET=1", "--no-build-isolation"):
        assert flag in text and flag in bootstrap, flag
    assert re.search(r"apt-get install[^\n]*\bcmake\b", text), "horovod builds with Debian's cmake"


def test_dockerfile_final_stage_is_small_nonroot_with_java_and_jars() -> None:
    text = dockerfile_text()
    *builders, final = stages(text)
    assert [b.split()[2] for b in builders] == ["jars", "web", "build"]
    assert "openjdk-17-jre-headless" in final and "--no-install-recommends" in final
    for tool in ("g++", "cmake", "maven", "npm"):
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", final), f"{tool} in the final image"
    users = re.findall(r"(?m)^USER (\S+)", final)
    assert users and users[-1] not in ("root", "0"), "the final image runs as a non-root user"
    assert "COPY --from=build /opt/venv /opt/venv" in final
    cache = re.search(r"MINUTECAST_CACHE=(\S+)", final)
    assert cache and f"COPY --from=jars /cache/jars {cache.group(1)}/jars" in final
    assert re.search(r"MINUTECAST_HOME=/var/lib/minutecast\b", final)
    assert "/cache/jars/spark-kafka-$version" in builders[0]


def test_baked_jar_layout_is_what_infra_jars_finds(tmp_path: Path) -> None:
    """The Dockerfile writes the connector to $MINUTECAST_CACHE/jars/spark-kafka-<pom version>/:
    infra.jars must find it there without running Maven."""
    libs = tmp_path / "jars" / f"spark-kafka-{jars.spark_version()}"
    libs.mkdir(parents=True)
    connector = libs / f"spark-sql-kafka-0-10_2.13-{jars.spark_version()}.jar"
    connector.write_bytes(b"PK")
    found = jars.spark_kafka_jars(tmp_path)
    assert connector in found


def test_requirements_helper_installs_exactly_pyprojects_pins() -> None:
    req = load_module(REPO / "docker" / "requirements.py")
    deps = pyproject_deps()
    assert req.requirements(REPO / "pyproject.toml") == deps
    gpu = req.requirements(REPO / "pyproject.toml", "tensorflow[and-cuda]==2.15.1")
    assert "tensorflow[and-cuda]==2.15.1" in gpu and not any(d.startswith("tensorflow-cpu") for d in gpu)
    assert len(gpu) == len(deps)
    assert req.requirement_name("tensorflow[and-cuda]==2.15.1") == "tensorflow"
    assert req.requirement_name("Faust_Streaming==0.15.3") == "faust-streaming"


def test_dockerignore_keeps_secrets_out_and_the_sources_in() -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert ".env" in patterns and ".git" in patterns
    copied = re.findall(r"(?m)^COPY (?!--from)(?:--\S+ )*(\S+) ", dockerfile_text())
    assert copied
    for src in copied:
        top = src.strip("/").split("/")[0]
        assert top not in patterns and src.strip("/") not in patterns, f"{src} is copied but ignored"
        assert (REPO / src).exists(), src


# ---- the Kafka entry point (docker/kafka-entrypoint.sh) ---------------------------------------------------
def run_kafka_entrypoint(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    return subprocess.run(["bash", str(KAFKA_ENTRYPOINT), *args], env=clean | dict(env),
                          capture_output=True, text=True, timeout=60, check=False)


def test_kafka_entrypoint_renders_the_properties_the_image_would(compose: dict[str, Any]) -> None:
    env = service_env(compose, "kafka")
    out = run_kafka_entrypoint(env, "--print-config")
    assert out.returncode == 0, out.stderr
    props = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert props["process.roles"] == "broker,controller" and props["node.id"] == "1"
    assert props["listeners"] == env["KAFKA_LISTENERS"]
    assert props["advertised.listeners"] == env["KAFKA_ADVERTISED_LISTENERS"]
    assert props["log.dirs"] == "/var/lib/kafka/data"
    assert props["listener.name.client.scram-sha-512.sasl.jaas.config"].startswith(
        "org.apache.kafka.common.security.scram.ScramLoginModule required")
    assert props["offsets.topic.replication.factor"] == "1"
    assert "heap.opts" not in props and not any("password" in k for k in props)  # JVM options, secrets


@pytest.fixture
def fake_storage_tool(tmp_path: Path) -> tuple[Path, Path]:
    """Stands in for kafka-storage.sh: records its arguments and the config it was given."""
    calls = tmp_path / "calls"
    tool = tmp_path / "kafka-storage.sh"
    tool.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$@" > {calls}\n'
        f'cp "$5" {tmp_path}/format.properties\n'
        'echo "Bootstrap metadata: UserScramCredentialRecord(name=x, salt=[1], storedKey=[2])"\n'
        'echo "Formatting metadata directory with metadata.version 4.3-IV0."\n'
    )
    tool.chmod(0o755)
    return tool, calls


def test_kafka_entrypoint_formats_empty_storage_with_the_scram_user(
        compose: dict[str, Any], tmp_path: Path, fake_storage_tool: tuple[Path, Path]) -> None:
    tool, calls = fake_storage_tool
    data = tmp_path / "data"
    data.mkdir()
    env = service_env(compose, "kafka") | {"KAFKA_LOG_DIRS": str(data), "STORAGE_TOOL": str(tool)}
    out = run_kafka_entrypoint(env, "bash", "-c", 'echo "started with SCRAM_PASSWORD=${SCRAM_PASSWORD-unset}"')
    assert out.returncode == 0, out.stderr
    args = calls.read_text().splitlines()
    assert args[:2] == ["format", "--cluster-id"] and args[2] == env["CLUSTER_ID"]
    user, password = env["SCRAM_USERNAME"], TEST_SECRETS["MINUTECAST_KAFKA_SASL_PASSWORD"]
    assert args[-2:] == ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
    assert f"log.dirs={data}" in (tmp_path / "format.properties").read_text()
    assert "started with SCRAM_PASSWORD=unset" in out.stdout  # the broker gets no copy of the password
    assert "UserScramCredentialRecord" not in out.stdout + out.stderr  # credential hashes stay out of logs
    assert password not in out.stdout + out.stderr

    # Formatted already (a restart): no second format, straight to the image's start-up.
    calls.unlink()
    (data / "meta.properties").write_text("cluster.id=x\n")
    out = run_kafka_entrypoint(env, "echo", "started")
    assert out.returncode == 0 and out.stdout.strip().endswith("started") and not calls.exists()


@pytest.mark.parametrize("password", ["", "has,comma", "has]bracket", "has space", 'quo"te'])
def test_kafka_entrypoint_refuses_passwords_the_storage_tool_would_misparse(
        compose: dict[str, Any], tmp_path: Path, fake_storage_tool: tuple[Path, Path], password: str) -> None:
    tool, calls = fake_storage_tool
    env = service_env(compose, "kafka") | {"KAFKA_LOG_DIRS": str(tmp_path), "STORAGE_TOOL": str(tool),
                                           "SCRAM_PASSWORD": password}
    out = run_kafka_entrypoint(env, "echo", "started")
    assert out.returncode != 0 and "started" not in out.stdout and not calls.exists()


def test_helpers_are_lint_clean_python_and_bash() -> None:
    out = subprocess.run(["bash", "-n", str(KAFKA_ENTRYPOINT)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    for path in (REPO / "docker").glob("*.py"):
        compile(path.read_text(), str(path), "exec")
    assert sys.version_info[:2] == (3, 11)
