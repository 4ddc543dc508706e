"""Progress of a run on the main process: a tqdm bar with ETA in a terminal, a plain line now and then elsewhere."""

import sys
import time
from typing import Optional

from ..progress import interactive_output


class RunProgress:
    r"""
    Counts the main process's records. In a terminal it draws a tqdm bar (with ETA); in logs (a pipe, SLURM's output
    file) it writes a plain line every `every` seconds. Other processes stay silent.

    Args:
        total (`int`): Records this process will explain.
        enabled (`bool`, *optional*, defaults to `True`): `False` for no output at all.
        every (`float`, *optional*, defaults to 30): Seconds between plain lines.
        processes (`int`, *optional*, defaults to 1): Processes of the run (the lines say the run's ETA for them).
    """

    def __init__(self, total: int, enabled: bool = True, every: float = 30.0, processes: int = 1):
        self.total, self.enabled, self.every, self.processes = total, enabled, every, processes
        self.done = self.failed = 0
        self.started = self.last_line = time.perf_counter()
        self.bar = None
        if enabled and total and interactive_output():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="Records", unit="rec", leave=True, dynamic_ncols=True)

    def update(self, failed: bool) -> None:
        r"""Count one record (failed when any of its rows has an error)."""
        self.done += 1
        self.failed += int(failed)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(failed=self.failed, refresh=False)
        elif self.enabled and time.perf_counter() - self.last_line >= self.every:
            self.last_line = time.perf_counter()
            self.line()

    def line(self) -> None:
        elapsed = time.perf_counter() - self.started
        rate = elapsed / self.done if self.done else None
        eta = "" if rate is None else f", ETA {_duration(rate * (self.total - self.done))}"
        per = "" if rate is None else f", {rate:.2f} s/record"
        share = " (this process's share)" if self.processes > 1 else ""
        sys.stderr.write(f"batch: {self.done}/{self.total} records{share}, {self.failed} failed{per}{eta}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: Optional[float]) -> str:
    seconds = int(round(seconds or 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
