"""The `soak` tier (`make test-soak`, in CI): the long soak (4000 requests, four minutes at most) and the same
with four other processes spinning on the cores throughout, each with a SIGTERM-restart half way: nothing
lost, nothing late, no wrong vector. `make test-soak` also runs the shutdown tests on a busy machine."""

from __future__ import annotations

import pytest

from tests.e2e.test_soak import check, run_soak

pytestmark = pytest.mark.soak


def test_long_soak(demo_dirs, tmp_path):
    check(run_soak(tmp_path, "--requests", "4000", "--duration", "240"), 4000)


def test_soak_on_a_busy_machine(demo_dirs, tmp_path):
    report = run_soak(tmp_path, "--requests", "4000", "--duration", "300", "--busy", "4")
    assert report["busy"] == 4
    check(report, 4000)
