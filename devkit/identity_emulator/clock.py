"""The emulator clock: wall time plus an offset that tests move forward."""

from __future__ import annotations

import threading
import time


class Clock:
    """Wall time plus an offset that tests move forward; share one between emulators."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds
        return self.now()

    @property
    def offset(self) -> float:
        with self._lock:
            return self._offset
