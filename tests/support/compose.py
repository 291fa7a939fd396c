"""docker-compose.yml as Compose reads it, for the static compose tests (tests/test_compose_*.py).

The Compose Specification's interpolation rules (enough for this file), the file's ``.env.example``, which
Settings class each minutecast service reads, helpers over services, volumes and the Dockerfile, and the
fixtures (``raw``, ``env_example``, ``dot_env``, ``compose``, ``compose_defaults``, ``settings_for``), loaded
as a pytest plugin by ``tests/conftest.py``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from minutecast.settings import (
    InferenceSettings,
    InfraSettings,
    ProducerSettings,
    StreamSettings,
    TrainingSettings,
    WebSettings,
)

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
KAFKA_ENTRYPOINT = REPO / "docker" / "kafka-entrypoint.sh"
PYPROJECT = REPO / "pyproject.toml"
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
COMMAND_SERVICES = [s for s in SERVICE_SETTINGS if s != "topics"]  # `topics` runs `infra topics`


# ---- compose interpolation (the Compose Specification's rules, enough for this file) ---------------------
class MissingVariable(Exception):
    pass


VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)


def interpolate_str(text: str, env: Mapping[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("plain"):
            return env.get(m.group("plain"), "")
        braced = BRACED.match(m.group("braced"))
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

    return VAR.sub(one, text)


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
        for m in VAR.finditer(s):
            if m.group("plain"):
                found.setdefault(m.group("plain"), set()).add("")
            elif m.group("braced") is not None:
                b = BRACED.match(m.group("braced"))
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


def ha_env(path: Path) -> dict[str, str]:
    """The ha block of .env.example: every ``KEY=VALUE`` followed by a ``#   HA: value`` line, with that
    value, and COMPOSE_PROFILES=ha (commented out there)."""
    out = {}
    lines = path.read_text().splitlines()
    for prev, line in zip(lines, lines[1:], strict=False):
        if line.strip().startswith("#   HA:") and "=" in prev and not prev.startswith("#"):
            out[prev.partition("=")[0].strip()] = line.split("HA:", 1)[1].strip()
    assert any(ln.strip() == "# COMPOSE_PROFILES=ha" for ln in lines), "the ha block names its profile"
    return out | {"COMPOSE_PROFILES": "ha"}


# ---- the file, its services and the image -----------------------------------------------------------------
def load_raw() -> dict[str, Any]:
    """docker-compose.yml as written (not interpolated)."""
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def service_env(compose: dict[str, Any], name: str) -> dict[str, str]:
    env = compose["services"][name].get("environment") or {}
    assert isinstance(env, dict), f"{name}: write environment as a mapping"
    return {k: "" if v is None else str(v) for k, v in env.items()}


def clear_minutecast_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MINUTECAST_"):
            monkeypatch.delenv(key)


def load_module(path: Path) -> ModuleType:
    """A helper script of docker/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"_compose_test_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def minutecast_image(compose: dict[str, Any]) -> str:
    return str(compose["services"]["stream"]["image"]).split(":")[0]


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


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """A Kafka listener list (``NAME://host:port,...``) as name -> (host, port)."""
    out = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def dockerfile_text() -> str:
    return DOCKERFILE.read_text()


def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def pyproject_deps() -> list[str]:
    return list(pyproject()["project"]["dependencies"])


def stages(text: str) -> list[str]:
    return re.split(r"(?m)^FROM ", text)[1:]


# ---- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return load_raw()


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
    """The file as `docker compose up` sees it with only the secrets in .env."""
    return interpolate(raw, TEST_SECRETS)


@pytest.fixture
def settings_for(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Any]:
    """Build a service's Settings from exactly the environment compose gives it."""

    def build(service: str) -> Any:
        clear_minutecast_env(monkeypatch)
        for key, value in service_env(compose, service).items():
            monkeypatch.setenv(key, value)
        return SERVICE_SETTINGS[service]()

    return build
