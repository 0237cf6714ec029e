"""User-facing text speaks of the product, not of its history.

The README, docs/*.md, every string in natstream's source (docstrings, error
messages, ``--help`` texts) and the rendered ``--help`` of every command say what
natstream does, not where it came from: no "the seed" (the prototype it grew from),
no "issue 6" (nor its "case 4": the benchmark cases have names). The project's history
belongs in CHANGELOG.md.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest
from click.testing import CliRunner

import natstream
from natstream._cli import main

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(natstream.__file__).parent
HISTORY = re.compile(
    r"\bthe seed\b|\bseed's\b|\bseed (?:form|protocol|example|behaviou?r|rule)s?\b"
    r"|\bissues? ?#?\d+|\bcases? \d\b",
    re.IGNORECASE,
)


def _strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal in a Python file."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    return [(t.start[0], t.string) for t in tokens if t.type == tokenize.STRING]


def _found(where: str, lines: list[tuple[int, str]]) -> list[str]:
    return [f"{where}:{n}: {m.group(0)!r}" for n, text in lines for m in HISTORY.finditer(text)]


def test_the_pattern_finds_history_and_spares_nkey_seeds() -> None:
    assert HISTORY.search("keeps the seed's signatures")
    assert HISTORY.search("checks them against issue 6's targets")
    assert HISTORY.search("(issue #12)")
    assert HISTORY.search("in rounds like case 1")
    assert not HISTORY.search("an NKey seed (SU...), nkeys_seed, an invalid seed")


def test_docs_tell_no_history() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = []
    for doc in docs:
        lines = doc.read_text(encoding="utf-8").splitlines()
        found += _found(str(doc.relative_to(ROOT)), list(enumerate(lines, 1)))
    assert found == []


def test_source_strings_tell_no_history() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += _found(str(path.relative_to(ROOT)), _strings(path))
    assert found == []


COMMANDS = [[], *([name] for name in main.commands)]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(["natstream", *c]))
def test_help_tells_no_history(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert HISTORY.findall(result.output) == []


def test_demo_help_says_what_it_shows() -> None:
    result = CliRunner().invoke(main, ["demo", "--help"])
    text = " ".join(result.output.split())
    for shown in ("ten replies", "error", "retries", "exactly once"):
        assert shown in text, shown


SECURITY_TESTS = ROOT / "tests" / "integration" / "test_security.py"


def _gap_tests() -> set[str]:
    """Tests of test_security.py that hold a known gap: xfail(strict=True), or run only
    with the fast paths on (the gap is in the fallback)."""
    tree = ast.parse(SECURITY_TESTS.read_text(encoding="utf-8"))
    found = set()
    for node in tree.body:
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
            marks = [ast.unparse(d) for d in node.decorator_list]
            if any("xfail" in m or m == "pytest.mark.fast_paths" for m in marks):
                found.add(node.name)
    return found


def test_security_known_gaps_are_todays() -> None:
    """docs/security.md's "Known gaps" names the test of each gap it lists (or says
    "none"), and names every test that holds a gap."""
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    gaps = text[text.index("**Known gaps") :]
    named = set(re.findall(r"`(test_\w+)`", gaps))
    if not named:
        assert re.match(r"\*\*Known gaps\.?\*\*:? none\b", gaps), "gaps without their tests"
    assert named == _gap_tests()
