"""Shared helpers for the benchmarks: timing, and the result table."""

from __future__ import annotations

import os
import platform
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def best_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best wall time of `repeats` calls after one warm-up call (compilation is not measured)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def print_table(title: str, rows: dict[str, float], unit: str, baseline: str) -> None:
    """Rows of `name -> value` with each value's ratio to `baseline`, as a Markdown table."""
    print(f"\n{title}  ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores)")
    print(f"| system | {unit} | vs {baseline} |\n|---|---:|---:|")
    for name, value in rows.items():
        print(f"| {name} | {value:,.1f} | {value / rows[baseline]:.2f}x |")
