"""A hub that refuses (gated model, no such repo, offline) gives one clear message that names
the model page and the fix, without the hub's traceback; the kit sets albumentations' switch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("timm")
from huggingface_hub import errors  # noqa: E402

from utils import models  # noqa: E402
from utils.models import HubAccessError, create_backbone  # noqa: E402


def _response(code: int):
    """A bare HTTP response of huggingface_hub's client (httpx2 from 2.x, requests before)."""
    try:
        import httpx2
    except ImportError:
        import requests

        response = requests.Response()
        response.status_code = code
        return response
    return httpx2.Response(code, request=httpx2.Request("GET",
                                                        "https://huggingface.co/MahmoodLab/uni"))


REFUSALS = {
    "gated": (errors.GatedRepoError("Access to model MahmoodLab/uni is restricted.",
                                    response=_response(403)), "is a gated model: accept"),
    "not found": (errors.RepositoryNotFoundError("404 Client Error", response=_response(404)),
                  "check the name"),
    "offline": (errors.LocalEntryNotFoundError("cannot find the requested files in the cache"),
                "no network access to the hub"),
    "network": (OSError("Connection reset by peer"), "the download failed"),
}


@pytest.mark.parametrize("kind", REFUSALS)
def test_refusal_names_the_model_page_and_the_fix(kind, monkeypatch):
    error, says = REFUSALS[kind]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if kind == "offline" else "0")

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(models, "_create", refuse)
    with pytest.raises(HubAccessError) as caught:
        create_backbone("uni", pretrained=True)
    message = str(caught.value)
    assert says in message and "https://huggingface.co/MahmoodLab/uni" in message
    assert "PRETRAINED" in message and f"(hub said: {str(error).splitlines()[0]})" in message
    if kind in ("gated", "not found"):
        assert "login()" in message and "HF_TOKEN" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no hub traceback


def test_timm_names_point_to_their_timm_hub_page(monkeypatch):
    def refuse(*args, **kwargs):
        raise errors.LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(models, "_create", refuse)
    with pytest.raises(HubAccessError, match=r"huggingface\.co/timm/tf_efficientnet_lite0\.in1k"):
        create_backbone("tf_efficientnet_lite0", pretrained=True)


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1")
def test_real_offline_hub_gives_the_message():
    with pytest.raises(HubAccessError, match="no network access.*huggingface.co/MahmoodLab/uni"):
        create_backbone("hf-hub:MahmoodLab/uni", pretrained=True)


def test_importing_the_kit_switches_off_albumentations_update_check():
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    for module in ("utils", "utils.augment"):
        code = f"import os, {module}; print(os.environ.get('NO_ALBUMENTATIONS_UPDATE'))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True).stdout.strip()
        assert out == "1", module
