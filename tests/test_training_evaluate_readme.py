"""Docs Model quality page generator (training.readme): replaces only its section, inserts the markers on the
first run, copies and links the plots, and shows the issue's targets. Synthetic report, tmp paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minutecast.errors import ConfigError
from tests.support.evaluation import FakeModel, synthetic
from training import evaluate as E
from training import readme as R
from training import scoring as S
from training.report import targets

README = "intro\n\n# Model quality\n\nold numbers\n\n# Versions\n\n| a | b |\n"


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    test, bars = synthetic()
    report, preds = E.build_report(test, FakeModel(1.0), None, baseline_scale=(1.0, 1.0), extra=S.ready_share(bars))
    report["gate"] = dict(zip(("passed", "reason"), E.gate(report), strict=True))
    return E.write_report(report, test, preds, tmp_path_factory.mktemp("reports") / "v1")


def test_first_run_inserts_markers_and_keeps_the_rest(tmp_path: Path, report_dir: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    R.update(report_dir / "report.json", readme, tmp_path / "docs" / "q", command="minutecast train --bars X")
    text = readme.read_text()
    assert text.startswith("intro\n\n" + R.START + "\n# Model quality\n")
    assert "old numbers" not in text and text.endswith(R.END + "\n\n# Versions\n\n| a | b |\n")
    assert "| target (issue 14) | goal | measured | met |" in text and "minutecast train --bars X" in text
    report = json.loads((report_dir / "report.json").read_text())
    assert f"| `coverage_80` | {report['coverage_80']:.4f} |" in text
    for png in report["plots"]:
        assert (tmp_path / "docs" / "q" / png).exists() and f"](docs/q/{png})" in text
    again = R.render(text, "# Model quality\n\nnew")  # later runs replace between the markers only
    assert again.count(R.START) == 1 and "new" in again and "| target (issue 14)" not in again
    assert again.endswith(R.END + "\n\n# Versions\n\n| a | b |\n")


def test_no_section_is_an_error() -> None:
    with pytest.raises(ConfigError, match="Model quality"):
        R.render("# nothing here\n", "x")


def test_targets_are_judged_from_the_report(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    rows = {what: (x, met) for what, _, x, met in targets(report)}
    cov = rows["80% coverage - 0.80"]
    assert cov[0] == pytest.approx(report["coverage_80"] - 0.8) and cov[1] == (abs(cov[0]) <= 0.015)
    gain = rows["80% interval score gain over the calibrated baseline"]
    assert gain == (report["interval_score_gain_80"], report["interval_score_gain_80"] >= 0.04)  # issue 25: 4%
    har = rows["80% interval score gain over the HAR baseline"]
    assert har == (report.get("interval_score_gain_vs_har_80"), None if report.get("interval_score_gain_vs_har_80")
                   is None else report["interval_score_gain_vs_har_80"] >= 0.01)
    worst = rows["worst ticker's 80% coverage - 0.80"]
    assert abs(worst[0]) == max(abs(r["coverage_80"] - 0.8) for r in report["per_ticker"])
    assert worst[1] == (abs(worst[0]) <= 0.05)
    assert rows["model RMSE / persistence RMSE - 1"][0] == pytest.approx(
        report["model_rmse"] / report["persistence_rmse"] - 1)
