"""The engine's clock: every timestamp the engine takes (arrivals, scheduling, each token, the
step statistics) and every wait for a future arrival goes through one Clock, so a run whose
forward pass is simulated can replace real time with simulated time in one place."""
import time


class Clock:
    """Wall time, as time.perf_counter() reads it."""

    # True for a clock that does not follow wall time (forward=simulated's)
    simulated = False

    # (time.perf_counter itself, not a method that calls it: read on every step of the hot loop)
    now = staticmethod(time.perf_counter)

    def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)


class VirtualClock(Clock):
    """Simulated time, in seconds from 0: it stands still until `advance` moves it (forward=simulated
    adds each step's modelled duration), and waiting for an arrival jumps straight to it."""

    simulated = True

    def __init__(self):
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep_until(self, t: float) -> None:
        self.t = max(self.t, t)

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, f"time runs forward, not by {seconds}"
        self.t += seconds
