"""A soak of the demo server (benchmarks/soak.py): 1500 requests (ninety seconds at most), load above
capacity, 10% bad requests, hot-loads and evictions, one SIGTERM-restart cycle half way. Nothing lost, no
answer late, no wrong vector, no 5xx but 503. The long soak and the same on a busy machine are the `soak` tier
(tests/soak, `make test-soak`). How many requests a machine gets through in a time is a benchmark's business,
not this test's."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO


def run_soak(tmp_path, *argv: str) -> dict:
    spec = importlib.util.spec_from_file_location("soak", REPO / "benchmarks" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    return soak.main([*argv, "--restart", "--json", str(tmp_path / "soak.json")])


def check(report: dict, requests: int) -> None:
    assert 0 < report["sent"] <= requests
    assert report["lost"] == 0, report["lost_by_error"]
    assert report["timed_out"] == 0 and report["wrong_vectors"] == 0 and report["server_errors"] == 0
    assert report["answered_by_status"].get("200", 0) > report["sent"] // 3
    assert any(key.startswith("400") for key in report["answered_by_status"])
    assert report["exit_codes"] == [0, 0]
    assert report["rss_growth_mb"] < 100


def test_soak(demo_dirs, tmp_path):
    check(run_soak(tmp_path, "--requests", "1500", "--duration", "90"), 1500)
