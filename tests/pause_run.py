"""``python tests/pause_run.py POINT MARKER -- <vae_jax CLI args>``: a training run that
stops at POINT, writes MARKER and sleeps, so a test can SIGKILL it exactly there.

POINTs, in the order a run meets them (epochs of 3 steps, progress in chunks):
``before_compile``, ``compiling`` (between two of the programs' compilations),
``epoch_1_mid`` (a chunk of epoch 1 done), ``before_checkpoint_1`` (epoch 1 trained and
evaluated, nothing saved), ``saving_1`` / ``saving_2`` (the checkpoint fully written to its
temporary directory, before orbax renames it into place), ``after_checkpoint_1`` /
``after_checkpoint_2`` (saved, its log not written), ``after_epoch_1`` (log written, its
images not yet), ``epoch_2_mid``.
"""

import asyncio
import sys
import time
from pathlib import Path


def pause(marker: str):
  Path(marker).write_text("paused")
  while True:
    time.sleep(60)


def patch(owner, name, wrap):
  setattr(owner, name, wrap(getattr(owner, name)))


def main():
  point, marker, sep, *cli_args = sys.argv[1:]
  assert sep == "--", "usage: pause_run.py POINT MARKER -- ARGS"
  from vae_jax import __main__ as cli, checkpoint, epoch, training, workdir

  if point == "before_compile":
    patch(epoch.Programs, "__init__", lambda init: lambda *a, **k: (pause(marker), init(*a, **k)))
  elif point == "compiling":
    calls = []
    patch(
      epoch,
      "_compile",
      lambda compile_: (
        lambda *a: (calls.append(1), len(calls) == 2 and pause(marker), compile_(*a))[-1]
      ),
    )
  elif point in ("epoch_1_mid", "epoch_2_mid"):
    first_step = 0 if point == "epoch_1_mid" else 3
    patch(
      training.ProgressBar,
      "update",
      lambda update: (
        lambda self, step: (update(self, step), int(step) > first_step and pause(marker))
      ),
    )
  elif point == "before_checkpoint_1":
    patch(
      checkpoint,
      "save",
      lambda save: (
        lambda mngr, epoch_, *a: (epoch_ == 1 and pause(marker), save(mngr, epoch_, *a))[-1]
      ),
    )
  elif point in ("after_checkpoint_1", "after_checkpoint_2"):
    at = int(point[-1])
    patch(
      checkpoint,
      "save",
      lambda save: (
        lambda mngr, epoch_, *a: (lambda where: (epoch_ == at and pause(marker), where)[-1])(
          save(mngr, epoch_, *a)
        )
      ),
    )
  elif point == "after_epoch_1":
    patch(
      workdir,
      "write_metrics",
      lambda write: (
        lambda directory, records: (
          write(directory, records),
          records and records[-1]["epoch"] == 1 and pause(marker),
        )
      ),
    )
  elif point in ("saving_1", "saving_2"):
    from orbax.checkpoint._src.path import async_path

    rename = async_path.rename

    async def pause_before_final_rename(src, dst):
      if Path(dst).name == point[-1]:
        await asyncio.to_thread(pause, marker)
      return await rename(src, dst)

    async_path.rename = pause_before_final_rename
  else:
    raise SystemExit(f"unknown point {point}")
  sys.argv = ["vae_jax", *cli_args]
  sys.exit(cli.main())


if __name__ == "__main__":
  main()
