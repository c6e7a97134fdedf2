"""Shared helpers of the benchmark scripts: interleaved medians, peak memory of a child, a fixed
background load."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, timed in turns (a, b, c, a, b, c, ...) so that a load
    change on a shared machine hits every contender alike (`interleaved_times`)."""
    times = interleaved_times(fns, repeats, warmup)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of every call of each function, timed in turns (a, b, c, a, b, c, ...): round r of
    each list ran within the same stretch of time, so per-round ratios cancel slow load changes."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def write_results(result: dict, json_path: str | None, markdown_path: str | None,
                  markdown: Callable[[dict], str]) -> None:
    """Print the result as Markdown; write it as JSON and/or Markdown where asked."""
    text = markdown(result)
    print(text)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
    if markdown_path:
        Path(markdown_path).write_text(text)


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """(lower quartile, median, upper quartile), nearest rank."""
    v = sorted(values)
    return v[len(v) // 4], v[len(v) // 2], v[(3 * len(v)) // 4]


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def reset_peak_rss() -> float:
    """Reset this process's peak resident set size (Linux: clear_refs 5) and return the current
    one in MB: `peak_rss_mb() - reset_peak_rss()` is then the extra memory of what ran between."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident set size (MB) since the last reset_peak_rss (or since the start)."""
    try:
        return _status_mb("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_child(script: str, args: list[str]) -> dict:
    """Run `script --child ARGS` in a fresh process and parse the JSON of its last line."""
    proc = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


# A fixed background load: N Python processes, each multiplying matrices in a loop at a fixed
# thread count, like the other jobs of a CI runner or a shared machine.
_LOAD_LOOP = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(int(sys.argv[2]), int(sys.argv[2]))
while True:
    b = a @ a
"""


class BackgroundLoad:
    """Context manager: `processes` busy processes (torch matmuls of `size` x `size`, `threads`
    threads each) for the duration of the block; none when processes == 0."""

    def __init__(self, processes: int = 2, threads: int = 1, size: int = 256):
        self.processes, self.threads, self.size = processes, threads, size
        self._procs: list[subprocess.Popen] = []

    def describe(self) -> str:
        if not self.processes:
            return "none"
        return f"{self.processes} processes x {self.threads} thread(s), {self.size}x{self.size} matmuls"

    def __enter__(self) -> BackgroundLoad:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        for _ in range(self.processes):
            self._procs.append(subprocess.Popen(
                [sys.executable, "-c", _LOAD_LOOP, str(self.threads), str(self.size)], env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if self.processes:
            time.sleep(3.0)  # torch imported, loops running
        return self

    def __exit__(self, *exc) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
