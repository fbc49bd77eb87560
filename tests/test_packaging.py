"""The package as a newcomer meets it: metadata, a source distribution that carries its
tests, and a README whose synopsis and links match the program."""

from __future__ import annotations

import argparse
import re
from importlib.metadata import metadata

from conftest import ROOT

from mmapipc.cli import build_parser


def test_metadata_says_who_where_and_what() -> None:
    meta = metadata("mmapipc")
    assert meta["Author"] or meta["Author-email"], "no author"
    urls = meta.get_all("Project-URL") or []
    assert any(u.startswith("Homepage, https://") for u in urls), urls
    assert meta["License-Expression"] == "MIT"
    assert "LICENSE" in (meta.get_all("License-File") or [])
    assert meta["Keywords"] and "mmap" in meta["Keywords"]
    classifiers = meta.get_all("Classifier") or []
    for minor in (10, 11):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers, classifiers
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_the_sdist_carries_what_its_tests_need() -> None:
    """MANIFEST.in takes the whole of tests/ (conftest.py included), the C sources the
    tests compile against, the docs the README links and the license."""
    lines = {ln.strip() for ln in (ROOT / "MANIFEST.in").read_text().splitlines()}
    for needed in ("graft tests", "graft csrc", "graft docs"):
        assert needed in lines, needed
    assert any(ln.startswith("include") and "LICENSE" in ln.split() for ln in lines), lines
    assert (ROOT / "tests" / "conftest.py").exists()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_option_in_help_is_in_the_readme_synopsis() -> None:
    readme = (ROOT / "README.md").read_text()
    synopsis = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    parser = build_parser()
    missing = [o for a in parser._actions for o in a.option_strings
               if o.startswith("--") and o != "--help" and o not in synopsis]
    for name, sub in _subparsers(parser).items():
        lines = [ln for ln in synopsis.splitlines() if f"mmapipc {name}" in ln]
        assert lines, f"no synopsis line for {name}"
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help" and option not in synopsis:
                    missing.append(f"{name} {option}")
            if not action.option_strings:
                assert action.help, f"{name} {action.dest}: no help text"
    assert missing == [], f"options missing from the README synopsis: {missing}"


def test_the_readme_and_docs_link_only_to_files_that_exist() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) >= 5, pages
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
    assert len((ROOT / "README.md").read_text().splitlines()) <= 170
