"""The engine's clock: every timestamp the engine takes (arrivals, scheduling, each token, the
step statistics) and every wait for a future arrival goes through one Clock, so a run whose
forward pass is simulated can replace real time with simulated time in one place."""
import time


class Clock:
    """Wall time, as time.perf_counter() reads it."""

    def now(self) -> float:
        return time.perf_counter()

    def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)
