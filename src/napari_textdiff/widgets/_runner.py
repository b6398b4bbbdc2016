"""Run a progress generator in a napari thread worker (or inline, for tests) with callbacks.

All callbacks run in the GUI thread: ``on_event`` for each yielded Progress, ``on_done`` with the
job's return value, ``on_error`` with the exception, ``on_finish`` always last. Errors also
become a napari notification. A base class gives each widget a Stop flag, a progress bar
updater and the test switches ``synchronous`` and ``confirm``.
"""
from __future__ import annotations

from typing import Any, Callable

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QMessageBox, QProgressBar, QWidget

__all__ = ["JobWidget", "JobFailed"]


class JobFailed(Exception):
    """A job's RuntimeError, re-raised as another type so the thread worker reports it."""


class JobControl:
    """A job's Stop flag and worker, apart from the widget: a closed viewer deletes the widget
    while the worker thread may still run, and the job must then stop without touching it."""

    def __init__(self):
        import threading

        self.stop = False
        self.dead = False          # the widget is gone: drop every callback
        self.worker = None
        self._released = True
        self._lock = threading.Lock()

    def begin(self) -> None:
        self.stop, self._released = False, False

    def release(self, session) -> None:
        """Free the viewer's job slot exactly once per job (from whichever thread ends it)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        session.end()


class JobWidget(QWidget):
    """Base for the dock widgets: one job per viewer at a time, Stop, progress, notifications."""

    #: run jobs inline in the calling (GUI) thread: deterministic tests, no thread
    synchronous: bool = False

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        from ._session import get_session, real_viewer

        self.viewer = real_viewer(viewer)
        self.session = get_session(viewer)
        self.control = JobControl()
        self.last_error: BaseException | None = None
        self.last_result: Any = None
        #: ``confirm(title, text) -> bool``; replace in tests to answer dialogs
        self.confirm: Callable[[str, str], bool] = self._ask
        control, session = self.control, self.session
        self.destroyed.connect(lambda *_: _abandon(control, session))
        self._close_watch = None
        QTimer.singleShot(0, self._watch_main_window)     # once napari has docked us

    def showEvent(self, event):  # noqa: N802 - Qt API
        super().showEvent(event)
        self._watch_main_window()

    def _watch_main_window(self) -> None:
        """Closing the viewer's main window stops this panel's job."""
        try:
            top = self.window()
        except RuntimeError:                      # deleted before the timer fired
            return
        if self._close_watch is None and top is not None and top is not self:
            self._close_watch = _CloseWatch(top, self.control, self.session)

    # -- helpers --------------------------------------------------------------------------------
    def _ask(self, title: str, text: str) -> bool:
        ans = QMessageBox.question(self, title, text, QMessageBox.Yes | QMessageBox.No,
                                   QMessageBox.No)
        return ans == QMessageBox.Yes

    def should_stop(self) -> bool:
        return self.control.stop

    def request_stop(self) -> None:
        self.control.stop = True

    @property
    def worker(self):
        return self.control.worker

    @property
    def running(self) -> bool:
        return self.control.worker is not None

    @staticmethod
    def show_progress(bar: QProgressBar, ev) -> None:
        if ev.total:
            bar.setRange(0, int(ev.total))
            bar.setValue(min(int(ev.step), int(ev.total)))
        else:
            bar.setRange(0, 0)  # busy indicator
        bar.setFormat(ev.describe()[:80] if ev.total else ev.stage)

    def notify_error(self, err: BaseException, what: str) -> None:
        self.last_error = err
        msg = f"{what} failed: {err}"
        try:
            from napari.utils.notifications import show_error

            show_error(msg)
        except Exception:  # pragma: no cover - notification manager unavailable
            print(msg)

    @staticmethod
    def notify_info(msg: str) -> None:
        from napari.utils.notifications import show_info

        show_info(msg)

    # -- running ----------------------------------------------------------------------------------
    def start_job(self, gen_fn: Callable[[], Any], *, what: str,
                  on_event: Callable | None = None, on_done: Callable | None = None,
                  on_error: Callable | None = None, on_finish: Callable | None = None) -> bool:
        """Start ``gen_fn()`` (a generator function). Returns False if a job of this viewer
        (in any panel) is already running, after telling the user which."""
        control, session = self.control, self.session
        if control.worker is not None or not session.try_begin(what):
            self.notify_info(f"napari-textdiff: {session.job or 'another job'} is still "
                             "running; wait for it or press its Stop first.")
            return False
        control.begin()
        self.last_error = None

        def alive(fn):
            def call(*a):
                if not control.dead and fn is not None:
                    fn(*a)
            return call

        def done(value):
            self.last_result = value
            if on_done is not None:
                on_done(value)

        def error(err):
            self.notify_error(err, what)
            if on_error is not None:
                on_error(err)

        def finish():
            control.worker = None
            control.release(session)
            if on_finish is not None:
                on_finish()

        if self.synchronous:
            control.worker = "sync"
            try:
                from ._session import wait_warm

                wait_warm()   # as the worker does: importing diffusers while the warm-up
                gen = gen_fn()  # thread is half-way through it fails ("cannot import name")
                try:
                    while True:       # jobs see Stop through should_stop and return
                        ev = next(gen)
                        if on_event is not None:
                            on_event(ev)
                except StopIteration as stop:
                    done(stop.value)
            except Exception as err:  # noqa: BLE001 - reported to the user
                error(err)
            finally:
                finish()
            return True

        from napari.qt.threading import create_worker

        def drain():
            from ._session import lower_this_thread_priority, wait_warm

            lower_this_thread_priority()
            wait_warm()
            try:
                return (yield from gen_fn())
            except RuntimeError as err:
                # superqt takes any RuntimeError for "the worker was deleted" and emits neither
                # errored nor finished: the job would hold the viewer forever, unreported. torch
                # raises RuntimeError for shape mismatches and out-of-memory alike.
                raise JobFailed(str(err) or type(err).__name__) from err

        w = create_worker(drain, _start_thread=False, _ignore_errors=True)
        try:  # we report errors ourselves, with what failed and a clear message
            w.errored.disconnect(w._relay_error)
        except (AttributeError, TypeError, RuntimeError):  # pragma: no cover
            pass
        w.yielded.connect(alive(on_event))
        w.returned.connect(alive(done))
        w.errored.connect(alive(error))
        w.finished.connect(alive(finish))
        control.worker = w
        w.start()
        return True


class _CloseWatch(QObject):
    """Event filter on the viewer's main window: once a Close went through (the window is
    hidden or gone afterwards; a cancelled close leaves it visible), the job is abandoned."""

    def __init__(self, window, control: JobControl, session):
        super().__init__(window)
        self._control, self._session = control, session
        window.installEventFilter(self)

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        if event.type() == QEvent.Close and self._control.worker is not None:
            control, session = self._control, self._session
            QTimer.singleShot(0, lambda: _abandon_if_closed(obj, control, session))
        return False


def _abandon_if_closed(window, control: JobControl, session) -> None:
    try:
        closed = not window.isVisible()
    except RuntimeError:                          # already deleted
        closed = True
    if closed:
        _abandon(control, session)
        session.close()                 # the viewer is gone: free its models and features


def _abandon(control: JobControl, session) -> None:
    """The widget is being deleted (viewer closed): stop its job and let it end quietly.

    The job sees Stop at its next check (between tiles or training steps, inside the UNet for
    diffusion features), so the worker thread ends within about a second (napari may also
    abort it on close); no callback touches the deleted widgets.
    """
    control.dead = True
    control.stop = True
    if control.worker is not None:       # the viewer is gone: its job slot means nothing now
        control.release(session)


def may_replace(w: JobWidget, labels, undo_hint: str) -> bool:
    """Whether a new prediction may go into ``labels``: yes unless a person corrected them
    and, asked through ``w.confirm``, says no."""
    from . import _layers

    return labels is None or not _layers.was_edited(labels) or w.confirm(
        "Overwrite corrected labels?",
        f"'{labels.name}' was corrected by hand since the last prediction. Replace it with a "
        f"new prediction? {undo_hint}")


def start_segmentation(w: JobWidget, layers, *, what: str = "Segmentation",
                       on_finish: Callable | None = None, key: tuple | None = None,
                       status_prefix: str = "") -> bool:
    """Segment image ``layers`` with the session's model ``key`` (default: the current choice)
    and settings, from widget ``w``; the final status line starts with ``status_prefix``.

    ``w`` needs ``progress`` (QProgressBar) and ``status`` (QLabel). Corrected labels are only
    overwritten if ``w.confirm`` says yes. Each image's labels change only when its prediction
    finished: Stop leaves the image in progress (and the ones after it) as they were.
    """
    from . import _layers
    from ._jobs import SegmentItem, segment_job

    viewer, session = w.viewer, w.session
    key = key or session.current_key()
    undo = "(Ctrl-Z on the layer undoes it.)"
    keep = [ly for ly in layers if may_replace(w, _layers.find_labels(viewer, ly), undo)]
    if not keep:
        w.status.setText(status_prefix + "nothing to segment (corrected labels kept)")
        return False
    items = [SegmentItem(ly.name, ly.data, _layers.description_of(ly)) for ly in keep]
    by_name = {ly.name: ly for ly in keep}
    threshold, split, tiled = session.threshold, session.split, session.tiled
    modality = session.modality
    device = None if session.device == "auto" else session.device
    done: list[str] = []
    gone: list[str] = []

    def on_event(ev):
        w.show_progress(w.progress, ev)
        seg = ev.payload
        if seg is not None and seg.name in by_name:
            layer = by_name[seg.name]
            if layer in viewer.layers:
                _layers.apply_prediction(viewer, layer, seg.labels, modality)
            else:                            # closed by the user while it was segmented
                gone.append(seg.name)
            done.append(seg.name)
            w.status.setText(f"{seg.name}: {100 * seg.foreground:.1f}% foreground "
                             f"({session.label_of(key)})")

    def on_done(n):
        msg = (f"{status_prefix}segmented {n} of {len(items)} image(s) with "
               f"{session.label_of(key)}")
        if w.should_stop() and n < len(items):
            left = [it.name for it in items if it.name not in done]
            msg += f"; stopped: {', '.join(left)} left as before"
        if gone:
            msg += f"; not written: {', '.join(gone)} (its layer was removed)"
        w.status.setText(msg)

    def on_error(err):
        w.status.setText(f"{status_prefix}error: {err}")

    return w.start_job(
        lambda: segment_job(lambda: session.ensure_model(key), items, threshold=threshold,
                            split=split, tiled=tiled, device=device,
                            should_stop=w.should_stop),
        what=what, on_event=on_event, on_done=on_done, on_error=on_error, on_finish=on_finish)
