"""Static checks of docker-compose.yml's services (no container engine needed): the file against the Compose
Specification's JSON schema (as vendored by the check-jsonschema package); every service's command against
the ``minutecast`` CLI and its component's argument parser; every environment variable against the
service's Settings class, and the Settings built from that environment against the broker's listeners and
Redis. The file's other parts: ``test_compose_file.py``; the image: ``test_compose_image.py``; the Kafka entry
point: ``test_compose_kafka.py``. Running the stack for real is the ``compose`` test (podman).

    python -m pytest tests/test_compose_services.py -q
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import PurePosixPath
from typing import Any

import jsonschema
import pytest
from check_jsonschema.builtin_schemas import get_builtin_schema

from minutecast.cli import SUBCOMMANDS
from minutecast.settings import env_names
from minutecast.universe import allowlist, sp500
from tests.support.compose import (
    COMMAND_SERVICES,
    REPO,
    SERVICE_SETTINGS,
    TEST_SECRETS,
    clear_minutecast_env,
    listeners,
    load_raw,
    minutecast_image,
    service_env,
    variables,
)


# ---- the Compose Specification ------------------------------------------------------------------------
def compose_validator() -> Any:
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
    broken = load_raw()
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


def test_topics_init_is_the_infra_topics_command(compose: dict[str, Any]) -> None:
    """The one-shot init runs `minutecast infra topics` once (its behaviour is tested in test_infra.py)."""
    svc = compose["services"]["topics"]
    assert svc["command"] == ["infra", "topics"] and svc["restart"] == "no"
    assert "entrypoint" not in svc  # the image's entry point waits for Kafka first


# ---- environment and Settings ---------------------------------------------------------------------------
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
    clear_minutecast_env(monkeypatch)
    for key, value in service_env(compose_defaults, service).items():
        monkeypatch.setenv(key, value)
    s = SERVICE_SETTINGS[service]()
    allowed = allowlist(s)
    assert s.ticker_allowlist and allowed is not None
    assert allowed == frozenset([*sp500(), s.market_ticker]) and "AAPL" in allowed and "SPY" in allowed
    assert "ZZZT" not in allowed  # a synthetic ticker is dead-lettered there (unknown_ticker)


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
    raw_doc = load_raw()
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
