"""Dataset layouts (synthetic copies of each real layout, plus the real data when present)
and deterministic splits."""
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_textdiff.core import datasets as D
from napari_textdiff.core.models import Example

DATA = Path(os.environ.get("NAPARI_TEXTDIFF_DATA",
                           Path(__file__).resolve().parents[1].parent / "shared" / "data"))
rng = np.random.default_rng(0)


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _mask(h, w, box):
    m = np.zeros((h, w), np.uint8)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = 255
    return m


# ------------------------------------------------------------------------------ MoNuSeg
def _make_monuseg(folder, names, texts=True, sheet="Train_text.xlsx"):
    import openpyxl
    for i, n in enumerate(names):
        _png(folder / "img" / f"{n}.png", rng.integers(0, 255, (12, 10, 3), dtype=np.uint8))
        _png(folder / "labelcol" / f"{n}.png", _mask(12, 10, (i, i, i + 3, i + 4)))
    if texts:
        wb = openpyxl.Workbook()
        ws = wb.active
        ws.append(["Image", "Description"])
        for n in names:
            ws.append([f"{n}.png", f"text of {n}"])
        wb.save(folder / sheet)


def test_monuseg_single_folder_and_splits(tmp_path):
    _make_monuseg(tmp_path / "Train_Folder", ["a", "b", "c"])
    _make_monuseg(tmp_path / "Val_Folder", ["v"], sheet="Val_text.xlsx")
    one = D.load_monuseg(tmp_path / "Train_Folder")
    assert [s.name for s in one] == ["a", "b", "c"]
    assert one[1].text == "text of b" and one[1].has_mask
    ex = one[1].load()
    assert isinstance(ex, Example) and ex.image.shape == (12, 10, 3) and ex.text == "text of b"
    assert ex.mask.dtype == np.uint8 and ex.mask.sum() == 12 and ex.mask[1, 1] == 1
    both = D.load_monuseg(tmp_path)
    assert [(s.name, s.meta["split"]) for s in both] == [("a", "train"), ("b", "train"),
                                                         ("c", "train"), ("v", "val")]
    assert [s.name for s in D.load_monuseg(tmp_path, split="val")] == ["v"]
    assert len(D.load_monuseg(tmp_path, split="Train_Folder")) == 3
    with pytest.raises(ValueError, match="test"):
        D.load_monuseg(tmp_path, split="test")
    assert [s.name for s in D.discover(tmp_path, split="val")] == ["v"]
    assert D.detect_layout(tmp_path / "Train_Folder")[0] == "monuseg"


def test_monuseg_without_masks_or_text(tmp_path):
    _make_monuseg(tmp_path, ["a", "b"], texts=False)
    (tmp_path / "labelcol" / "b.png").unlink()
    s = D.load_monuseg(tmp_path)
    assert s[0].text == "" and s[0].meta["missing_text"]
    assert not s[1].has_mask
    with pytest.raises(ValueError, match="no mask"):
        s[1].load_mask()


