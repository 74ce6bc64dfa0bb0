"""A full disk, without root: OSError(ENOSPC) raised in-process where the OS would raise it
(orbax's file write, in its writer thread; the PNG writer). The failing run says so in one
line, and the same command then resumes and ends with the metrics of a run never disturbed."""

import errno
import io
import json
import os

import PIL.PngImagePlugin
from conftest import train_args

from vae_jax import __main__ as cli

TIMING_KEYS = ("train_seconds", "compile_seconds")


def run_main(capsys, argv):
  status = cli.main([str(a) for a in argv])
  captured = capsys.readouterr()
  return status, captured.err.strip().splitlines()


def metrics(workdir):
  return [
    {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
    for line in (workdir / "metrics.jsonl").read_text().splitlines()
  ]


def no_space(*args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_in_orbaxs_writer_thread_is_one_line_and_the_run_resumes(
  trained_run, session_idx_dir, tmp_path, capsys, monkeypatch
):
  from orbax.checkpoint._src.path import async_path

  write_text = async_path.write_text

  async def fails_in_epoch_2(path, text):  # Orbax's commit file, written in a worker thread.
    if path.parent.name.startswith("2"):
      return await async_path.asyncio.to_thread(no_space)
    return await write_text(path, text)

  workdir = tmp_path / "run"
  monkeypatch.setattr(async_path, "write_text", fails_in_epoch_2)
  status, lines = run_main(
    capsys, train_args(workdir, session_idx_dir, "--config.run.async_checkpoints=True")
  )
  assert status == 2 and len(lines) == 1, lines
  assert lines[0].startswith("vae_jax: error: checkpoint ") and "(ENOSPC)" in lines[0], lines[0]
  monkeypatch.setattr(async_path, "write_text", write_text)  # Space freed: the same command.
  status, lines = run_main(
    capsys, train_args(workdir, session_idx_dir, "--config.run.async_checkpoints=True")
  )
  assert status == 0 and lines == [], lines
  assert metrics(workdir) == metrics(
    trained_run
  )  # As a run never disturbed: no epoch lost or repeated.


def test_a_full_disk_while_writing_an_image_is_one_line_naming_it_and_the_run_resumes(
  trained_run, session_idx_dir, tmp_path, capsys, monkeypatch
):
  workdir = tmp_path / "run"
  args = [*train_args(workdir, session_idx_dir), "--config.run.save_images=True"]
  save = PIL.PngImagePlugin._save
  calls = []

  def fails_at_epoch_2(image, fp, filename, *a, **k):
    if not isinstance(fp, io.BytesIO):  # A file (TensorBoard encodes its grids in memory).
      calls.append(1)
      if len(calls) == 3:  # Epoch 2's first image (two per epoch).
        no_space()
    return save(image, fp, filename, *a, **k)

  monkeypatch.setitem(PIL.Image.SAVE, "PNG", fails_at_epoch_2)
  status, lines = run_main(capsys, args)
  assert status == 2 and len(lines) == 1, lines
  assert "reconstruction_2.png: No space left on device (ENOSPC); free space" in lines[0], lines[0]
  assert not any(p.name.endswith(".tmp") for p in workdir.iterdir())  # No half-written image.
  monkeypatch.setitem(PIL.Image.SAVE, "PNG", save)
  status, lines = run_main(capsys, args)
  assert status == 0 and lines == [], lines
  assert metrics(workdir) == metrics(trained_run)
  assert (workdir / "reconstruction_2.png").is_file() and (workdir / "sample_2.png").is_file()
