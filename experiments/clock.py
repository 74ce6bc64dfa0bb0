"""Wall-clock helpers without jax: a benchmark that picks XLA_FLAGS per worker process imports
them before any backend starts."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
  """The fastest of ``repeats`` calls of fn, after one warm-up call (compiles, caches)."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)