# --------------------------------------------------------------------------------- BUSI
def _make_busi(root):
    _png(root / "benign" / "benign (1).png", rng.integers(0, 255, (10, 12), dtype=np.uint8))
    _png(root / "benign" / "benign (1)_mask.png", _mask(10, 12, (0, 0, 2, 2)))
    _png(root / "benign" / "benign (1)_mask_1.png", _mask(10, 12, (5, 5, 7, 9)))
    _png(root / "benign" / "benign (2).png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    _png(root / "benign" / "benign (2)_mask.png", _mask(8, 8, (1, 1, 3, 3)))
    _png(root / "malignant" / "malignant (1).png", rng.integers(0, 255, (9, 9), dtype=np.uint8))
    _png(root / "malignant" / "malignant (1)_mask.png", _mask(9, 9, (2, 2, 5, 5)))
    _png(root / "normal" / "normal (1).png", rng.integers(0, 255, (7, 7), dtype=np.uint8))
    _png(root / "normal" / "normal (1)_mask.png", np.zeros((7, 7), np.uint8))


def test_busi_merges_masks_and_keeps_classes(tmp_path):
    _make_busi(tmp_path)
    s = D.load_busi(tmp_path)
    assert [x.name for x in s] == ["benign (1)", "benign (2)", "malignant (1)", "normal (1)"]
    assert [x.meta["class"] for x in s] == ["benign", "benign", "malignant", "normal"]
    m = s[0].load_mask()
    assert m.sum() == 4 + 8 and m[0, 0] == 1 and m[6, 8] == 1     # union of both masks
    assert s[3].load_mask().sum() == 0
    assert s[0].load_image().shape == (10, 12, 1)
    assert len(D.load_busi(tmp_path, include_normal=False)) == 3
    assert len(D.load_busi(tmp_path / "benign")) == 2             # one class folder
    assert {x.text for x in s} == {""}                            # BUSI has no text...
    texts = [x.text for x in D.discover(tmp_path, describe=True)]  # ...unless templated
    assert texts == [D.BUSI_DESCRIPTIONS[c] for c in ("benign", "benign", "malignant", "normal")]
    assert D.load_busi(tmp_path / "benign", describe=True)[0].text == "Benign breast lesion."
    assert D.detect_layout(tmp_path)[0] == "busi"
    # a mask of the wrong size is reported with both file names
    _png(tmp_path / "benign" / "benign (2)_mask_1.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"benign \(2\)_mask_1\.png.*benign \(2\)\.png"):
        D.load_busi(tmp_path)[1].load_mask()
    # a mask with no image is an error, not silently dropped
    _png(tmp_path / "malignant" / "ghost_mask.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match="ghost"):
        D.load_busi(tmp_path)


# -------------------------------------------------------------------------------- X-ray
FIELDS = ["#", "Template Name", "Filename", "Mask", "Resolution", "Top", "Left", "Width",
          "Height"]


def _make_xray(root, resolution=None):
    """Two X-rays; a.png is 20 high x 30 wide (Resolution "30x20"), b.png has only lungs."""
    _png(root / "images" / "a.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    _png(root / "images" / "b.jpg", rng.integers(0, 255, (16, 16), dtype=np.uint8))

    def crop(name, h, w, value=187):
        a = np.zeros((h, w, 4), np.uint8)
        a[..., 3] = 255                     # alpha opaque everywhere, as in the real data
        a[1:h - 1, 1:w - 1, 0] = value
        return _png(root / "masks" / name, a).relative_to(root).as_posix()

    rows = [
        ["1", "Ground Glass Opacities", "a.png", crop("g.png", 5, 8), "", 2, 20, 8, 5],
        ["2", "Consolidation", "a.png", crop("c.png", 4, 4, value=27), "", 14, 3, 4, 4],
        ["3", "Right Lung", "a.png", crop("l.png", 10, 6), "", 0, 0, 6, 10],
        ["4", "Monitoring Probes", "a.png", "", "", 0, 0, 30, 20],   # a points-only row
        ["5", "Left Lung", "b.jpg", crop("bl.png", 6, 6), "", 3, 3, 6, 6],
    ]
    for r in rows:
        r[4] = resolution or ("30x20" if r[2] == "a.png" else "16x16")
    with open(root / "structure.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        w.writerows(rows)
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patientid", "finding", "filename", "license", "clinical_notes"])
        w.writerow(["1", "COVID-19", "a.png", "CC BY", "Bilateral opacities."])
        w.writerow(["2", "Pneumonia", "b.jpg", "CC BY", ""])


def test_xray_pastes_red_channel_crops(tmp_path):
    _make_xray(tmp_path)
    s = D.load_xray(tmp_path)                        # lesion: b.jpg was not annotated
    assert [x.name for x in s] == ["a"]
    assert s[0].text == "Bilateral opacities." and s[0].meta["finding"] == "COVID-19"
    m = s[0].load_mask()
    assert m.shape == (20, 30) and m.dtype == np.uint8
    expected = np.zeros((20, 30), np.uint8)
    expected[2 + 1:2 + 4, 20 + 1:20 + 7] = 1         # GGO crop interior at (top 2, left 20)
    expected[14 + 1:14 + 3, 3 + 1:3 + 3] = 1         # consolidation (red value 27 counts)
    np.testing.assert_array_equal(m, expected)
    lungs = D.load_xray(tmp_path, target="lungs")
    assert [x.name for x in lungs] == ["a", "b"] and lungs[1].text == "Pneumonia"
    assert lungs[1].load_mask().sum() == 16
    kept = D.load_xray(tmp_path, keep_unannotated=True)
    assert [x.name for x in kept] == ["a", "b"] and kept[1].load_mask().sum() == 0
    assert kept[1].meta["annotated"] is False
    assert len(D.load_xray(tmp_path, target=["Right Lung"])) == 1
    with pytest.raises(ValueError, match="unknown X-ray target.*Ground Glass"):
        D.load_xray(tmp_path, target="kidney")
    ex = s[0].load(channels=1)
    assert ex.image.shape == (20, 30, 1) and ex.mask.shape == (20, 30)
    assert D.discover(tmp_path, target="lungs")[1].name == "b"


def test_xray_resolution_mismatch_is_an_error(tmp_path):
    _make_xray(tmp_path, resolution="20x30")         # H x W by mistake
    with pytest.raises(ValueError, match="Resolution"):
        D.load_xray(tmp_path)[0].load_mask()


# ------------------------------------------------------------------------ generic folder
def test_generic_folder_with_csv_and_json(tmp_path):
    for n in ("x", "y", "z"):
        _png(tmp_path / "images" / f"{n}.png", rng.integers(0, 255, (6, 6, 3), dtype=np.uint8))
    _png(tmp_path / "masks" / "x.png", _mask(6, 6, (0, 0, 3, 3)))
    _png(tmp_path / "masks" / "y_mask.png", _mask(6, 6, (3, 3, 6, 6)))
    with open(tmp_path / "descriptions.csv", "w", newline="") as f:
        f.write("image,description\nx.png,left upper\ny,\"right, lower\"\n")
    s = D.load_folder(tmp_path)
    assert [(x.name, x.text, x.has_mask) for x in s] == [
        ("x", "left upper", True), ("y", "right, lower", True), ("z", "", False)]
    (tmp_path / "descriptions.csv").unlink()
    (tmp_path / "descriptions.json").write_text(json.dumps({"z": "none"}))
    assert D.discover(tmp_path)[2].text == "none"
    assert D.detect_layout(tmp_path)[0] == "folder"


def test_discover_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        D.discover(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"unknown dataset layout.*notes\.txt"):
        D.discover(tmp_path)
    with pytest.raises(FileNotFoundError):
        D.discover(tmp_path / "missing")
    with pytest.raises(TypeError, match="colour"):
        D.discover(tmp_path, colour="red")
    # a wrapping folder (e.g. an unzipped archive) is descended into
    _make_busi(tmp_path / "Dataset_BUSI_with_GT")
    (tmp_path / "notes.txt").unlink()
    assert len(D.discover(tmp_path)) == 4


# ---------------------------------------------------------------------------------- splits
def _fake(n, classes=("a", "b")):
    return [D.Sample(f"s{i:02d}", Path(f"s{i}.png"), (Path(f"m{i}.png"),),
                     meta={"class": classes[i % len(classes)]}) for i in range(n)]


def test_kshot_is_deterministic_and_order_free():
    s = _fake(20)
    a = D.kshot(s, 5, seed=1)
    assert len(a) == 5 and len({x.name for x in a}) == 5
    assert [x.name for x in a] == [x.name for x in D.kshot(list(reversed(s)), 5, seed=1)]
    assert [x.name for x in a] != [x.name for x in D.kshot(s, 5, seed=2)]
    with pytest.raises(ValueError, match="k=21"):
        D.kshot(s, 21)
    unl = [D.Sample("u", Path("u.png"))]
    with pytest.raises(ValueError, match="labeled"):
        D.kshot(unl, 1)
    assert D.kshot(unl, 1, labeled_only=False)[0].name == "u"


def test_train_val_split():
    s = _fake(30, classes=("a", "a", "b"))            # 20 a, 10 b
    tr, va = D.train_val_split(s, 0.3, seed=0, stratify_key="class")
    assert len(tr) + len(va) == 30 and not {x.name for x in tr} & {x.name for x in va}
    assert sum(x.meta["class"] == "a" for x in va) == 6
    assert sum(x.meta["class"] == "b" for x in va) == 3
    tr2, va2 = D.train_val_split(s, 0.3, seed=0, stratify_key="class")
    assert [x.name for x in va] == [x.name for x in va2]
    assert [x.name for x in va] != [x.name for x in D.train_val_split(s, 0.3, seed=5)[1]]
    assert [x.name for x in tr] == sorted(x.name for x in tr)   # input order kept
    tr, va = D.train_val_split(_fake(2), 0.1)
    assert len(tr) == 1 and len(va) == 1                       # never an empty side
    assert D.train_val_split(_fake(3), 0.0)[1] == []
    _, va = D.train_val_split(s, 0.2, stratify_key=lambda x: x.name[-1] == "0")
    assert len(va) == 6
    with pytest.raises(ValueError):
        D.train_val_split(s, 1.0)


# ------------------------------------------------------------------------------ real data
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} absent")


@pytest.mark.data
@needs_data
def test_real_monuseg():
    s = D.discover(DATA / "monuseg")
    assert len(s) == 30 and all(x.has_mask and x.text for x in s)
    assert sum(x.meta["split"] == "val" for x in s) == 6
    t = {x.name: x.text for x in s}
    assert t["TCGA-21-5786-01Z-00-DX1"] == "The nuclei density in the upper right is high."


@pytest.mark.data
@needs_data
def test_real_busi():
    s = D.discover(DATA / "busi")
    assert len(s) == 546
    multi = [x for x in s if x.meta["n_masks"] > 1]
    assert multi
    normal = next(x for x in s if x.meta["class"] == "normal")
    assert normal.load_mask().sum() == 0


@pytest.mark.data
@needs_data
def test_real_xray():
    s = {x.name: x for x in D.discover(DATA / "xray")}
    assert len(s) == 30 and all(x.text for x in s.values())
    small = s["kjr-21-e24-g001-l-a"]                  # 328 x 237, the smallest
    ex = small.load(channels=1)
    assert ex.image.shape == (237, 328, 1) and ex.mask.shape == (237, 328)
    assert 0.05 < ex.mask.mean() < 0.6
    lungs = {x.name: x for x in D.load_xray(DATA / "xray", target="lungs")}
    lm = lungs["kjr-21-e24-g001-l-a"].load_mask()
    # lesions lie within (dilated) lungs in this radiograph
    assert (ex.mask & lm).sum() > 0.5 * ex.mask.sum()


def test_images_beside_their_saved_labels_are_a_folder_dataset(tmp_path):
    """What ``segment`` (NAME_mask) and napari's "Save labels…" (NAME_labels + sidecar) leave
    beside the images is read as the generic layout, descriptions from the sidecars."""
    import json

    _png(tmp_path / "a.png", np.full((6, 6), 90, np.uint8))
    _png(tmp_path / "a_labels.png", _mask(6, 6, (1, 1, 3, 3)))
    (tmp_path / "a_labels.png.json").write_text(json.dumps({"description": "two nuclei"}))
    _png(tmp_path / "b.png", np.full((6, 6), 90, np.uint8))
    _png(tmp_path / "b_mask.png", _mask(6, 6, (0, 0, 2, 2)))
    _png(tmp_path / "c.png", np.full((6, 6), 90, np.uint8))           # not corrected yet
    assert D.detect_layout(tmp_path) == ("folder", tmp_path)
    s = {x.name: x for x in D.discover(tmp_path)}
    assert sorted(s) == ["a", "b", "c"] and not s["c"].has_mask
    assert s["a"].text == "two nuclei" and s["b"].text == ""
    assert s["a"].load_mask().sum() == 4 and s["b"].load_mask().sum() == 4
    assert [x.name for x in D.labelled_samples(tmp_path)] == ["a", "b"]


def test_a_corrected_labels_file_beats_the_models_mask_beside_it(tmp_path):
    """segment writes NAME_mask, napari's Save labels NAME_labels: the correction is trained on."""
    img = np.zeros((8, 8, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    for name, value in (("a_mask.png", 255), ("a_labels.png", 1)):
        m = np.zeros((8, 8), np.uint8)
        m[:4] = value
        Image.fromarray(m).save(tmp_path / name)
    for order in (0, 1):                          # whatever order the folder lists them in
        (sample,) = D.load_folder(tmp_path)
        assert sample.mask_paths[0].name == "a_labels.png", order
        os.utime(tmp_path / "a_mask.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a_labels.tif")
    with pytest.raises(ValueError, match="two masks for 'a'"):    # two corrections: which?
        D.load_folder(tmp_path)
