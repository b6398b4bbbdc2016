"""Reading, normalising and writing images and masks; every failure names the file."""
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_textdiff.core import io
from napari_textdiff.core.io import ImageReadError

rng = np.random.default_rng(0)


# ------------------------------------------------------------------------- normalisation
def test_normalize_dtype_rules():
    u8 = np.array([[0, 255], [51, 102]], np.uint8)
    np.testing.assert_allclose(io.normalize_image(u8)[..., 0], u8 / 255, atol=1e-7)
    u16 = np.array([[0, 65535], [4095, 1]], np.uint16)
    np.testing.assert_allclose(io.normalize_image(u16)[..., 0], u16 / 65535, atol=1e-7)
    f = rng.random((5, 7)).astype(np.float64)          # already in [0, 1]: kept
    out = io.normalize_image(f)
    assert out.dtype == np.float32 and out.shape == (5, 7, 1)
    np.testing.assert_allclose(out[..., 0], f, atol=1e-7)
    np.testing.assert_array_equal(io.normalize_image(out), out)   # idempotent
    # float outside [0, 1] and other ints: robust 0.5/99.5 percentile min-max
    hu = np.linspace(-1000, 3000, 1000).reshape(20, 50)
    hu[0, 0] = 1e6                                       # an outlier is clipped, not stretched
    n = io.normalize_image(hu)[..., 0]
    lo, hi = np.percentile(hu, [0.5, 99.5])
    np.testing.assert_allclose(n, np.clip((hu - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert n.min() == 0 and n.max() == 1
    i32 = np.arange(100, dtype=np.int32).reshape(10, 10) - 50
    assert io.normalize_image(i32).min() == 0 and io.normalize_image(i32).max() == 1
    assert io.normalize_image(np.full((3, 3), 7, np.int16)).max() == 0   # constant
    assert io.normalize_image(np.array([[True, False]])).tolist() == [[[1.0], [0.0]]]
    nan = np.array([[np.nan, 0.5], [0.2, np.inf]])
    assert np.isfinite(io.normalize_image(nan)).all()


def test_normalize_channels():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 10
    out = io.normalize_image(rgba)
    assert out.shape == (2, 3, 3) and np.all(out[..., 0] == 1) and np.all(out[..., 1:] == 0)
    gray = io.normalize_image(np.full((2, 2), 255, np.uint8), channels=3)
    assert gray.shape == (2, 2, 3) and np.all(gray == 1)
    lum = io.normalize_image(rgba, channels=1)
    assert lum.shape == (2, 3, 1)
    np.testing.assert_allclose(lum, 0.299, atol=1e-6)      # BT.601 luminance of pure red
    chw = np.zeros((3, 10, 12), np.uint8)
    assert io.normalize_image(chw).shape == (10, 12, 3)
    assert io.normalize_image(np.zeros((4, 4, 2), np.uint8)).shape == (4, 4, 1)  # gray+alpha
    with pytest.raises(ValueError, match="stack"):
        io.normalize_image(np.zeros((10, 20, 20)))
    with pytest.raises(ValueError, match="dtype"):
        io.normalize_image(np.zeros((4, 4), np.complex64))
    with pytest.raises(ValueError, match="channels"):
        io.normalize_image(np.zeros((4, 4)), channels=2)


# ----------------------------------------------------------------------- file round trips
@pytest.mark.parametrize("suffix,shape", [(s, sh) for s in (".png", ".tif", ".bmp")
                                           for sh in ((9, 13), (9, 13, 3), (9, 13, 4))
                                           if not (s == ".bmp" and len(sh) == 3 and sh[2] == 4)])
def test_uint8_round_trip(tmp_path, suffix, shape):
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    p = io.write_image(tmp_path / f"x{suffix}", a)
    back = io.read_image(p)
    np.testing.assert_array_equal(back, a)
    img = io.load_image(p)
    assert img.dtype == np.float32 and img.shape == (9, 13, 1 if len(shape) == 2 else 3)


def test_16bit_and_float_tiff_and_png(tmp_path):
    a16 = rng.integers(0, 65536, (8, 6), dtype=np.uint16)
    for name in ("a.tif", "a.png"):
        p = io.write_image(tmp_path / name, a16)
        back = io.read_image(p)
        assert back.dtype == np.uint16
        np.testing.assert_array_equal(back, a16)
        np.testing.assert_allclose(io.load_image(p)[..., 0], a16 / 65535, atol=1e-6)
    f = rng.random((8, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(io.read_image(io.write_image(tmp_path / "f.tiff", f)), f)
    # float PNG writing scales [0, 1] to 8 bits
    back = io.load_image(io.write_image(tmp_path / "f.png", f))
    np.testing.assert_allclose(back, f, atol=1 / 255)


def test_jpeg(tmp_path):
    a = np.full((16, 16, 3), 128, np.uint8)
    back = io.read_image(io.write_image(tmp_path / "x.jpg", a))
    assert back.shape == (16, 16, 3) and np.abs(back.astype(int) - 128).max() <= 2


def test_multipage_and_ome_tiff_need_a_plane(tmp_path):
    stack = rng.integers(0, 255, (5, 8, 9), dtype=np.uint8)
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, stack)
    with pytest.raises(ImageReadError, match=r"stack\.tif.*5 planes.*plane=0\.\.4"):
        io.read_image(p)
    np.testing.assert_array_equal(io.read_image(p, plane=3), stack[3])
    with pytest.raises(ImageReadError, match="out of range"):
        io.read_image(p, plane=5)
    ome = tmp_path / "z.ome.tif"
    tifffile.imwrite(ome, stack[:3], ome=True, metadata={"axes": "ZYX"})
    with pytest.raises(ImageReadError, match="3 planes"):
        io.load_image(ome)
    np.testing.assert_array_equal(io.read_image(ome, plane=2), stack[2])
    rgb = rng.integers(0, 255, (8, 9, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(io.read_image(tmp_path / "rgb.tif"), rgb)
    ome_rgb = tmp_path / "rgb.ome.tif"
    tifffile.imwrite(ome_rgb, np.moveaxis(rgb, -1, 0), ome=True, photometric="minisblack",
                     metadata={"axes": "CYX"})
    np.testing.assert_array_equal(io.read_image(ome_rgb), rgb)   # C of 3 = colour channels
    # a 3-D .npy stack also needs a plane
    np.save(tmp_path / "s.npy", stack)
    with pytest.raises(ImageReadError, match="5 planes"):
        io.read_image(tmp_path / "s.npy")


def _write_dicom(path, raw, photometric="MONOCHROME2", **extra):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = raw.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_rescale_window_and_monochrome1(tmp_path):
    raw = np.array([[0, 50], [100, 200]], np.uint16)      # -> HU -100, 0, 100, 300
    kw = dict(RescaleSlope=2, RescaleIntercept=-100, WindowCenter=0, WindowWidth=201)
    p = _write_dicom(tmp_path / "a.dcm", raw, **kw)
    x = io.read_image(p)
    # DICOM linear window: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped to [0, 1]
    expected = np.clip((np.array([[-100, 0], [100, 300]]) + 0.5) / 200 + 0.5, 0, 1)
    np.testing.assert_allclose(x, expected, atol=1e-6)
    np.testing.assert_allclose(io.load_image(p)[..., 0], expected, atol=1e-6)
    p1 = _write_dicom(tmp_path / "b.dcm", raw, photometric="MONOCHROME1", **kw)
    np.testing.assert_allclose(io.read_image(p1), 1 - expected, atol=1e-6)
    # without a window: rescaled values, then robust min-max in normalize_image
    p2 = _write_dicom(tmp_path / "noext", raw, RescaleSlope=2, RescaleIntercept=-100)
    np.testing.assert_allclose(io.read_image(p2), [[-100, 0], [100, 300]])  # found by magic


def test_pydicom_sample_file_if_present():
    from pydicom.data import get_testdata_files
    files = get_testdata_files("CT_small.dcm")
    if not files:
        pytest.skip("pydicom test data absent")
    img = io.load_image(files[0])
    assert img.shape == (128, 128, 1) and 0 <= img.min() and img.max() <= 1


# ------------------------------------------------------------------------------ failures
def test_errors_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match=r"nope\.png: file not found"):
        io.read_image(tmp_path / "nope.png")
    txt = tmp_path / "notes.png"
    txt.write_text("this is not an image")
    with pytest.raises(ImageReadError, match=r"notes\.png.*not a readable image"):
        io.load_image(txt)
    good = tmp_path / "full.tif"
    tifffile.imwrite(good, rng.integers(0, 255, (64, 64), dtype=np.uint8))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageReadError, match=r"cut\.tif"):
        io.read_image(cut)
    png = io.write_image(tmp_path / "ok.png", rng.integers(0, 255, (64, 64), dtype=np.uint8))
    cutpng = tmp_path / "cut.png"
    cutpng.write_bytes(png.read_bytes()[:100])
    with pytest.raises(ImageReadError, match=r"cut\.png"):
        io.read_image(cutpng)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        io.read_image(tmp_path / "empty.png")
    with pytest.raises(ImageReadError, match="folder"):
        io.read_image(tmp_path)
    np.save(tmp_path / "c.npy", np.zeros((4, 4), np.complex64))
    with pytest.raises(ImageReadError, match=r"c\.npy.*dtype"):
        io.load_image(tmp_path / "c.npy")
    assert issubclass(ImageReadError, ValueError)


def test_check_same_shape():
    io.check_same_shape(np.zeros((4, 5, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"m\.png.*\(4, 6\).*i\.png.*4x5"):
        io.check_same_shape(np.zeros((4, 5, 3)), np.zeros((4, 6)), "/a/i.png", "/a/m.png")


# ---------------------------------------------------------------------------------- masks
def test_binary_mask_round_trip_and_conventions(tmp_path):
    m = np.zeros((6, 7), np.uint8)
    m[1:4, 2:5] = 1
    for name in ("m.png", "m.tif"):
        p = io.write_mask(tmp_path / name, m)
        assert io.read_image(p).max() == 255          # stored 0/255, visible in any viewer
        back = io.read_mask(p)
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, m)
    # RGBA crop as in the X-ray data: alpha 255 everywhere, the mask in red (any value)
    rgba = np.zeros((6, 7, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[m > 0, 0] = 27
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(io.read_mask(tmp_path / "rgba.png"), m)
    # probability maps and thresholds
    prob = (m * 0.7 + 0.1).astype(np.float32)
    tifffile.imwrite(tmp_path / "p.tif", prob)
    np.testing.assert_array_equal(io.read_mask(tmp_path / "p.tif"), m)
    assert io.read_mask(tmp_path / "p.tif", threshold=0.9).sum() == 0
    # a lossy JPEG mask is thresholded at half range, not at "nonzero"
    Image.fromarray(m * 255).save(tmp_path / "m.jpg", quality=60)
    np.testing.assert_array_equal(io.read_mask(tmp_path / "m.jpg"), m)


def test_label_masks_keep_ids(tmp_path):
    lab = np.zeros((8, 9), np.int32)
    lab[1:3, 1:3] = 1
    lab[4:6, 4:8] = 300
    lab[7, 0] = 70000
    p = io.write_mask(tmp_path / "lab.tif", lab)
    back = io.read_mask(p, instances=True)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, lab)
    np.testing.assert_array_equal(io.read_mask(p), (lab > 0).astype(np.uint8))
    with pytest.raises(ValueError, match="65535"):
        io.write_mask(tmp_path / "lab.png", lab)
    lab[7, 0] = 0
    np.testing.assert_array_equal(
        io.read_mask(io.write_mask(tmp_path / "lab.png", lab), instances=True), lab)
    # colour-coded labels: one id per colour, black = background
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, :2] = (255, 0, 0)
    rgb[3, 3] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    ids = io.read_mask(tmp_path / "rgb.png", instances=True)
    assert sorted(np.unique(ids)) == [0, 1, 2] and ids[0, 0] == ids[0, 1] != ids[3, 3]
    with pytest.raises(ValueError, match="2-D"):
        io.write_mask(tmp_path / "bad.png", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"\.jpg"):
        io.write_mask(tmp_path / "bad.jpg", lab)


def test_image_shape_reads_headers(tmp_path):
    io.write_image(tmp_path / "a.png", np.zeros((5, 8, 3), np.uint8))
    assert io.image_shape(tmp_path / "a.png") == (5, 8)
    io.write_image(tmp_path / "a.tif", np.zeros((6, 4), np.uint16))
    assert io.image_shape(tmp_path / "a.tif") == (6, 4)


def test_open_lazy_memmaps_large_files(tmp_path):
    a = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "raw.tif", a, photometric="rgb")      # uncompressed
    lazy = io.open_lazy(tmp_path / "raw.tif")
    assert isinstance(lazy, np.memmap)
    np.testing.assert_array_equal(lazy[5:9, 2:7], a[5:9, 2:7])
    np.save(tmp_path / "a.npy", a)
    assert isinstance(io.open_lazy(tmp_path / "a.npy"), np.memmap)
    # compressed files fall back to a full read
    io.write_image(tmp_path / "z.tif", a)
    np.testing.assert_array_equal(io.open_lazy(tmp_path / "z.tif"), a)
