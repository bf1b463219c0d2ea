"""The repository documents itself: every file path, link and docs/ anchor it cites
exists inside it, the private notes it was built from are never cited, and the flow
direction is stated where flow users read."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import REPO

# Notes kept outside the repository while it was built: users never have them.
OUTSIDE = re.compile(r"MODELS\.md|DESIGN\.md|STYLE\.md|\.\./shared|shared/datasets")
# The two places that may name ../shared: CI and the tests read the real data sets there.
MAY_NAME_SHARED = {".ci/run", "tests/conftest.py", "tests/test_docs.py"}


def _files() -> list[Path]:
    """Tracked and untracked-but-not-ignored text files (what a clone would hold)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    keep = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ""}
    return [REPO / f for f in out if (REPO / f).is_file() and Path(f).suffix in keep]


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    lines = md.read_text().splitlines()
    return {_slug(line.lstrip("#")) for line in lines if re.match(r"#{1,6} ", line)}


def test_nothing_cites_files_outside_the_repository() -> None:
    bad = []
    for f in _files():
        rel = str(f.relative_to(REPO))
        for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line) and rel not in MAY_NAME_SHARED:
                bad.append(f"{rel}:{i}: {line.strip()[:80]}")
    assert not bad, "\n".join(bad)


def test_docs_citations_and_markdown_links_resolve() -> None:
    """`docs/<file>.md#<anchor>` citations anywhere, and relative markdown links."""
    bad = []
    for f in _files():
        text = f.read_text(errors="replace")
        rel = f.relative_to(REPO)
        for m in re.finditer(r"docs/([\w\-/]+\.md)(?:#([\w\-]+))?", text):
            doc = REPO / "docs" / m.group(1)
            if not doc.is_file() or (m.group(2) and m.group(2) not in _anchors(doc)):
                bad.append(f"{rel}: {m.group(0)}")
        if f.suffix == ".md":
            for m in re.finditer(r"\]\(([^)\s]+)\)", text):
                target = m.group(1)
                if re.match(r"[a-z]+://|mailto:", target):
                    continue
                path, _, anchor = target.partition("#")
                doc = (f.parent / path).resolve() if path else f
                inside = doc == REPO or REPO in doc.parents
                if not inside or not doc.exists():
                    bad.append(f"{rel}: ({target})")
                elif anchor and doc.suffix == ".md" and anchor not in _anchors(doc):
                    bad.append(f"{rel}: ({target}) has no such heading")
    assert not bad, "\n".join(bad)


def test_every_family_has_a_page_and_its_config_links_it() -> None:
    """Each conf/model/*.yaml cites its family's page docs/models/<page>.md (the link
    test above checks the page and anchor exist), and the index lists every page."""
    index = (REPO / "docs" / "models" / "README.md").read_text()
    for yaml in sorted((REPO / "conf" / "model").glob("*.yaml")):
        m = re.search(r"docs/models/([\w\-]+)\.md", yaml.read_text())
        assert m, f"{yaml.name} cites no page of docs/models/"
        assert f"{m.group(1)}.md" in index, f"docs/models/README.md does not list {m.group(1)}"


def test_flow_direction_is_stated_where_flow_users_read() -> None:
    for path in ("docs/models/flows.md", "src/genlab/nn/flows.py", "src/genlab/models/flow.py"):
        text = (REPO / path).read_text()
        assert "normflows" in text and "data to latent" in text.replace("->", "to"), path
