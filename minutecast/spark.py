"""SparkSession: the one place a session is built (master, Kafka connector jars, Python, dirs, logging).

    from minutecast.spark import build_session
    spark = build_session(InferenceSettings(), app_name="minutecast-infer")

``local[*]`` by default (``MINUTECAST_MASTER`` or ``--master`` for a cluster). The Kafka connector's jars come
in through ``settings.spark_jars`` (``minutecast infer`` fills it from the jar cache, ``infra/jars.py``).
pyspark is imported inside :func:`build_session` so importing this module stays cheap.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from minutecast.errors import ConfigError
from minutecast.settings import InferenceSettings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def session_conf(settings: InferenceSettings, master: str | None = None) -> dict[str, str]:
    """The Spark configuration minutecast runs with (pure: no JVM started)."""
    if not settings.spark_jars:
        raise ConfigError("no Kafka connector jars for Spark: set MINUTECAST_SPARK_JARS (comma-separated paths) "
                          "or start the job with `minutecast infer`, which takes them from the jar cache")
    master = master or settings.master
    spark_home = settings.home / "spark"
    conf = {
        "spark.master": master,
        # Spark's Kafka source/sink and its dependencies (minus jars pyspark already ships).
        "spark.jars": settings.spark_jars,
        "spark.ui.enabled": "true" if settings.spark_ui else "false",
        # One shuffle per micro-batch (by ticker) into a few large partitions: one model call each.
        "spark.sql.shuffle.partitions": str(settings.partitions),
        "spark.default.parallelism": str(settings.partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.local.dir": str(spark_home / "local"),
        "spark.sql.warehouse.dir": str(spark_home / "warehouse"),
        # Python workers stay alive between tasks: that is what keeps the model cached per process.
        "spark.python.worker.reuse": "true",
        "spark.sql.streaming.metricsEnabled": "true",
        "spark.ui.showConsoleProgress": "false",  # progress bars garble the job's log
    }
    if master.startswith("local"):
        # A laptop's hostname may not resolve; loopback always does.
        conf |= {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
    return conf


def build_session(settings: InferenceSettings | None = None, *, app_name: str = "minutecast",
                  master: str | None = None, extra: dict[str, str] | None = None) -> SparkSession:
    """Build (or return the running) SparkSession for ``settings``."""
    settings = settings or InferenceSettings()
    # Python workers start `python3` from PATH unless told: that interpreter lacks pandas/TensorFlow.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if (master or settings.master).startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # else Spark probes the hostname and warns
    (settings.home / "spark" / "local").mkdir(parents=True, exist_ok=True)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    for key, value in (session_conf(settings, master) | (extra or {})).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.spark_log_level)
    return spark
