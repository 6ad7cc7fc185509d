"""Write the setup cell into every notebook, and — for whoever publishes the kit — its address.

    python -m utils.dev.publish                       # notebooks/setup_cell.py → every notebook
    python -m utils.dev.publish --repo https://github.com/<you>/mai-kit [--branch main]
    python -m utils.dev.publish --repo ""             # back to no address (the committed state)

The setup cell has one source, `notebooks/setup_cell.py`; this copies it into the first code
cell (id `setup`) of every numbered notebook. `--repo` first sets the cell's `KIT_REPO` line to
that URL (after checking with `git ls-remote` that it answers) and writes the Open in Colab /
Open in Kaggle badges of every notebook into README.md and notebooks/README.md, between the
`<!-- badges -->` markers; a repository not on GitHub gets `KIT_REPO` but no badges (Colab
opens notebooks from GitHub only). The kit never carries an address it has not been given.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

from utils.dev.pipeline import list_notebooks
from utils.places import kit_root

SETUP_SOURCE = "notebooks/setup_cell.py"
SETUP_ID = "setup"
REPO_LINE = re.compile(r'^KIT_REPO = "[^"]*"', re.M)
BADGE_FILES = ("README.md", "notebooks/README.md")
BADGES = re.compile(r"(<!-- badges -->\n).*?(<!-- /badges -->)", re.S)
GITHUB = re.compile(r"https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?/?")
COLAB_SVG = "https://colab.research.google.com/assets/colab-badge.svg"
KAGGLE_SVG = "https://kaggle.com/static/images/open-in-kaggle.svg"
UNPUBLISHED = ("Open in Colab / Kaggle badges: none yet, the kit has no published address. "
               "Whoever publishes it runs\n`python -m utils.dev.publish --repo <its GitHub URL>`, "
               "which writes them here and sets `KIT_REPO` in every notebook.\n")


def setup_source(root: Path | None = None) -> str:
    """The setup cell's code, as every notebook carries it (no trailing newline)."""
    return (Path(root or kit_root()) / SETUP_SOURCE).read_text().rstrip("\n")


def kit_repo(source: str) -> str:
    """The URL on the cell's KIT_REPO line ("" when unpublished)."""
    match = REPO_LINE.search(source)
    if not match:
        raise ValueError(f"{SETUP_SOURCE} has no line starting with KIT_REPO = \"...\"")
    return match.group(0).split('"')[1]


def with_repo(source: str, repo: str) -> str:
    """The cell's code with KIT_REPO set to `repo`."""
    kit_repo(source)
    return REPO_LINE.sub(f'KIT_REPO = "{repo}"', source, count=1)


def check_reachable(repo: str) -> None:
    """Refuse an address git cannot read (so no notebook points at a repository that is not
    there)."""
    try:
        done = subprocess.run(["git", "ls-remote", "-q", repo, "HEAD"], capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise ValueError(f"git ls-remote {repo} did not answer within 60 s") from None
    if done.returncode:
        raise ValueError(f"{repo} is not a git repository git can read ({done.stderr.strip()}); "
                         "push the kit there first, or pass --no-check")


def write_setup_cells(source: str, notebooks: list[Path] | None = None) -> list[Path]:
    """Put `source` into the setup cell (first code cell, id `setup`) of every notebook,
    outputs cleared; returns the notebooks that changed."""
    changed = []
    for path in notebooks or list_notebooks():
        text = path.read_text()
        nb = json.loads(text)
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        if not code or code[0].get("id") != SETUP_ID:
            raise ValueError(f"{path.name}: the first code cell must have id '{SETUP_ID}'")
        lines = source.splitlines(keepends=True)
        code[0].update(source=lines, outputs=[], execution_count=None)
        new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def badge_links(repo: str, notebook: str, branch: str = "main") -> tuple[str, str] | None:
    """(Colab badge, Kaggle badge) in Markdown for one notebook; None off GitHub."""
    match = GITHUB.fullmatch(repo)
    if not match:
        return None
    blob = f"{match.group(1)}/blob/{branch}/notebooks/{notebook}"
    return (f"[![Open In Colab]({COLAB_SVG})](https://colab.research.google.com/github/{blob})",
            f"[![Open in Kaggle]({KAGGLE_SVG})](https://kaggle.com/kernels/welcome?src="
            f"https://github.com/{blob})")


def badge_table(repo: str, branch: str, notebooks: list[str]) -> str:
    """The badge block: one row per notebook, or the note saying how to get them."""
    rows = [(nb, badge_links(repo, nb, branch)) for nb in notebooks] if repo else []
    if not rows or rows[0][1] is None:
        note = "" if not repo else (f"`KIT_REPO` is {repo}; badges need a GitHub address.\n")
        return note or UNPUBLISHED
    lines = ["| notebook | Colab | Kaggle |", "|---|---|---|"]
    lines += [f"| `{Path(nb).stem}` | {colab} | {kaggle} |" for nb, (colab, kaggle) in rows]
    return "\n".join(lines) + "\n"


def write_badges(repo: str, branch: str = "main", root: Path | None = None) -> list[Path]:
    """Rewrite the badge block of each BADGE_FILES file; returns the files that changed."""
    root = Path(root or kit_root())
    names = [p.name for p in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    block = badge_table(repo, branch, names)
    changed = []
    for name in BADGE_FILES:
        path = root / name
        text = path.read_text()
        if not BADGES.search(text):
            raise ValueError(f"{name} has no <!-- badges --> ... <!-- /badges --> block")
        new = BADGES.sub(lambda m: m.group(1) + block + m.group(2), text, count=1)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def publish(repo: str | None = None, branch: str = "main", check: bool = True,
            root: Path | None = None) -> list[Path]:
    """Copy the setup cell into every notebook; with `repo` (a URL, or "" for none) first set
    KIT_REPO in its source and rewrite the badges. Returns the files that changed."""
    root = Path(root or kit_root())
    source_file = root / SETUP_SOURCE
    source = setup_source(root)
    changed = []
    if repo is not None:
        repo = repo.strip()
        if repo and check:
            check_reachable(repo)
        if with_repo(source, repo) != source:
            source = with_repo(source, repo)
            source_file.write_text(source + "\n")
            changed.append(source_file)
        changed += write_badges(repo, branch, root)
    notebooks = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    return changed + write_setup_cells(source, notebooks)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", help="the kit's git URL ('' for none); omitted: keep it")
    parser.add_argument("--branch", default="main", help="branch the badges open")
    parser.add_argument("--no-check", action="store_true", help="skip git ls-remote")
    args = parser.parse_args(argv)
    changed = publish(args.repo, args.branch, not args.no_check)
    repo = kit_repo(setup_source())
    print(f"KIT_REPO = {repo!r}; changed: "
          f"{', '.join(str(p.relative_to(kit_root())) for p in changed) or 'nothing'}")
    return changed


if __name__ == "__main__":
    main()
