"""The operator docs: their cross-references lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy.tests.markdown import anchors

REPO = Path(__file__).resolve().parents[2]
DOCS = ["docs/architecture.md", "docs/operations.md"]
_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS)
def test_links_between_the_docs_resolve(doc: str) -> None:
    """Every link to a section of architecture.md or operations.md names a real heading."""
    source = REPO / doc
    for match in _LINK.finditer(source.read_text()):
        target = match.group("target")
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        file = (source.parent / path) if path else source
        if file.suffix != ".md" or file.relative_to(REPO).as_posix() not in DOCS:
            continue  # other helpers' documents (openapi.yaml, asyncapi.yaml) are theirs to keep
        assert file.is_file(), target
        if anchor:
            assert anchor in anchors(file), f"{doc}: {target} points at no heading"


def test_architecture_covers_the_failure_modes() -> None:
    """The failure-mode table names each dependency an operator can lose."""
    text = (REPO / "docs/architecture.md").read_text()
    table = text.split("## Failure modes", 1)[1]
    for failure in ("Kafka down", "PostgreSQL down", "Redis down", "replica crashes"):
        assert failure in table, failure
    assert "```mermaid" in text
