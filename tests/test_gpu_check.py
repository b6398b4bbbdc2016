"""scripts/gpu_check.* without a GPU (issue 19): the one-call command its header documents fits
the device tool, the preflight names what is missing, and the text table covers every text
the check encodes. (The whole dry run: GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh.)"""
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _documented_call(text: str) -> str:
    m = re.search(r'run\(command="(.*?)", carry=\[(.*?)\], timeout_s=(\d+)\)', text, re.S)
    assert m, "the header documents the one-call command"
    return m


def test_the_documented_call_fits_the_device_tool():
    head = (ROOT / "scripts" / "gpu_check.sh").read_text()
    m = _documented_call(" ".join(line.lstrip("# ").strip() for line in head.splitlines()
                                  if line.startswith("#")))
    cmd, carry, timeout = m.group(1), m.group(2), int(m.group(3))
    assert len(cmd) < 2000 and '".whl"' in carry and timeout <= 600
    assert "bash scripts/gpu_check.sh" in cmd and "$OUT" in cmd
    readme = (ROOT / "README.md").read_text()
    flat = " ".join(readme.split())                           # the README gives the same call
    assert f'command="{" ".join(cmd.split())}"' in flat and f"timeout_s: {timeout}" in flat
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".whl/" in ignored                                 # wheels never get committed


def test_preflight_passes_here_and_names_a_stale_text_table(gc, tmp_path, monkeypatch):
    from napari_textdiff.core.textdiff import text_encoder as te
    from textdiff_testkit import make_tiny_bert

    class A:
        device = "cpu"

    monkeypatch.delenv(te.TEXT_TABLE_ENV, raising=False)
    assert gc.preflight(A())["ok"]
    enc = te.TextEncoder(str(make_tiny_bert(tmp_path / "bert")), max_length=8)
    table = te.save_text_table(tmp_path / "t.safetensors", enc, ["only this"])
    monkeypatch.setenv(te.TEXT_TABLE_ENV, str(table))
    res = gc.preflight(A())
    assert not res["ok"] and any("prepare" in m for m in res["missing"])
    A.device = "cuda"
    import torch
    if not torch.cuda.is_available():
        monkeypatch.delenv(te.TEXT_TABLE_ENV)
        assert any("CUDA GPU" in m for m in gc.preflight(A())["missing"])


def test_the_check_texts_include_every_sample_description(gc):
    import json

    from napari_textdiff.cli.demo import SAMPLES

    desc = json.loads((ROOT / "src/napari_textdiff/sample_data/descriptions.json").read_text())
    texts = gc.check_texts()
    assert all(desc[name]["description"] in texts for name in SAMPLES.values())
    assert gc.CHECK_TEXT in texts
