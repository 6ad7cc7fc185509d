"""The benchmarks stay runnable as documented: from the kit root, as modules."""

import os
import re
import subprocess
import sys

from conftest import KIT_ROOT


def test_benchmarks_run_as_their_docstrings_say_from_a_plain_clone():
    """Every benchmark's usage is `python -m benchmarks.<its name>` (a script run by path would
    not find `utils` without an installed kit), and one that imports the kit at the top starts
    that way with no PYTHONPATH."""
    for path in sorted((KIT_ROOT / "benchmarks").glob("*.py")):
        text = path.read_text()
        assert not re.search(r"python benchmarks/(?!gpu_check)", text), path.name
        if path.stem not in ("__init__", "gpu_check"):
            assert f"-m benchmarks.{path.stem}" in text, f"{path.name}: usage line"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.her2st_finetune", "--help"],
                          cwd=KIT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--freeze" in done.stdout, done.stderr
