"""The package's shape: `import utils` stays light, the import graph points one way (no cycles,
no function-local import of a sibling module), and every registry matches config's names."""

import ast
import subprocess
import sys
from pathlib import Path

import utils

HEAVY = ("torch", "timm", "umap", "pytorch_grad_cam", "lpips", "albumentations", "matplotlib",
         "sklearn", "papermill", "cv2", "numba")
# Modules a notebook without a network (01, 02, 07) imports: numpy/pandas only at import time.
LIGHT = ("metric", "cv", "slices", "data", "runs", "config", "choices", "places", "files",
         "plots", "eda", "genes", "ensemble", "dev.pipeline", "dev.demo")
PACKAGE = Path(utils.__file__).parent


def test_import_utils_loads_no_heavy_library():
    code = (f"import sys, utils, {', '.join('utils.' + m for m in LIGHT)}; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", f"importing utils pulled in heavy libraries: {out}"


def test_submodules_load_lazily():
    code = "import sys, utils; a = 'utils.metric' in sys.modules; utils.metric; print(a)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def _sibling_imports(path: Path) -> tuple[set[str], list[str]]:
    """Kit modules a file imports, and those it imports inside a function."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    names, local = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("utils"):
            target = node.module.split(".")[1] if "." in node.module else None
            targets = [target] if target else [a.name for a in node.names]
            names.update(targets)
            if id(node) not in top:
                local += targets
    return names, local


def test_import_graph_has_no_cycle_and_no_function_local_sibling_import():
    modules = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph, local = {}, {}
    for name, path in modules.items():
        imports, inside = _sibling_imports(path)
        graph[name] = imports & set(modules) - {name}
        if inside:
            local[name] = inside
    assert not local, f"function-local imports of sibling modules: {local}"
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, f"import cycle: {' → '.join([*trail, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])
    assert graph["choices"] == set(), "choices imports nothing from the kit"
    assert graph["config"] == {"choices"}, "config imports only the kit's vocabularies"


def test_registries_match_the_names_config_accepts():
    from utils import augment, choices, cv, ensemble, genes, losses, train

    assert sorted(train.RECIPES) == sorted(choices.RECIPES)
    assert sorted(cv.SPLITTERS) == sorted(choices.SPLITTERS)
    assert list(genes.STRATEGIES) == list(choices.STRATEGIES)
    assert ensemble.list_steps() == list(choices.POSTPROCESS_STEPS)
    assert augment.list_policies() == sorted(choices.AUGMENT_POLICIES)
    assert losses.list_losses() == list(choices.LOSSES)
