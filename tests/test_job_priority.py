"""Job threads yield the CPU to napari's GUI thread (per-thread niceness on Linux)."""
import os
import sys
import threading

import pytest

from napari_textdiff.widgets import _session

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux")


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


@linux
def test_worker_thread_and_the_threads_it_starts_run_nicer_than_the_gui_thread():
    main_before = _nice(threading.get_native_id())
    seen = {}

    def job():
        seen["lowered"] = _session.lower_this_thread_priority(5)
        _session.lower_this_thread_priority(5)      # a second job on a pooled thread
        seen["job"] = _nice(threading.get_native_id())
        child = threading.Thread(target=lambda: seen.update(child=_nice(threading.get_native_id())))
        child.start()
        child.join()

    t = threading.Thread(target=job)
    t.start()
    t.join()
    assert seen["lowered"] is True
    assert seen["job"] == min(19, main_before + 5)            # set once, not stacked
    assert seen["child"] == seen["job"]          # torch's OpenMP team inherits it the same way
    assert _nice(threading.get_native_id()) == main_before


def test_zero_niceness_changes_nothing():
    before = _nice(threading.get_native_id()) if hasattr(os, "getpriority") else None
    assert _session.lower_this_thread_priority(0) is False
    if before is not None:
        assert _nice(threading.get_native_id()) == before


def test_jobs_wait_for_the_warm_up_imports_however_long_they_take(monkeypatch):
    """A job never imports diffusers beside the warm-up thread (its lazy modules are not
    thread-safe): it waits for the warm-up to end, with no time limit by default."""
    import threading
    import time

    from napari_textdiff.widgets import _session

    warm, started = threading.Event(), threading.Lock()
    monkeypatch.setattr(_session, "_WARM", warm)
    monkeypatch.setattr(_session, "_WARM_STARTED", started)
    _session.wait_warm()                                  # never started: returns at once
    started.acquire()
    threading.Timer(0.5, warm.set).start()               # a slow warm-up
    t0 = time.monotonic()
    _session.wait_warm()
    assert warm.is_set() and time.monotonic() - t0 >= 0.45
