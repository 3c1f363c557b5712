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


def test_every_module_has_its_test_file_or_is_mapped_in_the_readme():
    """A module `server/x/name.py` is tested in `tests/**/test_name.py`, or the README's map says where."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Where each module is tested", 1)[1].split("\n## ", 1)[0]
    section = "\n".join(line for line in section.splitlines() if line.startswith("| `"))
    mapped = set(re.findall(r"`([\w/]+)`", section))
    test_names = {path.name for path in (REPO / "tests").rglob("test_*.py")}
    unmapped = [
        str(module.relative_to(REPO / "server").with_suffix(""))
        for module in sorted((REPO / "server").rglob("*.py"))
        if module.name != "__init__.py" and f"test_{module.name}" not in test_names
    ]
    assert [name for name in unmapped if name not in mapped] == []
    named_files = re.findall(r"`([\w/]+\.py)`", section)
    assert [name for name in named_files if not (REPO / "tests" / name).is_file()] == []
