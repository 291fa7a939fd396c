"""Security properties, checked on the running system and the source tree.

* Redis: password required (``tests/test_infra.py::test_redis_requires_password``, not repeated) and
  bound to loopback only (the running config);
* Kafka SASL/SCRAM as a setting: the client config, the Spark options and the Faust credentials it
  gives, with the password in none of repr/str/JSON/log output (compose uses it: test_compose_services.py);
* no eval/exec/pickle/marshal/unsafe YAML anywhere in the source;
* models load with Keras ``safe_mode=True``: a model with a Lambda layer is refused;
* secrets never logged: CLI commands and a worker at debug level, with known secret values in the env,
  against a private broker that requires SASL/SCRAM (so the worker's "ready" proves it logged in);
* ruff's ``S`` (bandit) rules are selected in pyproject and the tree is clean under them.
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from infra.procs import terminate
from infra.services import CONF_DIR, LocalKafka
from minutecast.errors import ModelError, ServiceUnavailable
from minutecast.features import Scaler
from minutecast.kafka import client_config, ensure_topics, spark_options, wait_for_kafka
from minutecast.registry import Registry
from minutecast.settings import InfraSettings, KafkaSettings, RedisSettings, StreamSettings, default_home
from minutecast.topics import Topics
from streams.faust_app import broker_credentials
from tests.support.cli import run_cli
from tests.support.services import free_port, free_port_pair

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("minutecast", "ops", "producers", "streams", "training", "infra", "benchmarks", "docker", "tests", "web")
KAFKA_SECRET = "kafka-Secret-7f3a9c-do-not-log"
def test_ruff_bandit_rules_are_selected_and_clean() -> None:
    lint = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    # eval/exec (S307/S102), pickle and marshal (S301/S302), unsafe YAML (S506), a shell (S602/S604): bandit's
    # rules forbid them; none may be ignored, not even per file.
    assert "S" in lint["select"]
    refused = {"S102", "S301", "S302", "S307", "S506", "S602", "S604"}
    ignores = set(lint.get("ignore", [])) | {c for cs in lint.get("per-file-ignores", {}).values() for c in cs}
    assert not refused & ignores, refused & ignores
    ruff = Path(sys.executable).with_name("ruff")
    # Only the S rules (others' work in progress may trip E/F), with the project's ignores and per-file ignores.
    ignored = [c for c in lint.get("ignore", []) if c.startswith("S")]
    res = subprocess.run([str(ruff), "check", "--select", "S", "--ignore", ",".join(ignored), *SOURCE_DIRS],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:]


def _sasl() -> KafkaSettings:
    return KafkaSettings(bootstrap="kafka:9093", security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                         sasl_username="minutecast", sasl_password=SecretStr(KAFKA_SECRET))


def test_kafka_sasl_scram_setting_gives_client_spark_and_faust_config() -> None:
    ks = _sasl()
    conf = client_config(ks)
    assert conf == {"bootstrap.servers": "kafka:9093", "security.protocol": "SASL_PLAINTEXT",
                    "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "minutecast", "sasl.password": KAFKA_SECRET}
    opts = spark_options(ks)
    assert opts["kafka.security.protocol"] == "SASL_PLAINTEXT" and opts["kafka.sasl.mechanism"] == "SCRAM-SHA-512"
    assert opts["kafka.sasl.jaas.config"] == ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                                              f'username="minutecast" password="{KAFKA_SECRET}";')
    creds = broker_credentials(ks)
    assert (creds.username, creds.password) == ("minutecast", KAFKA_SECRET)
    assert creds.mechanism.value == "SCRAM-SHA-512"
    assert broker_credentials(KafkaSettings()) is None and "sasl.password" not in client_config(KafkaSettings())
    with pytest.raises(ValueError, match="SASL needs"):
        KafkaSettings(security_protocol="SASL_SSL", sasl_username="x")


def test_kafka_and_redis_secrets_stay_out_of_repr_str_json_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    ks = _sasl()
    rs = RedisSettings(password=SecretStr("redis-Secret-1b2c"))
    settings = StreamSettings(kafka=ks, redis=rs)
    creds = broker_credentials(ks)  # what the Faust worker hands to aiokafka
    texts = [repr(ks), str(ks), ks.model_dump_json(), repr(rs), str(rs), rs.model_dump_json(), repr(settings),
             str(settings), settings.model_dump_json(), str(ks.model_dump()), str(settings.model_dump()),
             repr(creds), str(creds)]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("minutecast.test").info("settings %s %r %s", settings, ks, creds)
    texts.append(caplog.text)
    for text in texts:
        assert KAFKA_SECRET not in text and "redis-Secret-1b2c" not in text, text[:300]
    assert "**********" in repr(ks)


@pytest.mark.integration
def test_running_redis_binds_to_loopback_only(redis_client: Any) -> None:
    binds = redis_client.config_get("bind")["bind"].split()
    assert binds and all(b.lstrip("-") in ("127.0.0.1", "::1", "localhost") for b in binds), binds
    assert redis_client.config_get("protected-mode")["protected-mode"] == "yes"
    assert redis_client.config_get("requirepass")["requirepass"] != ""


@pytest.mark.integration
def test_secret_files_are_private(redis_settings: RedisSettings) -> None:
    secret = default_home() / "secrets" / "redis-password"
    if secret.exists():  # absent when the password comes from the environment (compose, CI secrets)
        assert secret.stat().st_mode & 0o077 == 0, oct(secret.stat().st_mode)
    assert redis_settings.password is not None


@pytest.mark.tensorflow
def test_models_load_in_keras_safe_mode_and_a_lambda_layer_is_refused(tmp_path: Path) -> None:
    import tensorflow as tf

    inputs = tf.keras.Input((60, 2))
    x = tf.keras.layers.Lambda(lambda t: t * 1.0)(inputs)  # arbitrary Python: what safe mode refuses
    x = tf.keras.layers.LSTM(4)(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(x))
    reg = Registry(tmp_path)
    version = reg.save(model, Scaler(ret_scale=1e-3, gap_scale=5e-3, range_scale=2e-3, logvol_mean=7.0, logvol_std=1.0,
                                     mkt_ret_scale=1e-3, mkt_range_scale=2e-3, target_scale=2e-3), {})
    with pytest.raises(ModelError, match=r"(?i)lambda|safe_mode|unsafe"):
        reg.load(version)
    with pytest.raises(ModelError):
        reg.promote(version)
    assert reg.current_version() is None


def _cli(args: list[str], env: dict[str, str], timeout: float = 180) -> str:
    res = run_cli(*args, env=env, timeout=timeout)
    return res.stdout + res.stderr


@pytest.fixture
def sasl_broker(tmp_path: Path, services: Any) -> Any:
    """A private KRaft broker whose client listener is SASL_PLAINTEXT / SCRAM-SHA-512 only (user
    ``minutecast`` with :data:`KAFKA_SECRET`, created at format time as docker/kafka-entrypoint.sh does)."""
    port, internal = free_port_pair(), free_port()
    ks = _sasl().model_copy(update={"bootstrap": f"127.0.0.1:{port}"})

    class SaslKafka(LocalKafka):
        def _write_config(self) -> None:
            super()._write_config()
            text = self.config.read_text()
            text = text.replace(f"listeners=PLAINTEXT://{self.host}:{self.port}",
                                f"listeners=CLIENT://{self.host}:{self.port},BROKER://127.0.0.1:{internal}")
            text = text.replace(f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                                f"advertised.listeners=CLIENT://{self.host}:{self.port},BROKER://127.0.0.1:{internal}")
            text = text.replace("inter.broker.listener.name=PLAINTEXT", "inter.broker.listener.name=BROKER")
            text = text.replace("listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                                "listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,BROKER:PLAINTEXT,"
                                "CONTROLLER:PLAINTEXT")
            text += ("sasl.enabled.mechanisms=SCRAM-SHA-512\n"
                     "listener.name.client.scram-sha-512.sasl.jaas.config="
                     "org.apache.kafka.common.security.scram.ScramLoginModule required;\n")
            self.config.write_text(text)

        def _format(self, java: str) -> None:
            self.data.mkdir(parents=True, exist_ok=True)
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            log4j = f"-Dlog4j2.configurationFile={CONF_DIR / 'log4j2.properties'}"
            res = subprocess.run([java, "-cp", self._classpath(), log4j,
                                  "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config),
                                  "--add-scram", f"SCRAM-SHA-512=[name=minutecast,password={KAFKA_SECRET}]"],
                                 capture_output=True, text=True, check=False)
            assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]

        def wait(self) -> None:
            """Until a SASL client gets metadata (the client listener accepts nothing else): the credentials work."""
            wait_for_kafka(ks, self.s.start_timeout_s)

    broker = SaslKafka(InfraSettings(home=tmp_path / "kafka-home", kafka=ks, kafka_heap="384m", start_timeout_s=120))
    try:
        broker.up()
        yield ks
    finally:
        broker.down()


@pytest.mark.integration
def test_secrets_never_logged_by_cli_or_worker_at_debug_level(redis_settings: RedisSettings, namespace: str,
                                                             sasl_broker: KafkaSettings, tmp_path: Path) -> None:
    # SASL for real: the broker refuses a wrong password and plaintext clients; ours logs in.
    with pytest.raises(ServiceUnavailable):
        wait_for_kafka(sasl_broker.model_copy(update={"sasl_password": SecretStr(KAFKA_SECRET + "x")}), 8)
    with pytest.raises(ServiceUnavailable):
        wait_for_kafka(KafkaSettings(bootstrap=sasl_broker.bootstrap), 8)
    ensure_topics(sasl_broker, Topics(namespace).specs(3, 1))
    assert redis_settings.password is not None
    redis_secret = redis_settings.password.get_secret_value()
    env = os.environ | {"MINUTECAST_NAMESPACE": namespace, "MINUTECAST_REDIS_PASSWORD": redis_secret,
                        "MINUTECAST_KAFKA_BOOTSTRAP": sasl_broker.bootstrap,
                        "MINUTECAST_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                        "MINUTECAST_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                        "MINUTECAST_KAFKA_SASL_USERNAME": "minutecast", "MINUTECAST_KAFKA_SASL_PASSWORD": KAFKA_SECRET,
                        "MINUTECAST_LOG_LEVEL": "DEBUG"}
    outputs = {
        "infra status": _cli(["-v", "infra", "status"], env),
        "status": _cli(["-v", "status"], env),
        "forecast": _cli(["-v", "forecast", "AAPL"], env),
        "bad redis password": _cli(["-v", "status"], env | {"MINUTECAST_REDIS_PASSWORD": redis_secret + "x"}),
    }
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "minutecast.cli", "-v", "stream", "--loglevel", "debug",
                                   "--web-port", "0", "--metrics-port", "0"], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "Worker ready" not in log_path.read_text(errors="replace") and time.monotonic() < deadline:
                assert worker.poll() is None, log_path.read_text(errors="replace")[-3000:]
                time.sleep(0.5)
        finally:
            terminate([worker], 60)
    outputs["worker (debug)"] = log_path.read_text(errors="replace")
    assert "Worker ready" in outputs["worker (debug)"]
    # The worker logged in with SCRAM (its debug log covers the SASL exchange) on a broker that accepts nothing else.
    assert "Authenticated as minutecast via SCRAM-SHA-512" in outputs["worker (debug)"]
    assert any(o.strip() for o in outputs.values())
    for name, text in outputs.items():
        for secret in (redis_secret, KAFKA_SECRET):
            assert secret not in text, f"{name} printed a secret"
