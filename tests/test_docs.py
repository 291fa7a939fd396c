"""The docs site and the README (no services): README.md stays a short front page, its links into docs/ resolve,
`mkdocs build --strict` passes on the tree and fails on each kind of fault it is there to catch (a broken
link, a missing anchor, a page left out of the nav), and the generated pages keep their generators' markers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import readme as bench_readme
from minutecast import settings_doc
from training import readme as quality_readme

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250  # issue 26: what it is, the picture, quick start, first look, where to read on
MKDOCS = Path(sys.executable).with_name("mkdocs")


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(site)], cwd=root,
                          env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
                          capture_output=True, text=True, timeout=300, check=False)


def copy_site_sources(dst: Path) -> Path:
    for name in ("mkdocs.yml", "mkdocs_hooks.py", "README.md"):
        shutil.copy(REPO / name, dst / name)
    shutil.copytree(REPO / "docs", dst / "docs")
    return dst


def test_readme_is_short_and_keeps_the_ci_command() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    quick = text.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0].split()
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert quick == ["make", "run", "make", "test"] and ci == "make test"


def test_readme_links_into_docs_exist() -> None:
    links = re.findall(r"\]\((docs/[^)#]+)", (REPO / "README.md").read_text())
    assert links and all((REPO / link).exists() for link in links), links


def test_generated_pages_hold_their_generators_markers() -> None:
    perf = bench_readme.PAGE.read_text()
    assert perf.index(bench_readme.START) < perf.index(bench_readme.END)
    quality = quality_readme.PAGE.read_text()
    assert quality.index(quality_readme.START) < quality.index(quality_readme.END)


def test_every_variable_table_is_current() -> None:
    page = settings_doc.PAGE.read_text()
    assert settings_doc.render(page) == page, "run `python -m minutecast.settings_doc` after changing settings.py"
    assert "| `MINUTECAST_SERVE_TOKEN` |" in page and "### `TrainingSettings`" in page


def test_strict_build_passes(tmp_path: Path) -> None:
    proc = build(REPO, tmp_path / "site")
    assert proc.returncode == 0, proc.stderr
    home = (tmp_path / "site" / "index.html").read_text()
    assert "Quick start" in home and 'href="components/#replay-as-if-live"' in home  # README, links rewritten


@pytest.mark.parametrize(("fault", "message"), [
    ("broken_link", "is not found among documentation files"),
    ("missing_anchor", "does not contain an anchor"),
    ("orphan_page", "not included in the \"nav\" configuration"),
    ("readme_broken_link", "does not contain an anchor"),
])
def test_strict_build_fails_on(fault: str, message: str, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    root = copy_site_sources(tmp_path / "src")
    if fault == "broken_link":
        (root / "docs" / "versions.md").write_text((root / "docs" / "versions.md").read_text() + "\n[x](nope.md)\n")
    elif fault == "missing_anchor":
        (root / "docs" / "versions.md").write_text(
            (root / "docs" / "versions.md").read_text() + "\n[x](components.md#nope)\n")
    elif fault == "orphan_page":
        (root / "docs" / "orphan.md").write_text("# Orphan\n")
    else:
        readme = root / "README.md"
        readme.write_text(readme.read_text().replace("components.md#replay-as-if-live", "components.md#nope"))
    proc = build(root, tmp_path / "site")
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
