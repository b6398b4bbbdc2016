"""Synthetic preview with a real (tiny, barely trained) latent diffusion model, docked as
napari docks it."""
import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def tiny_ldm(tmp_path_factory):
    import torch

    from napari_textdiff.core.diffusion.ldm import LDMConfig, train_ldm
    from napari_textdiff.core.progress import run

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    imgs = [rng.random((32, 32, 1)).astype(np.float32) for _ in range(4)]
    cfg = LDMConfig(preset="tiny", channels=1, size=32, vae_steps=2, unet_steps=2, vae_batch=2,
                    unet_batch=2, checkpoint_every=1000)
    return run(train_ldm(imgs, tmp_path_factory.mktemp("ldm"), cfg, device="cpu"))


def test_samples_stream_into_a_stack_and_go_to_the_pool(viewer, qtbot, tiny_ldm, tmp_path):
    from napari_textdiff.core import defaults
    from napari_textdiff.core.io import read_image
    from napari_textdiff.widgets.synthetic import SAMPLES_LAYER

    _, w = viewer.window.add_plugin_dock_widget("napari-textdiff", "Synthetic preview")
    w.session.device = "cpu"
    w.ldm_dir.setText(str(tiny_ldm))
    w.n.setValue(3)
    w.steps.setValue(2)
    w.eta.setValue(0.5)
    w.seed.setValue(7)
    counts = []
    w.distances.model().rowsInserted.connect(lambda *a: counts.append(w.distances.count()))
    w.generate_button.click()
    qtbot.waitUntil(lambda: not w.running, timeout=60000)
    assert w.last_error is None, w.last_error
    assert counts == [1, 2, 3]                          # one by one, as generated
    layer = viewer.layers[SAMPLES_LAYER]
    assert layer.data.shape == (3, 32, 32) and layer.data.dtype == np.float32
    assert 0 <= layer.data.min() and layer.data.max() <= 1
    d = layer.metadata["distances"]
    assert len(d) == 3 and all(np.isfinite(x) and x >= 0 for x in d)
    assert f"{d[0]:.4f}" in w.distances.item(0).text()
    thr = w.samples[0].threshold
    assert thr is not None and f"{thr:.4f}" in w.threshold_label.text()

    pool = tmp_path / "pool"
    files = w.add_to_pool(pool)
    assert len(files) == 3 and all(f.parent == pool for f in files)
    back = read_image(files[0])
    assert back.shape == (32, 32) and back.dtype == np.uint8
    np.testing.assert_allclose(back / 255, layer.data[0], atol=1 / 255 + 1e-6)
    assert defaults.load_settings()["synthetic_pool"] == str(pool)   # remembered
    import csv

    (table,) = pool.glob("synthetic_*.csv")
    rows = list(csv.DictReader(table.open()))
    assert [r["file"] for r in rows] == [f.name for f in files]
    assert [float(r["distance"]) for r in rows] == pytest.approx(d)
    assert all(r["nearest_training_image"] and r["run_seed"] == "7" for r in rows)
    from napari_textdiff.widgets._session import Session

    assert Session().synthetic_pool == str(pool)
    assert str(pool) in w.pool_label.text()


def test_runs_with_seeds_0_and_1_share_no_sample(tiny_ldm):
    from napari_textdiff.core.diffusion.synthesize import synthesize
    from napari_textdiff.core.progress import run

    a = run(synthesize(tiny_ldm, n=4, steps=2, seed=0, device="cpu"))
    b = run(synthesize(tiny_ldm, n=4, steps=2, seed=1, device="cpu", batch_size=1))
    for x in a:
        for y in b:
            assert np.abs(x["image"] - y["image"]).max() > 1e-3
    # and a sample does not depend on the batch size
    c = run(synthesize(tiny_ldm, n=2, steps=2, seed=0, device="cpu", batch_size=1))
    np.testing.assert_allclose(c[1]["image"], a[1]["image"], atol=1e-4)


def test_stop_and_errors(viewer, tiny_ldm, tmp_path):
    _, w = viewer.window.add_plugin_dock_widget("napari-textdiff", "Synthetic preview")
    w.synchronous = True
    w.session.device = "cpu"
    w.ldm_dir.setText(str(tiny_ldm))
    w.n.setValue(20)
    w.steps.setValue(1)
    w.distances.model().rowsInserted.connect(lambda *a: w.request_stop())
    assert w.generate()
    assert w.last_error is None
    assert 1 <= len(w.samples) < 20 and "stopped" in w.status.text()

    w.ldm_dir.setText(str(tmp_path / "missing"))
    assert w.generate()
    assert w.last_error is not None and "missing" in str(w.last_error)
    w.samples = []
    with pytest.raises(RuntimeError, match="no synthetic samples"):
        w.add_to_pool(tmp_path / "p")
