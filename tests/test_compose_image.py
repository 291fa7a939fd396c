"""Static checks of the project image (no container engine needed): the Dockerfile's versions against
pyproject.toml and the Maven poms, its stages, the packages it copies, the jar layout infra.jars expects,
``.dockerignore``, and the image's helpers (docker/entrypoint.py, docker/requirements.py).

    python -m pytest tests/test_compose_image.py -q
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from infra import jars
from minutecast.cli import SUBCOMMANDS
from minutecast.errors import ServiceUnavailable
from tests.support.compose import REPO, dockerfile_text, load_module, pyproject, pyproject_deps, stages


# ---- Dockerfile -----------------------------------------------------------------------------------------
def test_dockerfile_versions_match_pyproject_and_poms() -> None:
    text = dockerfile_text()
    base = re.search(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", text)
    assert base, "ARG PYTHON_IMAGE=python:X.Y-... before the first FROM"
    m = re.match(r"python:(\d+\.\d+)(?:\.\d+)?-slim-bookworm$", base.group(1))
    assert m, base.group(1)
    requires = pyproject()["project"]["requires-python"]
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


def test_dockerfile_copies_every_package_pyproject_installs() -> None:
    """Each top-level package of ``[tool.setuptools.packages.find] include`` is copied into the build stage
    (the installed project would otherwise lack it: ``ops`` was added after the Dockerfile was written)."""
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted({pattern.rstrip("*").rstrip(".") for pattern in include if "." not in pattern.rstrip("*")})
    assert "minutecast" in packages and "ops" in packages
    build = next(s for s in stages(dockerfile_text()) if s.split()[2] == "build")
    missing = [p for p in packages if not re.search(rf"(?m)^COPY {re.escape(p)}/ /src/{re.escape(p)}/$", build)]
    assert not missing, f"the Dockerfile's build stage copies no {missing}: add `COPY <pkg>/ /src/<pkg>/`"
    for p in packages:
        assert (REPO / p / "__init__.py").is_file(), f"{p} is in pyproject's include but is no package"


def test_baked_jar_layout_is_what_infra_jars_finds(tmp_path: Path) -> None:
    """The Dockerfile writes the connector to $MINUTECAST_CACHE/jars/spark-kafka-<pom version>/:
    infra.jars must find it there without running Maven."""
    libs = tmp_path / "jars" / f"spark-kafka-{jars.spark_version()}"
    libs.mkdir(parents=True)
    connector = libs / f"spark-sql-kafka-0-10_2.13-{jars.spark_version()}.jar"
    connector.write_bytes(b"PK")
    found = jars.spark_kafka_jars(tmp_path)
    assert connector in found


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


# ---- the image's helpers (docker/) ------------------------------------------------------------------------
def test_requirements_helper_installs_exactly_pyprojects_pins() -> None:
    req = load_module(REPO / "docker" / "requirements.py")
    deps = pyproject_deps()
    assert req.requirements(REPO / "pyproject.toml") == deps
    gpu = req.requirements(REPO / "pyproject.toml", "tensorflow[and-cuda]==2.15.1")
    assert "tensorflow[and-cuda]==2.15.1" in gpu and not any(d.startswith("tensorflow-cpu") for d in gpu)
    assert len(gpu) == len(deps)
    assert req.requirement_name("tensorflow[and-cuda]==2.15.1") == "tensorflow"
    assert req.requirement_name("Faust_Streaming==0.15.3") == "faust-streaming"


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
