"""``python tests/pause_run.py POINT MARKER -- <vae_jax CLI args>``: a training run that
stops at POINT, writes MARKER and sleeps, so a test can SIGKILL it exactly there.

POINT: ``after_epoch_1`` (checkpoint 1 saved and metrics.jsonl written, its images not yet),
``before_checkpoint_1`` (epoch 1 trained and evaluated, nothing saved) or ``saving_2``
(checkpoint 2 fully written to its temporary directory, before orbax renames it into place).
"""

import asyncio
import sys
import time
from pathlib import Path


def pause(marker: str):
  Path(marker).write_text("paused")
  while True:
    time.sleep(60)


def main():
  point, marker, sep, *cli_args = sys.argv[1:]
  assert sep == "--", "usage: pause_run.py POINT MARKER -- ARGS"
  from vae_jax import __main__ as cli
  from vae_jax import workdir
  if point == "after_epoch_1":
    write_metrics = workdir.write_metrics

    def write_then_pause(workdir, records):
      write_metrics(workdir, records)
      if records and records[-1]["epoch"] == 1:
        pause(marker)
    workdir.write_metrics = write_then_pause
  elif point == "before_checkpoint_1":
    from vae_jax import checkpoint
    save = checkpoint.save

    def pause_then_save(mngr, epoch, *args):
      if epoch == 1:
        pause(marker)
      return save(mngr, epoch, *args)
    checkpoint.save = pause_then_save
  elif point == "saving_2":
    from orbax.checkpoint._src.path import async_path
    rename = async_path.rename

    async def pause_before_final_rename(src, dst):
      if Path(dst).name == "2":
        await asyncio.to_thread(pause, marker)
      return await rename(src, dst)
    async_path.rename = pause_before_final_rename
  else:
    raise SystemExit(f"unknown point {point}")
  sys.argv = ["vae_jax", *cli_args]
  sys.exit(cli.main())


if __name__ == "__main__":
  main()
