"""Fine-tune panel: train the model's light head on the corrected images in the viewer.

The user ticks which image / labels / description triples to use: labels corrected by hand are
ticked by default; uncorrected predictions and ground-truth masks opened from a dataset are
listed unticked (they can be picked explicitly). Training starts and may stop (the model is
valid at every step) with a live loss; then the other images are re-segmented with the
improved model, which Segment uses from then on too (one session per viewer). Epochs and
learning rate start at the library's ``finetune()`` defaults for the model's kind. The model
before each fine-tune is kept as a snapshot: Revert brings it back, a failed fine-tune
restores it itself.
"""
from __future__ import annotations

import weakref

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                            QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QProgressBar,
                            QPushButton, QSpinBox)

from . import _layers
from ._plot import LivePlot
from ._scroll import scrolling_layout
from ._runner import JobWidget, start_segmentation

__all__ = ["FinetuneWidget"]

#: the MGCC "Adapt" choices: (label, part of core.finetune_defaults.MGCC_PART_DEFAULTS, or
#: "auto": chosen from the corrected images' BatchNorm statistics, core/mgcc/shift.py)
ADAPT_CHOICES = (("to my corrections (output layer)", "output"),
                 ("to a new scanner or setting (normalisation layers)", "norm"),
                 ("automatically (experimental: from the network's statistics)", "auto"))

#: README "Does fine-tuning pay?": leave-one-organ-out on MoNuSeg, one corrected image lost up
#: to 14 points on the organ's other images in one draw, two gained in every shifted draw
ONE_IMAGE_ADVICE = ("with one corrected image a fine-tune often makes other images worse; "
                    "correct at least two before fine-tuning (Revert undoes this one)")


