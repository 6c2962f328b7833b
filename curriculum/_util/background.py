"""The one helper for background work: a daemon thread whose error is re-raised to the caller.

Every part of ``curriculum`` that works in the background (the store's index rebuild, the
negatives table, the loader's re-scoring, the index refresher) runs through a
:class:`BackgroundTask`, so the rules hold everywhere: one job at a time per task, an error is
kept and re-raised (wrapped in ``RuntimeError`` naming the task) on the caller's next
:meth:`BackgroundTask.check` or :meth:`BackgroundTask.wait`, and waiting never happens while
the task holds a lock - callers must not hold a lock the job needs when they call ``wait``.
"""

from __future__ import annotations

import threading
from typing import Callable


class BackgroundTask:
    """Run one job at a time in a daemon thread; re-raise its error to the caller.

    Example:
        >>> task = BackgroundTask("demo")
        >>> box = []
        >>> task.start(lambda: box.append(1))
        True
        >>> task.wait(); box
        [1]
        >>> _ = task.start(lambda: 1 / 0); task.wait()
        Traceback (most recent call last):
        ...
        RuntimeError: demo failed: ZeroDivisionError('division by zero')
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._guard = threading.Lock()  # guards _thread / _error only, never held while a job runs

    @property
    def running(self) -> bool:
        """Whether a job is in progress."""
        t = self._thread
        return t is not None and t.is_alive()

    def start(self, job: Callable[[], None]) -> bool:
        """Start ``job`` in a thread unless one is running; returns whether it started."""
        with self._guard:
            if self._thread is not None and self._thread.is_alive():
                return False

            def run() -> None:
                try:
                    job()
                except BaseException as exc:  # kept for the caller's next check()/wait()
                    with self._guard:
                        self._error = exc

            t = threading.Thread(target=run, name=f"curriculum-{self.name}", daemon=True)
            t.start()
            self._thread = t  # published only once started: a concurrent wait() can join it
            return True

    def wait(self, timeout: float | None = None) -> None:
        """Block until the running job (if any) is done, then re-raise its error. Never call it
        while holding a lock the job needs."""
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                raise TimeoutError(f"{self.name}: still running after {timeout} s")
        self.check()

    def check(self) -> None:
        """Re-raise (once) the error of a finished job, as ``RuntimeError`` naming this task."""
        with self._guard:
            exc, self._error = self._error, None
        if exc is not None:
            raise RuntimeError(f"{self.name} failed: {exc!r}") from exc
