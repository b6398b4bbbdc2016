"""Review of the command line (after issue 21): outputs that are inputs, outputs checked before
the model loads, GeoJSON of binary masks, ``--block``, a bad file in a batch, missing
descriptions, and Ctrl-C of a fine-tune that replaces its own model. Each test failed before
its fix (docs/RELIABILITY.md, "Fixed after the CLI review")."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from napari_textdiff.cli import main
from napari_textdiff.core import io
from napari_textdiff.core.bundle import read_bundle_header

from conftest import blob_image


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _discs(path, centers=((10, 10), (10, 40), (40, 25)), r=5, shape=(52, 52)):
    """A gray PNG: bright separate discs on black (the fake model's foreground)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = np.zeros(shape, np.uint8)
    for cy, cx in centers:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 255
    return _png(path, img)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the command gets as far as loading a model."""
    import napari_textdiff.cli._common as common

    def refuse(args):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(common, "load_model", refuse)


# ---------------------------------------------------------------- 1 + 2: outputs, up front
def test_geojson_output_that_is_an_input_or_no_geojson_is_refused(tmp_path, fake_model_path,
                                                                   capsys, no_model_load):
    victim = _discs(tmp_path / "victim.png")
    before = victim.read_bytes()
    base = ["segment", str(victim), "--model", str(fake_model_path), "--out",
            str(tmp_path / "o")]
    assert main(base + ["--geojson", str(victim)]) == 2
    assert "expected a .geojson or .json file name" in capsys.readouterr().err
    link = tmp_path / "link.geojson"
    link.symlink_to(victim)
    assert main(base + ["--geojson", str(link)]) == 2
    err = capsys.readouterr().err
    assert "is one of the inputs" in err and str(victim) in err
    side = tmp_path / "victim.png.json"             # the input's description sidecar
    side.write_text("{}")
    assert main(base + ["--geojson", str(side)]) == 2
    assert "is one of the inputs" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(base + ["--geojson", str(blocker / "x.geojson")]) == 2
    err = capsys.readouterr().err
    assert f"{blocker} is a file, not a folder" in err and "File exists" not in err
    other = _discs(tmp_path / "other.png")
    assert main(base[:2] + [str(other)] + base[2:] + ["--geojson", str(tmp_path / "x.geojson")]
                ) == 2
    assert "--geojson PATH names one file" in capsys.readouterr().err
    assert main(base + ["--region", "1,2,3"]) == 2
    assert victim.read_bytes() == before and side.read_text() == "{}"


def test_finetune_and_evaluate_outputs_that_are_inputs_are_refused(tmp_path, tiny_mgcc_path,
                                                                   capsys):
    data = tmp_path / "corrected"
    img, mask = blob_image(seed=0)
    io.write_image(data / "c0.png", img)
    io.write_mask(data / "c0_labels.tif", mask)
    link = tmp_path / "image.safetensors"                   # a link to a training image
    link.symlink_to(data / "c0.png")
    before = {f.name: f.read_bytes() for f in data.iterdir()}
    for out, says in ((data / "c0.png", "expected a .safetensors file name"),
                      (link, "is one of the inputs")):
        assert main(["finetune", str(tiny_mgcc_path), str(data), "--out", str(out),
                     "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert says in err and "fine-tuning" not in err
    assert {f.name: f.read_bytes() for f in data.iterdir()} == before

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    _png(gt / "images" / "one.png", np.full((8, 8, 3), 100, np.uint8))
    _png(gt / "masks" / "one.png", np.eye(8, dtype=np.uint8) * 255)
    (gt / "descriptions.csv").write_text("image,description\none.png,a line\n")
    _png(pred / "one.png", np.eye(8, dtype=np.uint8) * 255)
    for opt, out, says in (("--csv", pred / "s.json", "expected a .csv file name"),
                           ("--csv", gt / "descriptions.csv", "is one of the inputs"),
                           ("--json", gt / "masks" / "one.png", "expected a .json file name")):
        assert main(["evaluate", str(pred), str(gt), opt, str(out)]) == 2
        assert says in capsys.readouterr().err
    assert (gt / "descriptions.csv").read_text().startswith("image,description")
    assert main(["evaluate", str(pred), str(gt), "--csv", str(pred / "s.csv")]) == 0


# ---------------------------------------------------------------- 3: GeoJSON of binary masks
def test_binary_geojson_has_one_object_per_component_classified_by_modality(
        tmp_path, fake_model_path, modality_models, capsys):
    img = _discs(tmp_path / "im.png")
    gj = tmp_path / "im.geojson"
    assert main(["segment", str(img), "--model", str(fake_model_path), "--geojson", str(gj),
                 "--out", str(tmp_path / "o"), "--text", "x", "--no-progress"]) == 0
    feats = json.loads(gj.read_text())["features"]
    assert len(feats) == 3                                   # three discs, three objects
    assert {f["geometry"]["type"] for f in feats} == {"Polygon"}
    assert {f["properties"]["classification"]["name"] for f in feats} == {"Object"}
    assert io.read_mask(tmp_path / "o" / "im_mask.tif", instances=True).max() == 1  # binary
    capsys.readouterr()
    for modality, name in (("ultrasound", "Lesion"), ("xray", "Infection"),
                           ("histology", "Nucleus")):
        assert main(["segment", str(img), "--modality", modality, "--geojson",
                     "--out", str(tmp_path / modality), "--no-progress"]) == 0
        feats = json.loads((tmp_path / modality / "im.geojson").read_text())["features"]
        assert {f["properties"]["classification"]["name"] for f in feats} <= {name}
        assert all(f["geometry"]["type"] == "Polygon" for f in feats)
    from napari_textdiff.core.defaults import object_class

    assert object_class(model=modality_models / "xray.safetensors") == "Infection"
    assert object_class(model=fake_model_path) == "Object"


def test_streamed_binary_slide_labels_become_one_object_per_component(tmp_path):
    from napari_textdiff.core.geojson import label_features
    from napari_textdiff.core.progress import run
    from napari_textdiff.core.wsi import SlideLabels

    mask = np.zeros((300, 300), np.uint8)
    mask[10:20, 10:290] = 1                                  # crosses every 64-px block
    mask[100:110, 50:60] = mask[200:250, 200:210] = 1
    import tempfile

    work = tempfile.TemporaryDirectory(dir=tmp_path)
    mm = np.lib.format.open_memmap(os.path.join(work.name, "m.npy"), "w+", np.uint8, mask.shape)
    mm[:] = mask
    res = SlideLabels(mm, 0, (1.0, 1.0), (0, 0, 300, 300), (0, 0, 300, 300), 1, None, work)
    lab = run(res.component_labels())
    assert isinstance(lab, np.memmap) and lab.max() == 3
    assert len(list(label_features(mask, components=True))) == 3
    assert len(list(label_features(mask))) == 1              # as labels: one id, one object
    res.close()


# ---------------------------------------------------------------- 4: --block
def test_block_must_be_a_positive_size(tmp_path, fake_model_path, capsys):
    from napari_textdiff.core.stitching import block_grid

    img = _discs(tmp_path / "im.png")
    for bad in ("0", "-64", "x"):
        with pytest.raises(SystemExit) as e:
            main(["segment", str(img), "--model", str(fake_model_path), "--block", bad,
                  "--out", str(tmp_path / "o")])
        assert e.value.code == 2 and "argument --block" in capsys.readouterr().err
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="block size"):
            block_grid(10, 10, bad)


# ---------------------------------------------------------------- 5 + 6: batches, descriptions
def test_a_bad_file_does_not_stop_the_batch(tmp_path, fake_model_path, capsys):
    folder = tmp_path / "batch"
    _discs(folder / "a.png")
    good = _discs(tmp_path / "c_src.png").read_bytes()
    (folder / "b.png").write_bytes(good[:len(good) // 2])  # cut short
    (folder / "c.png").write_bytes(good)
    out = tmp_path / "o"
    assert main(["segment", str(folder), "--model", str(fake_model_path), "--text", "x",
                 "--out", str(out), "--no-progress"]) == 1
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert [os.path.basename(r["image"]) for r in res["images"]] == ["a.png", "c.png"]
    assert [os.path.basename(f["image"]) for f in res["failed"]] == ["b.png"]
    assert sorted(f.name for f in out.iterdir()) == ["a_mask.tif", "c_mask.tif"]
    summary = cap.err[cap.err.index("1 of 3 image(s) failed"):]
    assert "b.png" in summary and "Traceback" not in cap.err


def test_descriptions_are_checked_before_any_image_and_their_absence_warned(
        tmp_path, tiny_textdiff_path, capsys, monkeypatch):
    from textdiff_testkit import shapes_set, write_folder_dataset

    ds = write_folder_dataset(tmp_path / "ds", shapes_set(2, seed=3))
    extra = _discs(tmp_path / "extra.png")
    imgs = sorted(str(p) for p in (ds / "images").iterdir())
    import napari_textdiff.cli.segment as seg

    done = []
    real = seg._segment_image
    monkeypatch.setattr(seg, "_segment_image", lambda p, *a: done.append(p) or real(p, *a))
    rc = main(["segment", str(extra), *imgs, "--model", str(tiny_textdiff_path),
               "--texts-from", str(ds), "--out", str(tmp_path / "o"), "--device", "cpu",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and not done[0].name.startswith("extra")
    assert err.index("extra.png: no description") < err.index("predict")   # before any image
    assert len(done) == 2
    assert main(["segment", str(extra), "--model", str(tiny_textdiff_path), "--texts-from",
                 str(ds), "--out", str(tmp_path / "o")]) == 2
    assert "none of the 1 images has a description" in capsys.readouterr().err
    assert main(["segment", imgs[0], "--model", str(tiny_textdiff_path), "--out",
                 str(tmp_path / "o"), "--device", "cpu", "--no-progress"]) == 0
    assert "reads a description and none was given" in capsys.readouterr().err


# ---------------------------------------------------------------- 9: finetune --out MODEL
def test_ctrl_c_of_a_finetune_into_its_own_model_keeps_the_model(tmp_path, tiny_mgcc_path):
    from test_reliability_interrupt import _interrupt_when

    data = tmp_path / "corrected"
    for i in range(2):
        img, mask = blob_image(seed=i)
        io.write_image(data / f"c{i}.png", img)
        io.write_mask(data / f"c{i}_labels.tif", mask)
    before = tiny_mgcc_path.read_bytes()
    rc, err = _interrupt_when(["finetune", str(tiny_mgcc_path), str(data), "--out",
                               str(tiny_mgcc_path), "--epochs", "100000", "--device", "cpu"],
                              "finetune ")
    assert rc == 130, err
    kept = tiny_mgcc_path.with_name("tiny_mgcc.interrupted.safetensors")
    assert f"saved the model as far as it got to {kept}" in err
    assert f"{tiny_mgcc_path} is unchanged" in err
    assert tiny_mgcc_path.read_bytes() == before
    assert read_bundle_header(kept)["meta"]["finetunes"][-1]["interrupted"] is True
    # a finished run replaces it (atomically), as asked
    assert main(["finetune", str(tiny_mgcc_path), str(data), "--out", str(tiny_mgcc_path),
                 "--epochs", "1", "--device", "cpu"]) == 0
    assert read_bundle_header(tiny_mgcc_path)["meta"]["finetunes"][-1]["epochs"] == 1


# ---------------------------------------------------------------- minor: --model / --plane
def test_a_folder_as_model_and_a_plane_of_a_slide_are_refused(tmp_path, capsys):
    import tifffile

    img = _discs(tmp_path / "im.png")
    (tmp_path / "models").mkdir()
    assert main(["segment", str(img), "--model", str(tmp_path / "models"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "is a folder, not a model file: give a .safetensors" in capsys.readouterr().err
    pyr = tmp_path / "pyr.tif"
    base = np.zeros((512, 512), np.uint8)
    with tifffile.TiffWriter(pyr) as t:
        t.write(base, tile=(256, 256), subifds=1)
        t.write(base[::2, ::2], tile=(256, 256), subfiletype=1)
    from napari_textdiff.core.slides import is_slide

    if not is_slide(pyr):
        pytest.skip("this tifffile writes no pyramid the slide reader recognises")
    assert main(["segment", str(pyr), "--model", str(tmp_path / "none.safetensors"),
                 "--plane", "1", "--out", str(tmp_path / "o")]) == 2
    assert "is a pyramidal slide" in capsys.readouterr().err


def test_napari_geojson_writer_splits_binary_layers_and_names_the_modality(tmp_path):
    from napari_textdiff._slides_io import write_geojson_layer

    lab = np.zeros((40, 40), np.uint8)
    lab[2:8, 2:8] = lab[20:30, 5:9] = lab[30:35, 30:38] = 1
    [out] = write_geojson_layer(str(tmp_path / "l.geojson"), lab,
                                {"metadata": {"modality": "ultrasound"}})
    feats = json.loads(open(out).read())["features"]
    assert len(feats) == 3
    assert {f["properties"]["classification"]["name"] for f in feats} == {"Lesion"}
    lab[30:35, 30:38] = 2                                  # instance labels: ids as given
    [out] = write_geojson_layer(str(tmp_path / "m.geojson"), lab,
                                {"metadata": {"classifications": ["Tumor"]}})
    feats = json.loads(open(out).read())["features"]
    assert len(feats) == 2 and feats[0]["geometry"]["type"] == "MultiPolygon"
    assert {f["properties"]["classification"]["name"] for f in feats} == {"Tumor"}