class FinetuneWidget(JobWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.pairs = QListWidget()
        self.pairs.setMinimumHeight(80)
        self.refresh_button = QPushButton("Refresh list")
        # 0 shows "auto": the value of the part an automatic Adapt chooses (or the library's)
        self.epochs = QSpinBox()
        self.epochs.setRange(0, 1000)
        self.epochs.setSpecialValueText("auto")
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(0.0, 1.0)
        self.lr.setSpecialValueText("auto")
        self.lr.setSingleStep(1e-4)
        self.adapt = QComboBox()
        for label, part in ADAPT_CHOICES:
            self.adapt.addItem(label, part)
        self.adapt.setToolTip("MGCC: what the fine-tune trains. Images from another scanner or "
                              "setting: the normalisation layers (on BUSI +6 to +14 Dice from "
                              "10 cases); images like the model's own: the output layer only. "
                              "Automatically: the first when the corrected images' statistics "
                              "inside the network differ from its training images'")
        self.adapt_label = QLabel("Adapt")
        self._defaults_kind = None
        self._apply_library_defaults()
        self.adapt.currentIndexChanged.connect(lambda *_: self._apply_library_defaults(force=True))
        self.resegment = QCheckBox("then re-segment the other images")
        self.resegment.setChecked(True)
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar()
        self.plot = LivePlot()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.model_info = QLabel(self.session.model_label)
        self.model_info.setWordWrap(True)
        self.save_button = QPushButton("Save model…")
        self.revert_button = QPushButton("Revert")
        self.revert_button.setToolTip("Go back to the model before the last fine-tune")

        lay = scrolling_layout(self)
        lay.addWidget(QLabel("Train on (image + corrected labels + description):"))
        lay.addWidget(self.pairs)
        lay.addWidget(self.refresh_button)
        form = QFormLayout()
        form.addRow(self.adapt_label, self.adapt)
        form.addRow("Epochs", self.epochs)
        form.addRow("Learning rate", self.lr)
        lay.addLayout(form)
        lay.addWidget(self.resegment)
        row = QHBoxLayout()
        row.addWidget(self.start_button)
        row.addWidget(self.stop_button)
        lay.addLayout(row)
        lay.addWidget(self.progress)
        lay.addWidget(self.plot)
        lay.addWidget(self.status)
        lay.addWidget(self.model_info)
        row2 = QHBoxLayout()
        row2.addWidget(self.save_button)
        row2.addWidget(self.revert_button)
        lay.addLayout(row2)
        lay.addStretch(1)

        self._user_ticks: dict = {}
        self._watched = weakref.WeakSet()
        self._filling = False
        self.pairs.itemChanged.connect(self._item_changed)
        self.refresh_button.clicked.connect(lambda: self.refresh())
        self.start_button.clicked.connect(lambda: self.start())
        self.stop_button.clicked.connect(lambda: self.request_stop())
        self.save_button.clicked.connect(self._save_dialog)
        self.revert_button.clicked.connect(lambda: self.revert())
        self.session.model_changed.connect(self._model_changed)
        ev = self.viewer.layers.events
        ev.inserted.connect(self.refresh)
        ev.removed.connect(self.refresh)
        self.session.modality_changed.connect(lambda *_: self._apply_library_defaults())
        self.refresh()
        self._update_buttons()

    # -- defaults -------------------------------------------------------------------------------
    def _apply_library_defaults(self, force: bool = False) -> None:
        """Epochs and learning rate of the library's ``finetune()`` for the current model's
        kind (read from the file's header: no torch needed) and, for MGCC, the Adapt choice."""
        from ..core.finetune_defaults import finetune_defaults

        kind = self._current_kind()
        self.adapt.setVisible(kind == "mgcc")
        self.adapt_label.setVisible(kind == "mgcc")
        if not force and kind == self._defaults_kind and self._defaults_kind is not None:
            return
        self._defaults_kind = kind
        d = finetune_defaults(kind, self._part(kind))
        self.epochs.setValue(int(d["epochs"] or 0))         # None -> 0, shown as "auto"
        self.lr.setValue(float(d["lr"] or 0.0))

    def _current_kind(self) -> str | None:
        from ..core.defaults import model_kind

        key = self.session.current_key()
        return model_kind(key[0]) if key else None

    def _part(self, kind) -> str | None:
        """The MGCC part chosen under Adapt (None for other kinds)."""
        return self.adapt.currentData() if kind == "mgcc" else None

    # -- the training set ------------------------------------------------------------------------
    def refresh(self, event=None) -> None:
        """List every image's labels: corrected ones ticked, uncorrected predictions and
        ground truth unticked; the user's own ticks are kept."""
        self._filling = True
        try:
            self.pairs.clear()
            for img in _layers.image_layers(self.viewer):
                work = _layers.find_labels(self.viewer, img)
                if _layers.is_slide_layer(img):      # a slide: its region labels, if small
                    from .region import trainable_region

                    cands = [work] if work is not None and trainable_region(work) else []
                else:
                    cands = ([work] if work is not None else []) + \
                        _layers.find_ground_truth(self.viewer, img)
                for lab in cands:
                    if lab not in self._watched:      # re-list when the user paints
                        self._watched.add(lab)
                        lab.events.paint.connect(self._labels_painted)
                    if _layers.is_ground_truth(lab):
                        tag, default = "  (ground truth)", Qt.Unchecked
                    elif _layers.was_edited(lab):
                        tag, default = "  (corrected)", Qt.Checked
                    else:
                        tag, default = "  (prediction, not corrected)", Qt.Unchecked
                    item = QListWidgetItem(f"{img.name}  ↔  {lab.name}{tag}")
                    key = (img.name, lab.name)
                    item.setData(Qt.UserRole, key)
                    item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
                    item.setCheckState(self._user_ticks.get(key, default))
                    self.pairs.addItem(item)
        finally:
            self._filling = False

    def _labels_painted(self, event=None) -> None:
        if self.worker is None:           # after the session marked the layer "corrected"
            QTimer.singleShot(0, self.refresh)

    def _item_changed(self, item) -> None:
        if not self._filling:
            self._user_ticks[item.data(Qt.UserRole)] = item.checkState()

    def checked_pairs(self) -> list[tuple[str, str]]:
        """(image layer name, labels layer name) of the ticked rows."""
        return [tuple(self.pairs.item(i).data(Qt.UserRole)) for i in range(self.pairs.count())
                if self.pairs.item(i).checkState() == Qt.Checked]

    def checked_names(self) -> list[str]:
        return [img for img, _ in self.checked_pairs()]

    # -- training ----------------------------------------------------------------------------------
    def start(self) -> bool:
        from ._jobs import finetune_job

        chosen = [(i, la) for i, la in self.checked_pairs()
                  if i in self.viewer.layers and la in self.viewer.layers]
        if not chosen:
            self.notify_info("napari-textdiff: tick at least one image with corrected labels.")
            return False
        pairs, scales = [], set()
        for n, la in chosen:
            img, lab = self.viewer.layers[n], self.viewer.layers[la]
            if _layers.is_slide_layer(img):     # the region's pixels, read back from the slide
                from .region import region_training_pixels

                try:
                    image, labels, scale = region_training_pixels(img, lab)
                except (ValueError, OSError) as err:
                    self.notify_error(err, "Reading the slide region")
                    return False
            else:
                image, labels, scale = np.asarray(img.data).copy(), \
                    np.asarray(lab.data).copy(), None
            scales.add(scale)
            pairs.append((n, image, labels, _layers.description_of(img)))
        if len(scales) > 1:
            self.notify_info("napari-textdiff: slide regions are read at their pyramid level: "
                             "fine-tune them apart from whole images (and regions of one "
                             "level together).")
            return False
        scale = scales.pop()
        trained = {p[0] for p in pairs}
        epochs, lr, session = self.epochs.value() or None, self.lr.value() or None, self.session
        # the job's model and modality: a selection made meanwhile waits for the job's end
        key, modality = session.current_key(), session.modality
        part = self._part(self._current_kind())
        extra = {"train": part} if part is not None else {}
        self.plot.clear()
        self._n = 0
        state = {"ok": False}

        def on_event(ev):
            if ev.stage == "finetune" and ev.loss is None and ev.message and not ev.step:
                # masks left out, the part an automatic Adapt chose: shown at the end too
                state["note"] = "; ".join(filter(None, (state.get("note"), ev.message)))
            self.show_progress(self.progress, ev)
            if ev.loss is not None:
                self._n += 1
                x = ev.step if ev.step else self._n
                self.plot.add("loss", x, ev.loss)
                for k, v in (ev.metrics or {}).items():
                    self.plot.add(k, x, v)
            self.status.setText(ev.describe())

        def on_done(result):
            state["ok"], state["stopped"] = True, self.should_stop()
            state["msg"] = (("stopped early; the model trained so far is kept"
                             if state["stopped"] else "fine-tune finished") +
                            f" ({len(pairs)} image(s))" +
                            (f"; {state['note']}" if state.get("note") else "") +
                            (f"; {ONE_IMAGE_ADVICE}" if len(pairs) == 1 else ""))
            self.status.setText(state["msg"])

        def on_error(err):
            self.status.setText(f"fine-tune failed, previous model kept: {err}")

        def on_finish():
            self._set_running(False)
            if state["ok"] and self.resegment.isChecked() and not state["stopped"]:
                # only the other images of this model's modality: a fine-tuned histology head
                # has nothing to say about an ultrasound image open beside it
                rest = [ly for ly in _layers.plain_image_layers(self.viewer)
                        if ly.name not in trained
                        and ly.metadata.get("modality", modality) == modality]
                if rest:
                    self._set_running(True)
                    if not start_segmentation(self, rest, what="Re-segmentation", key=key,
                                              status_prefix=state["msg"] + "; ",
                                              on_finish=lambda: self._set_running(False)):
                        self._set_running(False)
            self.refresh()

        self._set_running(True)
        ok = self.start_job(lambda: finetune_job(session, pairs, epochs=epochs, lr=lr,
                                                 should_stop=self.should_stop, key=key,
                                                 scale=scale, **extra),
                            what="Fine-tuning", on_event=on_event, on_done=on_done,
                            on_error=on_error, on_finish=on_finish)
        if not ok:
            self._set_running(False)
        return ok

    # -- model management ----------------------------------------------------------------------------
    def save_model(self, path) -> None:
        if self.session.model is None:
            raise RuntimeError("no model to save yet: segment or fine-tune first")
        self.session.model.save(path)
        self.status.setText(f"saved {path}")

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the fine-tuned model",
                                              "finetuned.safetensors",
                                              "napari-textdiff model (*.safetensors)")
        if path:
            try:
                self.save_model(path)
            except Exception as err:  # noqa: BLE001
                self.notify_error(err, "Saving the model")

    def revert(self) -> bool:
        """Back to the model before the last fine-tune (a no-op when there is none)."""
        if not self.session.snapshots or self.running:
            return False
        snap, key = self.session.snapshots[-1], self.session.current_key()
        session = self.session

        def job():
            from ..core.progress import Progress

            yield Progress("revert", 0, 1, message="loading the previous model")
            session.restore(snap, key)
            yield Progress("revert", 1, 1, message="previous model restored")

        def on_event(ev):
            self.show_progress(self.progress, ev)
            self.status.setText(ev.message)

        return self.start_job(job, what="Reverting the model", on_event=on_event,
                              on_finish=self._update_buttons)

    def _model_changed(self, label: str) -> None:
        self.model_info.setText(label)
        self._apply_library_defaults()
        self._update_buttons()

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self._update_buttons()

    def _update_buttons(self) -> None:
        idle = self.worker is None
        self.revert_button.setEnabled(idle and bool(self.session.snapshots))
        self.save_button.setEnabled(idle and self.session.model is not None)
