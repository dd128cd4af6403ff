"""MkDocs hook: the command-line reference is generated from the parser when the site is built, never copied.

``docs/cli.md`` holds the marker ``<!-- cli-reference -->``; this hook replaces it with every command's ``--help``
(argparse's own text, at a fixed width), so a flag added, renamed or removed in the code is what the page shows.
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- cli-reference -->"


def cli_reference() -> str:
    """Markdown: one section per ``robust-transfer`` command, its help text as argparse prints it."""
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; the page wants one width
    from cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    parts = ["```text", parser.format_help().rstrip(), "```"]
    for name, command in sub.choices.items():
        parts += [f"## `{name}`", "", helps.get(name, ""), "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown
