"""SIGINT and SIGTERM stop a run at its next safe point, not in the middle of a write.

The first signal sets a flag that the training loop reads between compiled chunks and after
each epoch's checkpoint; it then raises ``Interrupted`` and the CLI says, in one line, what
was kept and that the same command continues. A second signal ends the process at once
(the checkpoints are atomic, so even that loses nothing but the epoch in flight).
"""

from __future__ import annotations

import os
import signal

_received: list[int] = []


class Interrupted(Exception):
  """A stop asked for by a signal; args: (signal number, what was kept)."""


def install() -> dict:
  """Handles SIGINT and SIGTERM for this process (the CLI's; a library caller keeps its own).

  Returns the previous handlers, for restore.
  """
  _received.clear()
  return {signum: signal.signal(signum, _handle) for signum in (signal.SIGINT, signal.SIGTERM)}


def restore(handlers: dict) -> None:
  for signum, handler in handlers.items():
    signal.signal(signum, handler)


def _handle(signum, frame) -> None:
  if _received:  # A second signal: the default action, now.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
  _received.append(signum)


def requested() -> bool:
  """Whether a signal asked the run to stop (it stops at the next check)."""
  return bool(_received)


def check(kept: str) -> None:
  """Raises Interrupted if a signal came; ``kept`` says what the run has saved so far."""
  if _received:
    raise Interrupted(_received[0], kept)


def describe(e: Interrupted) -> tuple[str, int]:
  """(one line, exit status 128 + signal) for the CLI."""
  signum, kept = e.args
  name = signal.Signals(signum).name
  return f"stopped by {name}: {kept}; run the same command to continue", 128 + signum
