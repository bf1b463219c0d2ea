"""The code is ruff-clean and ruff-formatted, and no code or config file is git-ignored."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _ruff() -> str:
    return shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"


def test_ruff_check_and_format() -> None:
    for args in (["check", "."], ["format", "--check", "."]):
        p = subprocess.run([_ruff(), *args], cwd=REPO, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr


def test_no_source_or_config_file_is_git_ignored() -> None:
    """A .gitignore pattern must never hide code or configs (a 'data/' line once hid
    src/genlab/data/ and conf/data/ from the repository: CI failed on a clean clone)."""
    if not (REPO / ".git").exists() or not shutil.which("git"):
        return  # an sdist or export: nothing can be hidden from a repository here
    files = [
        str(p.relative_to(REPO))
        for top in ("src", "conf", "tests", "scripts")
        for p in (REPO / top).rglob("*")
        if p.suffix in {".py", ".yaml"}
    ]
    p = subprocess.run(
        ["git", "check-ignore", "--no-index", *files], cwd=REPO, capture_output=True, text=True
    )
    assert p.stdout.strip() == "", f"ignored by .gitignore: {p.stdout.split()}"
