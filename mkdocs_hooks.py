"""MkDocs hook (mkdocs.yml ``hooks:``): the site's home page is README.md itself, so the two never drift apart.

    mkdocs build --strict        # what `make test` runs; `make docs` serves the site

docs/index.md is a placeholder; its Markdown is replaced by README.md's with the links into ``docs/`` made
relative to the docs folder (``docs/x.md#a`` -> ``x.md#a``), so --strict checks README's links too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent / "README.md"
DOCS_LINK = re.compile(r"\]\(docs/")  # a Markdown link target starting in docs/


def home_markdown(readme: str) -> str:
    """README.md's Markdown as the docs home page: links into docs/ rewritten to be relative to it."""
    return DOCS_LINK.sub("](", readme)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    return home_markdown(README.read_text()) if page.file.src_uri == "index.md" else markdown
