"""The reference stays complete: every variable Settings reads is documented."""
from __future__ import annotations

from pathlib import Path

from tasks.settings import known_variables

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = sorted(v for v in known_variables() if f"`{v}`" not in text)
    assert not missing, f"docs/configuration.md does not mention {missing}"


def test_readme_links_only_existing_docs() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    linked = {part.split(")")[0] for part in readme.split("](")[1:]}
    missing = sorted(link for link in linked if link.startswith("docs/") and not (DOCS.parent / link).exists())
    assert not missing, f"README links to missing files: {missing}"
