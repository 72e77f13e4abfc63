"""The README and docs/ stay true to the code: every setting documented, every link alive,
the README short and written for users. (``make docs`` builds the site strictly.)"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from mlstage.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = REPO / "README.md"

# Written by `make bench`; the README and docs/benchmarks.md show and link them.
# [text](target) and ![alt](target); the target up to a space, a closing parenthesis or '#'
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s#]*)(?:#[^)\s]*)?(?:\s[^)]*)?\)")


def _gen_settings() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_settings", DOCS / "gen_settings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _without_code(text: str) -> str:
    """Markdown without fenced code blocks and inline code (no links live there)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_every_setting_is_in_the_settings_page() -> None:
    page = (DOCS / "settings.md").read_text()
    missing = [
        f"MLSTAGE_{name.upper()}"
        for name in Settings.model_fields
        if f"`MLSTAGE_{name.upper()}`" not in page
    ]
    assert not missing, f"docs/settings.md lacks {missing}: run python docs/gen_settings.py"


def test_the_settings_table_is_what_the_code_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSTAGE_WORKERS", "3")  # the table shows defaults, not this machine's
    gen = _gen_settings()
    page = (DOCS / "settings.md").read_text()
    assert gen.updated(page) == page, (
        "docs/settings.md is out of date: run python docs/gen_settings.py"
    )
    assert "| `MLSTAGE_WORKERS` | `16` |" in page


def test_the_readme_is_short() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= 300, f"README.md has {lines} lines; move the depth into docs/"


def test_the_readme_speaks_to_users_not_of_how_it_was_made() -> None:
    text = README.read_text()
    said = re.findall(r"(?i)\b(?:this |working |coding )?sessions?\b|\bthis round\b", text)
    assert not said, f"README.md mentions {said}: it is for users, not a work log"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_a_file(page: Path) -> None:
    broken = []
    for target in _LINK.findall(_without_code(page.read_text())):
        if not target or re.match(r"[a-z][a-z0-9+.-]*:", target):  # an anchor, a URL
            continue
        path = (page.parent / target).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)} links to missing files: {broken}"


def _nav_files(nav: list) -> list[str]:
    found: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        found += _nav_files(value) if isinstance(value, list) else [value]
    return found


def test_the_site_nav_names_every_page_and_only_pages_there_are() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    nav = _nav_files(config["nav"])
    missing = [f for f in nav if not (DOCS / f).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist: {missing}"
    left_out = config.get("not_in_nav", "").split()
    unlisted = [
        p.name for p in DOCS.glob("*.md") if p.name not in nav and f"/{p.name}" not in left_out
    ]
    assert not unlisted, f"pages missing from mkdocs.yml's nav: {unlisted}"
