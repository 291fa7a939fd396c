"""Static checks of the compose stack's Kafka entry point (docker/kafka-entrypoint.sh), run with a stand-in
for Kafka's storage tool (no container engine, no broker): the properties it renders from the compose
file's environment, formatting empty storage with the SCRAM user once, refusing passwords the storage tool
would misparse; and the docker/ helpers parse.

    python -m pytest tests/test_compose_kafka.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support.compose import KAFKA_ENTRYPOINT, REPO, TEST_SECRETS, service_env


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
