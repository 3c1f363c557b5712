"""The installable command: a wheel built from this checkout, installed into a fresh virtual environment
(its dependencies borrowed from this one, the checkout itself off the path), runs `multilora-embed` from
another directory: --help, train --help and check of the demo config."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import DEMO_YAML, REPO


@pytest.mark.long
def test_the_command_works_from_a_wheel_in_a_fresh_venv(tmp_path, demo_dirs):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist,
                    str(REPO)], check=True, cwd=tmp_path)
    (wheel,) = dist.glob("multilora_embed-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    # Dependencies from this environment's site-packages; its editable install of the checkout is a .pth
    # hook that a plain path entry does not run, so `server` can only come from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
                   check=True)
    env = {**os.environ, "PYTHONPATH": ""}
    where = subprocess.run([venv / "bin" / "python", "-c", "import server; print(server.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, check=True).stdout
    assert Path(where.strip()).is_relative_to(venv), where
    command = venv / "bin" / "multilora-embed"
    for args in (["--help"], ["train", "--help"], ["eval", "--help"]):
        shown = subprocess.run([command, *args], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert shown.returncode == 0 and "usage: multilora-embed" in shown.stdout, shown.stderr
    checked = subprocess.run([command, "check", "--config", DEMO_YAML], capture_output=True, text=True,
                             cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert checked.stdout.strip().endswith("ok") and "adapter legal: rank 8" in checked.stdout
