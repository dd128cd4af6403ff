"""The README and the documentation run as written: every command and Python snippet in them, in the order the page
shows them, in a fresh directory. A block the page marks ``<!-- not run: why -->`` (the paper's GPU jobs) is still
parsed: its commands by the command line's own parser, its Python by the compiler, so a renamed flag fails here.

The README's set-up block is what CI runs itself (``.ci/run``), so it is left out here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"(?:<!-- not run: (?P<why>[^>]*?) -->\s*\n)?```(?P<lang>\w*)\n(?P<code>.*?)\n```", re.S)
SHOWN = ("bash", "python")  # the blocks that are commands or code (``text`` blocks are output)
TIMEOUT_S = 600


def blocks(text: str) -> list[tuple[str, str, str | None]]:
    """``(language, code, why not run or None)`` of every fenced block, the README's set-up block left out."""
    text = re.sub(r"<!-- setup:begin -->.*?<!-- setup:end -->", "", text, flags=re.S)
    return [(m["lang"], m["code"], m["why"]) for m in FENCE.finditer(text)]


def commands(code: str) -> list[list[str]]:
    """The command lines of a shell block (continuations joined, comments dropped), as argument lists."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def _parses(argv: list[str]) -> None:
    from cli.main import build_parser

    if argv[0] == "robust-transfer":
        build_parser().parse_args(argv[1:])  # a usage error exits: the test fails with argparse's message


def _run(argv: list[str], cwd: Path, env: dict) -> tuple[int, str]:
    """A command line as a shell would run it: ``robust-transfer ...`` through the command's own ``main`` in this
    process (the same code as the installed script, without a second start-up of torch per line), anything else
    as a process."""
    if argv[0] == "robust-transfer":
        import contextlib
        import io

        from cli.main import main

        err, before = io.StringIO(), Path.cwd()
        os.chdir(cwd)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                code = main(argv[1:])
        finally:
            os.chdir(before)
        return code, err.getvalue()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    return done.returncode, done.stderr


def _runnable(page: str) -> list[tuple[str, str, str | None]]:
    return [b for b in blocks((ROOT / page).read_text()) if b[0] in SHOWN]


@pytest.mark.parametrize("page", [p for p in PAGES if _runnable(p)])
def test_the_page_runs_as_written(page, tmp_path):
    runnable = _runnable(page)
    for name in ("examples", "benchmarks"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "TQDM_DISABLE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    for i, (lang, code, why) in enumerate(runnable):
        if lang == "bash":
            for argv in commands(code):
                if why is not None:
                    _parses(argv)
                    continue
                code, err = _run(argv, tmp_path, env)
                assert code == 0, f"{page}: `{shlex.join(argv)}` exited {code}:\n{err[-3000:]}"
        elif why is not None:
            compile(code, f"{page} block {i}", "exec")
        else:
            script = tmp_path / f"snippet_{i}.py"
            script.write_text(code)
            done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=TIMEOUT_S)  # fmt: skip
            assert done.returncode == 0, f"{page}: Python block {i} exited {done.returncode}:\n{done.stderr[-3000:]}"


def test_every_page_is_in_the_site_and_the_readme_is_a_guide():
    listed = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))  # the nav's pages
    on_disk = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk == listed, on_disk ^ listed
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    snippets = [code for page in PAGES for _, code, _ in blocks((ROOT / page).read_text())]
    assert not [c for c in snippets if "model.model.fc" in c]  # the architecture registry names the classifier


def test_the_cli_reference_is_generated_from_the_parser():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "docs" / "hooks" / "cli_reference.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = hook.on_page_markdown((ROOT / "docs" / "cli.md").read_text(), None, None, None)
    assert hook.MARKER not in page
    for command in ("influence", "validate-influence", "sweep", "demo", "influence-study"):
        assert f"## `{command}`" in page
    assert "--arnoldi-rank" in page and "--method" in page  # the registry's flags, as the parser has them
