"""What a user reads speaks of the kit and its users: no development sessions, issue numbers,
`../shared` folders, "the seed team" or an unnamed "this machine" in the READMEs, docs,
notebooks, presets, or the docstrings of utils and benchmarks (history is git log's)."""

import ast
import json
import re
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parent.parent
DEVELOPMENT = {
    "a development session": re.compile(
        r"\bsessions? \d+|\b(this|that|previous|earlier|later|next|last) session\b|"
        r"\bsession's\b", re.I),
    "an issue number": re.compile(r"\bissues? #?\d+\b|(?<![\w/&])#\d{1,4}\b", re.I),
    "the ../shared folder": re.compile(r"\.\./shared\b"),
    "the seed team": re.compile(r"\bseed team\b", re.I),
    "an unnamed machine": re.compile(r"\bthis machine\b", re.I),
}


def docstrings(path: Path) -> list[tuple[str, str]]:
    """Every docstring of a Python file (module, classes, functions) with where it starts."""
    tree = ast.parse(path.read_text())
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(
        n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    found = []
    for node in nodes:
        doc = ast.get_docstring(node, clean=False)
        if doc:
            found.append((f"line {node.body[0].lineno}", doc))
    return found


def notebook_text(path: Path) -> list[tuple[str, str]]:
    """Every cell's source of a notebook, with its cell number."""
    return [(f"cell {i}", "".join(c["source"])) for i, c in
            enumerate(json.loads(path.read_text())["cells"])]


def user_texts() -> dict[str, list[tuple[str, str]]]:
    """The user-facing texts: `file` → (where it starts, text)."""
    texts = {}
    docs = [*KIT.glob("README*"), *KIT.glob("*/README*"), *KIT.glob("docs/**/*.md"),
            *KIT.glob("presets/*.yaml"), *KIT.glob("data/*.md")]
    for path in docs:
        texts[str(path.relative_to(KIT))] = [("line 1", path.read_text())]
    for path in sorted((KIT / "notebooks").glob("*.ipynb")):
        texts[str(path.relative_to(KIT))] = notebook_text(path)
    for path in [*KIT.glob("utils/**/*.py"), *KIT.glob("benchmarks/*.py")]:
        texts[str(path.relative_to(KIT))] = docstrings(path)
    return texts


def find_development_talk(texts: dict[str, list[tuple[str, str]]]) -> list[str]:
    """`file, where: what (the words)` for every match of DEVELOPMENT (where: the line, or a
    notebook's cell and its line)."""
    hits = []
    for name, parts in sorted(texts.items()):
        for where, text in parts:
            for offset, line in enumerate(text.splitlines()):
                for what, pattern in DEVELOPMENT.items():
                    for match in pattern.finditer(line):
                        kind, start = where.split()
                        place = (f"line {int(start) + offset}" if kind == "line"
                                 else f"cell {start}, line {offset + 1}")
                        hits.append(f"{name}, {place}: {what} ({match.group(0)!r})")
    return hits


@pytest.mark.parametrize("text, what", [
    ("measured in session 5", "a development session"),
    ("on this session's slower cores", "a development session"),
    ("see issue 32", "an issue number"), ("(#17)", "an issue number"),
    ("copy from ../shared/her2st", "the ../shared folder"),
    ("the seed team's loss", "the seed team"), ("timed on this machine", "an unnamed machine"),
])
def test_each_kind_of_development_talk_is_found(text, what):
    hits = find_development_talk({"f": [("line 3", text)]})
    assert len(hits) == 1 and hits[0].startswith(f"f, line 3: {what} ("), hits


@pytest.mark.parametrize("text", [
    "if the Colab session dies, run it again", "## 3 · Train", "colour #ff0000",
    "the kit's shared cache", "a 2-core machine like Colab's free one",
])
def test_user_words_are_not_taken_for_development_talk(text):
    assert find_development_talk({"f": [("cell 2", text)]}) == []


def test_user_facing_text_does_not_speak_of_the_kits_development():
    hits = find_development_talk(user_texts())
    assert not hits, f"{len(hits)} places speak of the kit's development:\n" + "\n".join(hits)
