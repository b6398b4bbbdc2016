"""The loop as a user runs it, timed: Segment → correct → Fine-tune → re-Segment in napari.

Opens a shown viewer (run under Xvfb: ``xvfb-run -a .venv/bin/python benchmarks/gui_loop.py``),
docks the panels exactly as napari does (``add_plugin_dock_widget``), opens the histology
sample, and drives the visible buttons with the bundled histology model:

1. Segment the sample; 2. "correct" it (the ground truth painted in through the labels
layer's history, as a brush would); 3. Fine-tune (library defaults, no re-segmentation);
4. Segment again.

For each job it reports the wall seconds and the GUI thread's largest stall: a 50 ms QTimer
records its tick gaps while the job runs; a gap of G ms means the GUI could not react for
about G − 50 ms. ``--no-memo`` turns the feature memo off (diffusion features recomputed for
every job) to show what it saves. ``--trace-stalls`` names the culprits: a watchdog thread
samples every thread's Python stack whenever the timer is more than 75 ms late, and the
report counts the innermost frames seen (GUI thread and the others). Writes JSON to ``--out``.

``--napari-floor`` measures napari alone, no plugin code and no job running: the same 50 ms
timer around the layer operations a Segment ends with (add a labels layer of the sample's
shape, replace its data, one brush-sized edit). Whatever those stalls are, no plugin can get
below them on this machine and OpenGL.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


class GapTimer:
    """A 50 ms QTimer recording its tick gaps: a gap of G ms = the GUI could not react for
    about G - 50 ms. ``last`` is shared with :class:`StallTracer`."""

    def __init__(self, period_ms: int = 50):
        from qtpy.QtCore import QTimer

        self.gaps: list[float] = []
        self.last = [time.perf_counter()]
        self._timer = QTimer()
        self._timer.timeout.connect(self._tick)
        self._timer.start(period_ms)

    def _tick(self):
        now = time.perf_counter()
        self.gaps.append((now - self.last[0]) * 1000)
        self.last[0] = now

    def restart(self):
        self.gaps.clear()
        self.last[0] = time.perf_counter()

    def stop(self):
        self._timer.stop()

    def summary(self) -> dict:
        worst = max(self.gaps or [0.0])
        return {"max_gap_ms": round(worst, 1), "stall_ms": round(max(0.0, worst - 50), 1),
                "gaps_over_150ms": sum(g > 150 for g in self.gaps), "ticks": len(self.gaps)}


class StallTracer:
    """Watchdog thread: while the GUI timer is > 75 ms late, sample every thread's stack."""

    def __init__(self, last: list, late_ms: float = 75, every_s: float = 0.02):
        import threading
        from collections import Counter

        self._last, self._late, self._every = last, late_ms / 1000, every_s
        self._main = threading.main_thread().ident
        self.counts: Counter = Counter()
        self._halt = threading.Event()
        self.reset()
        threading.Thread(target=self._run, daemon=True, name="stall-tracer").start()

    def reset(self):
        self.counts.clear()
        self.worst, self.worst_s, self._episode, self._since = {}, 0.0, None, None

    def stop(self):
        self._halt.set()

    @staticmethod
    def _where(frame) -> str:
        """Innermost frames as 'file:line func' (3 deep), innermost first."""
        parts = []
        while frame is not None and len(parts) < 3:
            co = frame.f_code
            parts.append(f"{Path(co.co_filename).name}:{frame.f_lineno} {co.co_name}")
            frame = frame.f_back
        return " < ".join(parts)

    def _run(self):
        import threading

        me = threading.get_ident()
        from collections import Counter

        while not self._halt.wait(self._every):
            lag = time.perf_counter() - self._last[0]
            if lag < self._late:
                if self._episode is not None and self._since > self.worst_s:
                    self.worst, self.worst_s = dict(self._episode), self._since
                self._episode = None
                continue
            if self._episode is None:
                self._episode = Counter()
            self._since = lag
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                who = "GUI" if ident == self._main else "other"
                key = f"{who}: {self._where(frame)}"
                self.counts[key] += 1
                self._episode[key] += 1

    def report(self, top: int = 12) -> dict:
        """All stalls' frame counts, and those of the longest stall alone."""
        worst = sorted(self.worst.items(), key=lambda kv: -kv[1])[:top]
        return {"all": [[k, v] for k, v in self.counts.most_common(top)],
                "longest_ms": round(self.worst_s * 1000), "longest": [[k, v] for k, v in worst]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/benchmarks/gui_loop.json")
    p.add_argument("--no-memo", action="store_true", help="recompute features every job")
    p.add_argument("--epochs", type=int, default=None, help="fine-tune epochs (default: library)")
    p.add_argument("--job-niceness", type=int, default=None,
                   help="niceness added to job threads (default: the plugin's; 0 = off)")
    p.add_argument("--trace-stalls", action="store_true",
                   help="sample stacks during stalls; report where each thread was")
    p.add_argument("--wait-warm-up", action="store_true",
                   help="let the panels' background import of torch finish before the first "
                        "Segment (as when a user docks the panels, then opens an image)")
    p.add_argument("--napari-floor", action="store_true",
                   help="time napari's own labels-layer operations (no plugin, no job)")
    a = p.parse_args(argv)
    if a.napari_floor:
        return napari_floor(a.out)

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_textdiff.widgets import _session

    if a.no_memo:
        _session.FEATURE_MEMO_MB = 0
    if a.job_niceness is not None:
        _session.JOB_NICENESS = a.job_niceness
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    _, seg = viewer.window.add_plugin_dock_widget("napari-textdiff", "Segment")
    _, ft = viewer.window.add_plugin_dock_widget("napari-textdiff", "Fine-tune")
    viewer.open_sample("napari-textdiff", "histology")
    image = viewer.layers["histology_sample"]
    warm: dict | None = None
    if a.wait_warm_up:          # the panels' background imports, timed like a job
        t0, timer_w = time.perf_counter(), GapTimer()
        while not _session._WARM.is_set():
            app.processEvents()
            time.sleep(0.005)
        timer_w.stop()
        warm = {"seconds": round(time.perf_counter() - t0, 2), **timer_w.summary()}
    gt = viewer.layers["histology_sample ground truth"]
    timer = GapTimer()
    tracer = StallTracer(timer.last) if a.trace_stalls else None

    def run_job(widget, start) -> dict:
        for _ in range(5):
            app.processEvents()
        timer.restart()
        if tracer is not None:
            tracer.reset()
        t0 = time.perf_counter()
        start()
        while widget.running:
            app.processEvents()
            time.sleep(0.005)
        secs = time.perf_counter() - t0
        for _ in range(3):
            app.processEvents()
        err = widget.last_error
        out = {"seconds": round(secs, 2), **timer.summary(),
               "error": None if err is None else str(err)}
        if tracer is not None:
            out["stall_frames"] = tracer.report()
        return out

    res: dict = {"memo": not a.no_memo, "job_niceness": _session.JOB_NICENESS,
                 "warm_up_before_first_job": warm,
                 "load_average_start": os.getloadavg()[0], "jobs": {}}
    viewer.layers.selection.active = image
    res["jobs"]["segment"] = run_job(seg, seg.run_button.click)
    lab = viewer.layers["histology_sample_labels"]
    want = (np.asarray(gt.data) > 0).astype(lab.data.dtype)
    idx = np.nonzero(np.asarray(lab.data) != want)
    with lab.block_history():           # one stroke, as napari's brush commits it
        lab.data_setitem(idx, want[idx])
    ft.refresh()
    if a.epochs:
        ft.epochs.setValue(a.epochs)
    ft.resegment.setChecked(False)
    res["corrected_listed"] = ft.checked_pairs()
    res["jobs"]["finetune"] = run_job(ft, ft.start_button.click)
    viewer.layers.selection.active = image
    seg.confirm = lambda *a: True       # "replace the corrected labels?" → yes
    res["jobs"]["resegment"] = run_job(seg, seg.run_button.click)
    res["model"] = seg.session.model_label
    res["fine_tune_epochs"] = ft.epochs.value()
    memo = next(iter(seg.session._memos.values()), None)
    res["feature_memo"] = memo.stats() if memo is not None else None
    timer.stop()
    if tracer is not None:
        tracer.stop()
    viewer.close()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.is_file() else {}
    old["with_memo" if res["memo"] else "without_memo"] = res
    out.write_text(json.dumps(old, indent=1))
    print(json.dumps(res, indent=1))
    return 0


def napari_floor(out_path: str, repeats: int = 3) -> int:
    """Largest GUI-timer gap around napari's own labels operations on the histology sample."""
    import napari
    import numpy as np
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.open_sample("napari-textdiff", "histology")
    shape = viewer.layers["histology_sample"].data.shape[:2]
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)             # nucleus-sized blobs, one label each (instances)
    mask = ndi.label(ndi.gaussian_filter(rng.random(shape), 4) > 0.52)[0].astype(np.int32)
    timer = GapTimer()

    def timed(op) -> float:
        t_end = time.perf_counter() + 0.5
        while time.perf_counter() < t_end:          # settle, then measure only the operation
            app.processEvents()
            time.sleep(0.005)
        timer.restart()
        QTimer.singleShot(0, op)
        t_end = time.perf_counter() + 1.5
        while time.perf_counter() < t_end:
            app.processEvents()
            time.sleep(0.005)
        return timer.summary()["stall_ms"]

    res: dict = {"load_average_start": os.getloadavg()[0], "shape": list(shape),
                 "labels": int(mask.max()), "stall_ms": {}}
    for i in range(repeats):
        name = f"floor_labels_{i}"
        add = timed(lambda: viewer.add_labels(mask.copy(), name=name))
        lab = viewer.layers[name]
        replace = timed(lambda: setattr(lab, "data", np.where(mask > 0, mask + 1, 0)))
        idx = tuple(a.ravel() for a in np.mgrid[100:120, 100:120])

        def stroke():
            with lab.block_history():
                lab.data_setitem(idx, np.full(idx[0].shape, 2, np.int32))

        edit = timed(stroke)
        viewer.layers.remove(name)
        for k, v in (("add_labels_layer", add), ("replace_labels_data", replace),
                     ("brush_sized_edit", edit)):
            res["stall_ms"].setdefault(k, []).append(v)
    timer.stop()
    viewer.close()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.is_file() else {}
    old["napari_floor"] = res
    out.write_text(json.dumps(old, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
