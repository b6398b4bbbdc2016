"""Screenshots of the plugin at work, from a shown napari window (run under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py \
        [--model models/histology.safetensors] [--ldm models/ldm] [--out docs/screenshots]

Without ``--model`` the bundled histology model is used; if none is bundled yet, a tiny MGCC model
is trained for a few seconds on the histology sample (the pictures then show the workflow, not
the real model's quality). Without ``--ldm`` (and no bundled LDM) a tiny LDM is trained for a
few steps for the synthetic-preview shot. PNGs are palette-quantised to stay small.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def tiny_histology_model(path: Path, seconds: float = 40.0) -> Path:
    """Train a small MGCC model's decoder on the histology sample + its mask for a few seconds."""
    import torch

    from napari_textdiff._sample_data import load_sample
    from napari_textdiff.core.io import normalize_image
    from napari_textdiff.core.mgcc.model import MGCCModel
    from napari_textdiff.core.models import Example

    torch.manual_seed(0)
    (mask, _, _), (img, _, _) = load_sample("histology.jpg")
    x = normalize_image(img, channels=3)
    ex = [Example(x[y:y + 256, c:c + 256], mask[y:y + 256, c:c + 256] > 0)
          for y in (0, 256) for c in (0, 256)]
    m = MGCCModel.create(in_channels=3, width=0.125, size=64, inference="tile")
    t0 = time.monotonic()
    for ev in m.finetune(ex, epochs=10_000, lr=3e-3, batch_size=4):
        if time.monotonic() - t0 > seconds:
            break
    print(f"tiny model: {ev.step} steps, loss {ev.loss:.3f}", flush=True)
    m.save(path)
    return path


def tiny_ldm(out: Path) -> Path:
    from napari_textdiff._sample_data import load_sample
    from napari_textdiff.core.diffusion.ldm import LDMConfig, train_ldm
    from napari_textdiff.core.io import normalize_image
    from napari_textdiff.core.progress import run

    img = normalize_image(load_sample("ultrasound.png")[-1][0], channels=1)
    crops = [img[y:y + 256, x:x + 256] for y in (0, 200, 320) for x in (0, 200, 420)]
    cfg = LDMConfig(preset="tiny", channels=1, size=64, vae_steps=40, unet_steps=40,
                    vae_batch=4, unet_batch=8, checkpoint_every=10_000)
    return run(train_ldm(crops, out, cfg, device="cpu"))


def save_png(arr: np.ndarray, path: Path, max_kb: int = 290) -> None:
    from PIL import Image

    im = Image.fromarray(np.asarray(arr)[..., :3])
    for colors in (256, 128, 64):
        im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size < max_kb * 1024:
            break
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="segmentation model bundle for the histology shots")
    ap.add_argument("--ldm", help="latent diffusion folder for the synthetic shot")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--size", default="1440x900")
    ap.add_argument("--skip-synthetic", action="store_true")
    args = ap.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_textdiff.core import defaults
    from napari_textdiff.widgets.finetune import FinetuneWidget
    from napari_textdiff.widgets.image_panel import ImagePanel
    from napari_textdiff.widgets.segment import SegmentWidget
    from napari_textdiff.widgets.synthetic import SyntheticWidget

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ntd-shots-"))
    model = args.model or defaults.default_model_path("histology")
    note = ""
    if model is None:
        model = tiny_histology_model(tmp / "tiny_histology.safetensors")
        note = " (tiny demo model)"

    w, h = (int(v) for v in args.size.split("x"))
    viewer = napari.Viewer(title="napari TextDiff" + note)
    qt = viewer.window._qt_window
    qt.resize(w, h)
    qt.show()

    def settle(n=20):
        for _ in range(n):
            QApplication.processEvents()
            time.sleep(0.02)

    def shot(name):
        """Close notification toasts, fit the image to the canvas, grab the whole window."""
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in qt.findChildren(NapariQtNotification):
            toast.close()
        settle()
        viewer.reset_view()
        settle()
        save_png(viewer.screenshot(canvas_only=False, flash=False), out / name)

    viewer.open_sample("napari-textdiff", "histology")
    panel, seg, ft = ImagePanel(viewer), SegmentWidget(viewer), FinetuneWidget(viewer)
    for wd in (panel, seg, ft):
        wd.synchronous = True
        wd.confirm = lambda *a: True
    d1 = viewer.window.add_dock_widget(panel, name="Image and description", area="right")
    d2 = viewer.window.add_dock_widget(seg, name="Segment", area="right")
    img = viewer.layers["histology_sample"]
    viewer.layers.selection.active = img
    seg.set_model_file(model)
    seg.device.setCurrentText("cpu")
    if note:
        # the few-second demo model is uncalibrated: threshold at its own 65th percentile
        from napari_textdiff.core.io import normalize_image
        from napari_textdiff.core.models import load_model

        image = normalize_image(np.asarray(img.data), channels=3)
        prob = load_model(model, device="cpu").predict_proba(image)
        seg.threshold.setValue(float(np.quantile(prob, 0.65)))
    seg.run()
    print("segment:", seg.status.text(), seg.last_error or "", flush=True)
    shot("segment.png")

    # fine-tune: the user's correction = the ground truth mask on the left half
    lab = viewer.layers["histology_sample_labels"]
    gt = viewer.layers["histology_sample ground truth"].data
    half = np.zeros_like(gt, bool)
    half[:, :256] = True
    idx = np.nonzero(half & (lab.data != gt))
    lab.data_setitem(idx, gt[idx].astype(lab.data.dtype))
    viewer.window.remove_dock_widget(d1)
    d3 = viewer.window.add_dock_widget(ft, name="Fine-tune", area="right")
    ft.refresh()
    # the panel's own defaults (the library's fine-tune defaults for the model's kind)
    ft.resegment.setChecked(False)
    ft.start()
    print("fine-tune:", ft.status.text(), ft.last_error or "", flush=True)
    settle()
    ft.scroll.ensureWidgetVisible(ft.revert_button)   # as a person scrolls to the loss plot
    shot("finetune.png")

    if not args.skip_synthetic:
        ldm = args.ldm or defaults.default_ldm_dir() or tiny_ldm(tmp / "ldm")
        for name in list(viewer.layers):
            viewer.layers.remove(name)
        viewer.window.remove_dock_widget(d2)
        viewer.window.remove_dock_widget(d3)
        syn = SyntheticWidget(viewer)
        syn.synchronous = True
        viewer.window.add_dock_widget(syn, name="Synthetic preview", area="right")
        syn.session.device = "cpu"
        syn.ldm_dir.setText(str(ldm))
        syn.n.setValue(6)
        syn.steps.setValue(20)
        syn.generate()
        print("synthetic:", syn.status.text(), syn.last_error or "", flush=True)
        syn.distances.setCurrentRow(2)
        shot("synthetic.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
