"""Synthetic preview: sample images from a latent diffusion model, see each as it is generated.

Samples appear one by one; each shows its distance to the nearest training image and the
near-copy threshold it is compared with (below it = a near-copy, the memorisation risk with
few training images). Sample i of a run with seed s has its own random stream, so runs with
different seeds never share a sample. "Add to unlabeled pool" saves the samples as PNGs into a
folder that MGCC training reads with ``--synthetic FOLDER`` (remembered), with a CSV of each
sample's distance, nearest training image, near-copy flag and seeds.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                            QLineEdit, QListWidget, QProgressBar, QPushButton, QSpinBox)

from ..core import defaults
from ._runner import JobWidget
from ._scroll import scrolling_layout

__all__ = ["SyntheticWidget", "SAMPLES_LAYER"]

SAMPLES_LAYER = "synthetic samples"


class SyntheticWidget(JobWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        ldm = defaults.default_ldm_dir()
        self.ldm_dir = QLineEdit(str(ldm) if ldm else "")
        self.ldm_dir.setPlaceholderText("folder of a trained latent diffusion model")
        self.browse = QPushButton("…")
        self.n = QSpinBox()
        self.n.setRange(1, 10000)
        self.n.setValue(8)
        self.steps = QSpinBox()
        self.steps.setRange(1, 1000)
        self.steps.setValue(50)
        self.eta = QDoubleSpinBox()
        self.eta.setRange(0.0, 1.0)
        self.eta.setSingleStep(0.1)
        self.eta.setValue(0.0)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.generate_button = QPushButton("Generate")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar()
        self.distances = QListWidget()
        self.distances.setMinimumHeight(80)
        self.threshold_label = QLabel("near-copy threshold: (after the first sample)")
        self.pool_button = QPushButton("Add to unlabeled pool…")
        self.pool_label = QLabel(self._pool_text())
        self.pool_label.setWordWrap(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.samples: list = []          # Sample objects of the current run (+ earlier ones)

        form = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.ldm_dir, 1)
        row.addWidget(self.browse)
        form.addRow("LDM folder", row)
        form.addRow("Samples", self.n)
        form.addRow("DDIM steps", self.steps)
        form.addRow("eta", self.eta)
        form.addRow("Seed", self.seed)
        lay = scrolling_layout(self)
        lay.addLayout(form)
        buttons = QHBoxLayout()
        buttons.addWidget(self.generate_button)
        buttons.addWidget(self.stop_button)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(QLabel("Distance to the nearest training image:"))
        lay.addWidget(self.threshold_label)
        lay.addWidget(self.distances)
        lay.addWidget(self.pool_button)
        lay.addWidget(self.pool_label)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.browse.clicked.connect(self._browse)
        self.generate_button.clicked.connect(lambda: self.generate())
        self.stop_button.clicked.connect(lambda: self.request_stop())
        self.pool_button.clicked.connect(self._pool_dialog)
        self.distances.currentRowChanged.connect(self._show_sample)

    def _pool_text(self) -> str:
        p = self.session.synthetic_pool
        return (f"unlabeled pool: {p}\n(MGCC: napari-textdiff mgcc train … --synthetic {p})"
                if p else "no unlabeled pool folder chosen yet")

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Latent diffusion model folder")
        if path:
            self.ldm_dir.setText(path)

    # -- generating --------------------------------------------------------------------------------
    def generate(self) -> bool:
        from ._jobs import synthesize_job

        ldm = self.ldm_dir.text().strip()
        if not ldm:
            self.notify_info("napari-textdiff: choose the latent diffusion model folder first.")
            return False
        n, steps, eta, seed = self.n.value(), self.steps.value(), self.eta.value(), self.seed.value()
        device = self.session.device
        self.samples = []
        self.distances.clear()
        self._set_running(True)

        def on_event(ev):
            self.show_progress(self.progress, ev)
            if ev.payload is not None:
                self._add_sample(ev.payload)

        def on_done(count):
            self.status.setText(f"{len(self.samples)} sample(s) generated"
                                + (" (stopped)" if self.should_stop() else ""))

        def on_error(err):
            self.status.setText(f"error: {err}")

        ok = self.start_job(lambda: synthesize_job(ldm, n, steps, eta, seed, device=device,
                                                   should_stop=self.should_stop),
                            what="Synthesis", on_event=on_event, on_done=on_done,
                            on_error=on_error, on_finish=lambda: self._set_running(False))
        if not ok:
            self._set_running(False)
        return ok

    def _add_sample(self, sample) -> None:
        self.samples.append(sample)
        img = sample.image
        stack = np.stack([_display(s.image, img.shape) for s in self.samples])
        dists = [s.distance for s in self.samples]
        if SAMPLES_LAYER in self.viewer.layers:
            layer = self.viewer.layers[SAMPLES_LAYER]
            layer.data = stack
            layer.metadata["distances"] = dists
        else:
            layer = self.viewer.add_image(stack, name=SAMPLES_LAYER, rgb=stack.ndim == 4,
                                          contrast_limits=(0.0, 1.0),
                                          metadata={"distances": dists, "synthetic": True})
        self.viewer.dims.set_current_step(0, len(self.samples) - 1)
        d = "?" if sample.distance is None else f"{sample.distance:.4f}"
        near = f"  ({sample.nearest})" if sample.nearest else ""
        near += "  NEAR COPY" if sample.near_copy else ""
        self.distances.addItem(f"sample {len(self.samples)}: {d}{near}")
        if sample.threshold is not None:
            self.threshold_label.setText(f"near-copy threshold: {sample.threshold:.4f} "
                                         "(a smaller distance flags a near-copy)")

    def _show_sample(self, row: int) -> None:
        if row >= 0 and SAMPLES_LAYER in self.viewer.layers:
            self.viewer.dims.set_current_step(0, row)

    # -- the pool ---------------------------------------------------------------------------------
    def add_to_pool(self, folder=None) -> list[Path]:
        """Save the current samples as 8-bit PNGs into ``folder`` (default: the remembered one),
        with ``synthetic_<stamp>.csv`` listing each file's distance, nearest training image,
        near-copy flag, threshold and seeds."""
        from ..core.bundle import atomic_write_csv
        from ..core.io import write_image

        if not self.samples:
            raise RuntimeError("no synthetic samples to add: generate some first")
        folder = folder or self.session.synthetic_pool or (defaults.config_dir() / "synthetic")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out, rows = [], []
        for i, s in enumerate(self.samples):
            img = np.clip(s.image, 0, 1)
            img = img[..., 0] if img.shape[-1] == 1 else img
            p = folder / f"synthetic_{stamp}_{i:04d}.png"
            write_image(p, (img * 255 + 0.5).astype(np.uint8))
            out.append(p)
            rows.append({"file": p.name, "distance": s.distance, "nearest_training_image":
                         s.nearest, "near_copy": s.near_copy, "threshold": s.threshold,
                         "run_seed": s.seed, "index": s.index})
        atomic_write_csv(folder / f"synthetic_{stamp}.csv", rows, list(rows[0]))
        self.session.synthetic_pool = str(folder)
        defaults.save_settings(synthetic_pool=str(folder))
        self.pool_label.setText(self._pool_text())
        self.status.setText(f"added {len(out)} image(s) to {folder}")
        return out

    def _pool_dialog(self) -> None:
        start = self.session.synthetic_pool or str(defaults.config_dir() / "synthetic")
        folder = QFileDialog.getExistingDirectory(self, "Unlabeled pool folder (MGCC --synthetic)",
                                                  start)
        if folder:
            try:
                self.add_to_pool(folder)
            except Exception as err:  # noqa: BLE001
                self.notify_error(err, "Adding to the pool")

    def _set_running(self, running: bool) -> None:
        self.generate_button.setEnabled(not running)
        self.stop_button.setEnabled(running)


def _display(img: np.ndarray, shape) -> np.ndarray:
    """(H, W, C) float sample as a stack frame: gray → (H, W), RGB → (H, W, 3)."""
    img = np.asarray(img, np.float32)
    if img.shape != tuple(shape):   # samples of a run share a size; guard anyway
        from skimage.transform import resize

        img = resize(img, shape, preserve_range=True).astype(np.float32)
    return img[..., 0] if img.shape[-1] == 1 else img
