"""minutecast.flags: the one way the entry points map their flags onto their settings (pure: no services)."""

from __future__ import annotations

import argparse

import pytest

from minutecast.errors import ConfigError
from minutecast.flags import settings_from
from minutecast.settings import InferenceSettings, StreamSettings, WebSettings
from streams import infer_cli, worker_cli
from web import cli as web_cli


def parse(add: object, *argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add(p)  # type: ignore[operator]
    return p.parse_args(list(argv))


def test_given_flags_override_the_environment_and_absent_ones_leave_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINUTECAST_TRIGGER_MS", "750")
    monkeypatch.setenv("MINUTECAST_PARTITIONS", "5")
    args = parse(infer_cli.add_arguments, "--partitions", "0", "--checkpoint", "/tmp/cp")  # noqa: S108 - a name only
    s = settings_from(InferenceSettings, args, infer_cli.FLAGS)
    assert s.trigger_ms == 750 and s.partitions == 0 and str(s.checkpoint_dir) == "/tmp/cp"
    stream = settings_from(StreamSettings, parse(worker_cli.add_arguments, "--web-port", "0"), worker_cli.FLAGS)
    assert stream.web_port == 0


def test_a_bad_value_names_the_flag_or_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINUTECAST_TRIGGER_MS", "soon")
    with pytest.raises(ConfigError, match=r"^MINUTECAST_TRIGGER_MS: "):
        settings_from(InferenceSettings, parse(infer_cli.add_arguments), infer_cli.FLAGS)
    monkeypatch.delenv("MINUTECAST_SERVE_TOKEN", raising=False)
    # A check across fields (an open bind without a token): its own message, without pydantic's prefix.
    with pytest.raises(ConfigError, match=r"^(?!Value error).*needs MINUTECAST_SERVE_TOKEN"):
        web_cli.settings(parse(web_cli.add_arguments, "--host", "0.0.0.0"))  # noqa: S104 - the error under test
    assert web_cli.settings(parse(web_cli.add_arguments, "--port", "8099")) == WebSettings(serve_port=8099)
