"""MkDocs hook: the code's docstrings cross-reference with Sphinx roles (``:func:`name```), which the Python handler
shows as written; on the site the role's prefix is dropped and the name stays as code."""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:mod|func|class|meth|data|attr|obj|exc):(?=<code)")


def on_page_content(html: str, page, config, files) -> str:
    return ROLE.sub("", html)
