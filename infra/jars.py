"""Maven jars for the Kafka broker and Spark's Kafka connector, fetched once into the cache.

The versions are written only in the poms under ``infra/maven/``; this module reads them from there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

from minutecast.errors import InfraError

MAVEN_DIR = Path(__file__).resolve().parent / "maven"


def _pom_property(pom: str, name: str) -> str:
    text = (MAVEN_DIR / pom).read_text()
    m = re.search(rf"<{re.escape(name)}>([^<]+)</{re.escape(name)}>", text)
    if not m:
        raise InfraError(f"{pom} has no <{name}>")
    return m.group(1).strip()


def kafka_version() -> str:
    return _pom_property("kafka-pom.xml", "kafka.version")


def spark_version() -> str:
    return _pom_property("spark-pom.xml", "spark.version")


def _fetch(pom: str, dest: Path) -> Path:
    """Copy the pom's runtime dependencies into ``dest`` (atomically: a half-done fetch never counts)."""
    if dest.is_dir() and any(dest.glob("*.jar")):
        return dest
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfraError("Maven (mvn) is missing: `apt-get install maven`, or run infra/bootstrap.sh")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    cmd = [mvn, "-q", "-B", "-s", str(MAVEN_DIR / "settings.xml"), "-f", str(MAVEN_DIR / pom),
           "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(tmp.glob("*.jar")):
        shutil.rmtree(tmp, ignore_errors=True)
        raise InfraError(f"mvn failed fetching {pom}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def kafka_libs(cache_dir: Path) -> Path:
    """Directory of the broker's jars (fetched on first use)."""
    return _fetch("kafka-pom.xml", cache_dir / "jars" / f"kafka-{kafka_version()}")


def _artifact(jar: Path) -> str:
    """``kafka-clients-3.9.0.jar`` -> ``kafka-clients``."""
    return re.sub(r"-\d[\w.\-]*\.jar$", "", jar.name)


@cache
def spark_kafka_jars(cache_dir: Path) -> tuple[Path, ...]:
    """The connector's jars minus those pyspark already ships (two copies of a jar on one classpath
    is how version conflicts start)."""
    import pyspark

    shipped = {_artifact(j) for j in (Path(pyspark.__file__).parent / "jars").glob("*.jar")}
    libs = _fetch("spark-pom.xml", cache_dir / "jars" / f"spark-kafka-{spark_version()}")
    return tuple(sorted(j for j in libs.glob("*.jar") if _artifact(j) not in shipped))
