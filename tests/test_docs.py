"""Every document the project refers to is inside the project: relative links in the Markdown files
resolve to files here, and no tracked file points outside the repository for its documentation."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
DOC_PATH = re.compile(r"\bdocs/[\w./-]+\.md\b")


def tracked(*patterns: str) -> list[Path]:
    names = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    return [REPO / name for name in names if (REPO / name).is_file()]


def test_markdown_links_resolve_inside_the_repository():
    broken = []
    for page in tracked("*.md"):
        for target in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (page.parent / target).resolve()
            if not resolved.exists() or REPO not in resolved.parents:
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert broken == []


def test_referenced_documents_exist_and_nothing_points_outside():
    problems = []
    outside = "../" + "shared"  # the team's folder beside the checkout (spelt so this file does not match)
    for path in tracked("*.py", "*.md", "*.sh", "*.yaml", "Makefile", ".ci/run"):
        text, where = path.read_text(errors="replace"), path.relative_to(REPO)
        if outside in text:
            problems.append(f"{where} refers to {outside}")
        problems += [f"{where} -> {doc}" for doc in DOC_PATH.findall(text) if not (REPO / doc).is_file()]
    assert problems == []
