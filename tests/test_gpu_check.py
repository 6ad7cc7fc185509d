"""benchmarks/gpu_check.py at CPU sizes (`--tiny`): the same code paths as on a GPU (the kit's
unit setup and loop, a hub preset's architecture through the feature extractor, the auto batch
size), one table row per check, exit code 0; a planted NaN loss makes it exit non-zero. The
script's `main` is imported, so a kit API change breaks this test, not a check nobody runs."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import KIT_ROOT

from utils.losses import LOSS_TERMS

TINY = ["--tiny", "--device", "cpu"]


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
    spec = importlib.util.spec_from_file_location("gpu_check",
                                                  KIT_ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(out: str, checks: tuple[str, ...]) -> dict[str, str]:
    """The printed table's line of each check (the line that starts with its name)."""
    lines = [line.strip() for line in out.splitlines()]
    return {check: next((line for line in lines if line.startswith(check + " ")), None)
            for check in checks}


def test_tiny_run_prints_every_check_and_exits_0(gpu_check, capsys):
    assert gpu_check.main(TINY) == 0
    out = capsys.readouterr().out
    rows = table_rows(out, gpu_check.CHECKS)
    assert all(rows.values()), out
    assert rows["fine-tune fp32"].split()[-3:] == ["ok", "loss", "fell"], out
    for check in ("fine-tune fp16 + GradScaler", "fine-tune bf16"):
        assert rows[check].split()[-4:] == ["skipped", "skipped:", "no", "CUDA"], out
    assert " ok " in rows["hub ViT features"] and "float16" in rows["hub ViT features"], out
    assert " ok " in rows["auto batch size"], out
    assert "goal ≤ 1.1" in out and "a goal, not a failure" in out


def test_a_nan_loss_makes_it_exit_non_zero(gpu_check, monkeypatch, capsys):
    monkeypatch.setitem(LOSS_TERMS, "mse", lambda pred, target: (pred * float("nan")).mean())
    assert gpu_check.main([*TINY, "--steps", "2"]) == 1
    out = capsys.readouterr().out
    row = table_rows(out, gpu_check.CHECKS)["fine-tune fp32"]
    assert " FAIL " in row and "non-finite loss at 2 step(s)" in row, out
    assert "FAILED: fine-tune fp32" in out


def test_no_cuda_without_tiny_says_what_to_do(gpu_check, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    assert "--tiny --device cpu" in capsys.readouterr().out
