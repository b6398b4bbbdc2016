"""Reader and writers without a viewer: formats, folders, descriptions, labels round trip."""
import json
from pathlib import Path

import numpy as np
import pytest

from napari_textdiff import _reader, _sample_data, _writer
from napari_textdiff.core.io import ImageReadError, write_image


def _img(h=20, w=30, rgb=False, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (h, w, 3) if rgb else (h, w), dtype=np.uint8)


def test_reader_claims_only_supported_paths(tmp_path):
    for name in ("a.tif", "a.TIFF", "a.png", "a.jpg", "a.jpeg", "a.dcm"):
        assert _reader.get_reader(str(tmp_path / name)) is _reader.read_paths
    assert _reader.get_reader(str(tmp_path)) is _reader.read_paths
    assert _reader.get_reader(str(tmp_path / "a.txt")) is None
    assert _reader.get_reader([str(tmp_path / "a.png"), str(tmp_path / "b.csv")]) is None


def test_tiff_png_jpeg_read_with_sidecar_and_folder_descriptions(tmp_path):
    gray16 = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 50)
    write_image(tmp_path / "g.tif", gray16)
    write_image(tmp_path / "c.png", _img(rgb=True))
    write_image(tmp_path / "j.jpg", _img(seed=2))
    (tmp_path / "g.json").write_text(json.dumps({"description": "sidecar text"}))
    (tmp_path / "descriptions.json").write_text(json.dumps(
        {"c.png": "folder text", "j.jpg": {"description": "jpeg text", "modality": "xray"}}))
    layers = {kw["name"]: (d, kw, k) for d, kw, k in _reader.read_paths(str(tmp_path))}
    assert sorted(layers) == ["c", "g", "j"]
    d, kw, kind = layers["g"]
    assert kind == "image" and d.dtype == np.uint16 and np.array_equal(d, gray16)
    assert kw["metadata"]["description"] == "sidecar text" and not kw["rgb"]
    assert layers["c"][1]["rgb"] and layers["c"][0].shape == (20, 30, 3)
    assert layers["c"][1]["metadata"]["description"] == "folder text"
    assert layers["j"][1]["metadata"] == {"description": "jpeg text", "modality": "xray",
                                          "source_path": str(tmp_path / "j.jpg")}


def test_dicom_is_read(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    arr = (np.arange(16 * 24, dtype=np.uint16).reshape(16, 24) * 10)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = arr.tobytes()
    p = tmp_path / "chest.dcm"
    ds.save_as(p, enforce_file_format=True)
    [(data, kw, kind)] = _reader.read_paths(str(p))
    assert kind == "image" and data.shape == (16, 24) and kw["name"] == "chest"
    assert np.corrcoef(data.ravel().astype(float), arr.ravel())[0, 1] > 0.99


def test_bad_files_raise_clear_errors(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        _reader.read_paths(str(bad))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no TIFF/PNG/JPEG/DICOM"):
        _reader.read_paths(str(empty))


def test_labels_writer_round_trip_with_description(tmp_path):
    labels = np.zeros((20, 30), np.int32)
    labels[2:5, 3:9] = 1
    labels[10:15, 10:12] = 300                      # instance ids above 255 survive
    attrs = {"name": "img_labels", "metadata": {"description": "two nuclei",
                                                "source_image": "img", "modality": "histology"}}
    for ext in (".tif", ".png"):
        files = _writer.write_labels(str(tmp_path / f"out{ext}"), labels, attrs)
        assert [Path(f).name for f in files] == [f"out{ext}", f"out{ext}.json"]
        side = json.loads(Path(files[1]).read_text())
        assert side["description"] == "two nuclei" and side["kind"] == "labels"
        [(data, kw, kind)] = _reader.read_paths(files[0])
        assert kind == "labels" and kw["name"] == "img_labels"
        np.testing.assert_array_equal(data, labels)
        assert kw["metadata"]["description"] == "two nuclei"
        assert kw["metadata"]["source_image"] == "img"
    # no suffix -> TIFF
    files = _writer.write_labels(str(tmp_path / "noext"), labels, attrs)
    assert files[0].endswith("noext.tif")


def test_descriptions_writer_json_and_csv(tmp_path):
    data = [(None, {"name": "a", "metadata": {"description": "text a", "modality": "xray"}}, "image"),
            (None, {"name": "a_labels", "metadata": {"description": "text a",
                                                     "source_image": "a"}}, "labels"),
            (None, {"name": "b", "metadata": {}}, "image")]
    [j] = _writer.write_descriptions(str(tmp_path / "d.json"), data)
    out = json.loads(Path(j).read_text())
    assert out["a"] == {"kind": "image", "description": "text a", "modality": "xray"}
    assert out["a_labels"]["source_image"] == "a" and out["b"] == {"kind": "image"}
    [c] = _writer.write_descriptions(str(tmp_path / "d.csv"), data)
    import csv

    rows = list(csv.DictReader(open(c, encoding="utf-8")))
    assert [r["name"] for r in rows] == ["a", "a_labels", "b"] and rows[0]["description"] == "text a"


def test_sample_data_files_and_attribution():
    d = _sample_data.sample_dir()
    info = json.loads((d / "descriptions.json").read_text())
    assert set(info) == {"histology.jpg", "xray.jpg", "ultrasound.png"}
    for name, meta in info.items():
        assert (d / name).stat().st_size < 300_000
        assert meta["licence"] and meta["attribution"] and meta["description"]
    for fn, modality, shape in ((_sample_data.histology, "histology", (512, 512, 3)),
                                (_sample_data.xray, "xray", None),
                                (_sample_data.ultrasound, "ultrasound", (585, 683))):
        layers = fn()
        data, kw, kind = layers[-1]          # the image last: it stays the selected layer
        assert kind == "image" and kw["metadata"]["modality"] == modality
        if shape:
            assert data.shape == shape
        for lab, lkw, lkind in layers[:-1]:
            assert lkind == "labels" and lab.shape == data.shape[:2] and lab.any()
            assert lkw["metadata"]["ground_truth"] and lkw["metadata"]["source_image"] == kw["name"]
