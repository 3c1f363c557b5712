"""The README's snippets run as written against the demo (`launch.py` on a free port; only the port and
the asset cache differ): every Python block in its own interpreter, every `curl` and `launch.py` line of
the shell blocks, each curl answered with the status its comment names (2xx where none is named).
Blocks that start other servers (`make`, Ray Serve) or need a GPU node (marked so) are not run here; the YAML
block is a reference."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO, launched_demo

BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
NOT_HERE = ("make ", "--replicas", "serve run", "# on a GPU node")


def blocks() -> list[tuple[str, str]]:
    return [(lang, code) for lang, code in BLOCK.findall((REPO / "README.md").read_text())
            if lang in ("python", "bash") and not any(marker in code for marker in NOT_HERE)]


def commands(code: str) -> list[str]:
    """Shell commands: backslash continuations joined, and a quoted argument may span lines."""
    joined, pending = [], ""
    for line in code.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line.strip()
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        if pending and not pending.startswith("#"):
            joined.append(pending)
        pending = ""
    return joined


@pytest.fixture(scope="module")
def demo(demo_dirs):
    """Both demos on one server, as the README's sparse and multivector section serves them (their assets
    built here first, so the server only loads them)."""
    from server.demo_assets import ensure_builtin
    from server.demo_m3 import M3_ADAPTERS, M3_NAME

    for source in (M3_NAME, *(f"{M3_NAME}/{name}" for name in M3_ADAPTERS)):
        ensure_builtin(f"builtin:{source}")
    with launched_demo("--config", str(REPO / "model_configs" / "m3-tiny-demo.yaml"), timeout=300) as url:
        yield int(url.rsplit(":", 1)[1])


def localise(text: str, port: int) -> str:
    cache = os.environ["MLE_CACHE_DIR"]  # the test session's asset cache stands in for ./.cache
    return (text.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace("localhost:8080", f"localhost:{port}")
            .replace("./.cache", cache))


def run_shell_line(line: str, port: int) -> None:
    argv = shlex.split(localise(line, port), comments=True)
    if argv[0] == "curl":
        expected = re.search(r"#\s*(\d{3})\b", line)
        done = subprocess.run([*argv, "-s", "-o", os.devnull, "-w", "%{http_code}"], capture_output=True,
                              text=True, timeout=60)
        status = int(done.stdout or 0)
        assert status == int(expected.group(1)) if expected else 200 <= status < 300, (line, status)
        return
    assert argv[0].endswith("python"), line
    done = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (line, done.stderr[-2000:])


def test_readme_snippets_run_as_written(demo):
    found = blocks()
    assert sum(lang == "python" for lang, _ in found) >= 5 and any("curl" in code for _, code in found)
    for lang, code in found:  # in README order: later blocks rely on what earlier ones did
        if lang == "python":
            done = subprocess.run([sys.executable, "-c", localise(code, demo)], cwd=REPO, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, (code, done.stderr[-2000:])
        else:
            for line in commands(code):
                run_shell_line(line, demo)
