"""Issue 18 fault trial, the reading/writing half: each test is one item of the trial and
failed before its fix (see docs/RELIABILITY.md)."""
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_textdiff.core import io
from napari_textdiff.core.bundle import (BundleError, WriteError, atomic_write, check_writable,
                                         read_bundle_header, save_bundle)
from napari_textdiff.core.models import Example


# ---------------------------------------------------------------- 5: no litter after kill -9
def test_temp_file_of_a_killed_save_is_removed_by_the_next_save(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    code = textwrap.dedent(f"""
        import sys, time
        from napari_textdiff.core.bundle import atomic_write
        def write(tmp):
            open(tmp, "wb").write(b"half")
            print("writing", flush=True)
            time.sleep(60)
        atomic_write({str(target)!r}, write)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.kill()                                   # kill -9 mid-save
        proc.wait()
    litter = [f for f in os.listdir(tmp_path) if f != "model.safetensors"]
    assert len(litter) == 1 and litter[0].startswith(".model.safetensors.")
    assert target.read_bytes() == b"old"              # the old file is intact
    atomic_write(target, lambda t: open(t, "wb").write(b"new"))
    assert os.listdir(tmp_path) == ["model.safetensors"]
    assert target.read_bytes() == b"new"


def test_a_live_concurrent_save_keeps_its_temp_file(tmp_path):
    target = tmp_path / "m.bin"
    live = tmp_path / f".m.bin.{os.getppid()}.abcd1234.tmp.bin"    # our parent is alive
    live.write_bytes(b"x")
    atomic_write(target, lambda t: open(t, "wb").write(b"new"))
    assert live.exists()


# ---------------------------------------------------------------- 14: errors name the user's path
def test_write_errors_name_the_users_file_not_the_temp(tmp_path, monkeypatch):
    import napari_textdiff.core.bundle as bundle

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle.os, "fsync", full)
    target = tmp_path / "out.csv"
    target.write_text("old,1\n")
    with pytest.raises(WriteError) as e:
        bundle.atomic_write_bytes(target, b"new,2\n")
    msg = str(e.value)
    assert str(target) in msg and "No space left" in msg and ".tmp" not in msg
    assert "free some disk space" in msg
    assert target.read_text() == "old,1\n" and os.listdir(tmp_path) == ["out.csv"]


def test_check_writable_names_the_path_and_what_to_do(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(WriteError, match="a_file"):           # a folder below a file
        check_writable(f / "sub" / "m.safetensors")
    with pytest.raises(WriteError, match="is a folder"):
        check_writable(tmp_path)
    assert check_writable(tmp_path / "new" / "m.safetensors").parent.is_dir()


# ---------------------------------------------------------------- 6: one series per page
def test_multi_series_tiff_pages_are_addressable(tmp_path):
    p = tmp_path / "loop.tif"
    for i in range(4):                                # as tifffile writes pages in a loop
        tifffile.imwrite(p, np.full((8, 10), 10 * i + 1, np.uint8), append=True)
    for k in range(4):
        assert io.read_image(p, plane=k)[0, 0] == 10 * k + 1
    with pytest.raises(io.ImageReadError, match="plane 99 is out of range"):
        io.read_image(p, plane=99)
    with pytest.raises(io.ImageReadError, match=r"choose one with plane=0\.\.3"):
        io.read_image(p)
    q = tmp_path / "sizes.tif"                        # pages of different sizes
    for i, shape in enumerate([(8, 10), (6, 7), (9, 9)]):
        tifffile.imwrite(q, np.full(shape, i, np.uint8), append=True)
    assert io.read_image(q, plane=1).shape == (6, 7)
    assert io.read_image(q, plane=2).shape == (9, 9)


# ---------------------------------------------------------------- 11a: plane on a single plane
@pytest.mark.parametrize("name", ["one.png", "one.tif", "one.npy"])
def test_a_plane_a_single_plane_file_lacks_is_refused(tmp_path, name):
    p = tmp_path / name
    a = np.zeros((6, 6), np.uint8)
    if name.endswith(".npy"):
        np.save(p, a)
    else:
        io.write_image(p, a)
    assert io.read_image(p, plane=0).shape == (6, 6)
    with pytest.raises(io.ImageReadError, match="plane 1 is out of range.*only plane 0"):
        io.read_image(p, plane=1)


# ---------------------------------------------------------------- 7: 12-bit data in 16 bits
def _gradient(bits):
    return (np.linspace(0, 2 ** bits - 1, 64 * 64).reshape(64, 64)).round().astype(np.uint16)


def test_12_bit_data_in_16_bit_files_is_as_bright_as_8_bit(tmp_path):
    img12 = _gradient(12)
    eight = (img12 / 4095 * 255).round().astype(np.uint8)
    io.write_image(tmp_path / "a8.png", eight)
    io.write_image(tmp_path / "a12.png", img12)
    tifffile.imwrite(tmp_path / "a12.tif", img12)
    ref = io.load_image(tmp_path / "a8.png")
    for name in ("a12.png", "a12.tif"):
        x = io.load_image(tmp_path / name)
        assert abs(float(x.mean()) - float(ref.mean())) < 0.01, name
        assert float(x.max()) == pytest.approx(1.0)
    # full-range 16-bit data keeps dividing by 65535
    full = _gradient(16)
    assert float(io.normalize_image(full).max()) == pytest.approx(1.0)


def test_declared_bit_depth_is_used_and_a_dark_image_warned(tmp_path):
    # MaxSampleValue 4095 declared, but the data only reaches 200: dark, and said so
    a = np.full((16, 16), 200, np.uint16)
    p = tmp_path / "dark.tif"
    tifffile.imwrite(p, a, extratags=[(281, "H", 1, 4095, True)])
    with pytest.warns(UserWarning, match="dark.tif.*under 1/16"):
        x = io.load_image(p)
    assert float(x.max()) == pytest.approx(200 / 4095, rel=1e-4)


# ---------------------------------------------------------------- 13: large local PNGs
def test_a_png_above_pillows_bomb_limit_is_read(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 400), np.uint8)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)   # 120 000 px is "a bomb" now
    assert io.read_image(p).shape == (300, 400)
    assert io.image_shape(p) == (300, 400)
    assert Image.MAX_IMAGE_PIXELS == 1000                   # the global guard is restored


# ---------------------------------------------------------------- 10: one mask rule
def test_one_mask_rule_for_training_examples():
    img = np.zeros((4, 4, 3), np.float32)
    soft = np.full((4, 4), 0.4, np.float32)
    soft[0, 0] = 0.6
    m = Example(img, soft, "t", "a").mask
    assert m.dtype == np.uint8 and m.sum() == 1            # as read_mask: > 0.5
    with pytest.raises(ValueError, match="mask of b.*NaN"):
        Example(img, np.full((4, 4), np.nan, np.float32), "t", "b")
    with pytest.raises(ValueError, match="mask of c: no mask given"):
        Example(img, None, "t", "c")
    assert Example(img, np.eye(4, dtype=np.int32) * 7, "t").mask.max() == 7   # labels kept


def test_read_mask_follows_the_same_rule(tmp_path):
    p = tmp_path / "m.tif"
    tifffile.imwrite(p, np.full((4, 4), np.nan, np.float32))
    with pytest.raises(io.ImageReadError, match="m.tif.*NaN"):
        io.read_mask(p)


# ---------------------------------------------------------------- 8: text that is not a string
@pytest.mark.parametrize("bad", [42, b"left", ["left"]])
def test_non_string_text_is_refused(bad):
    with pytest.raises(TypeError, match="must be a str"):
        Example(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), bad)


def test_lone_surrogates_are_cleaned():
    from napari_textdiff.core.normalize import clean_text

    assert clean_text("left \udcff side") == "left \ufffd side"
    assert clean_text(None) == ""


# ---------------------------------------------------------------- 11b: truncated model file
def test_truncated_model_is_refused_by_header_and_info(tmp_path, capsys):
    import torch

    from napari_textdiff.cli import main

    p = tmp_path / "m.safetensors"
    save_bundle(p, "mgcc", {"w": torch.zeros(1000)}, {"a": 1})
    assert read_bundle_header(p)["kind"] == "mgcc"
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    with pytest.raises(BundleError, match="truncated"):
        read_bundle_header(p)
    assert main(["info", str(p)]) == 2
    err = capsys.readouterr().err
    assert "m.safetensors" in err and "truncated" in err and "100 bytes" in err


def test_text_encoder_refuses_non_strings_and_cleans_surrogates(tmp_path):
    from napari_textdiff.core.textdiff.text_encoder import TextEncoder
    from textdiff_testkit import make_tiny_bert

    enc = TextEncoder(str(make_tiny_bert(tmp_path / "bert")), max_length=12)
    with pytest.raises(TypeError, match="must be a str, got int"):
        enc.encode(42)
    h, m, _ = enc.encode("left \udcff")        # a transformers traceback before
    assert h.shape[0] == 12 and bool(m[0])
