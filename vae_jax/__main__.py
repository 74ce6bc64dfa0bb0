"""Command line: train a VAE, then use its checkpoints.

  python -m vae_jax train --workdir DIR [--config FILE] [--config.SECTION.KEY=VALUE ...] [--plugin MODULE]
  python -m vae_jax sample --workdir DIR [--num 64] [--seed 0] [--label K] --out samples.png
  python -m vae_jax reconstruct --workdir DIR [--split test] [--num 8] --out recon.png
  python -m vae_jax encode --workdir DIR [--split test] --out latents.npz
  python -m vae_jax evaluate --workdir DIR [--split test]
  python -m vae_jax likelihood --workdir DIR [--num_samples 5000] [--num 0] [--seed 0]
  python -m vae_jax augment --workdir DIR --out DIR [--num 1000] [--seed 0]
  python -m vae_jax compress --workdir DIR --input IMAGES|test --out FILE [--overwrite]
  python -m vae_jax decompress --workdir DIR --input FILE --out DIR|FILE-ubyte [--overwrite]
  python -m vae_jax sweep --config experiments/ablations/STUDY.py --workdir DIR [--dataset NAME]
  python -m vae_jax prepare --dataset NAME [--from DIR] [--tfds_dir DIR] [--download]
  python -m vae_jax [COMMAND] --help

Several processes (hosts) train one run when each is started with the same command plus
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (or the JAX_*
environment variables). ``train`` on a DIR that holds checkpoints resumes from the latest (same config required;
``--config.run.restart=True`` moves the old run aside). The other commands load
``--checkpoint`` (latest, best or an epoch number). ``--config`` names a config file
(default: vae_jax/configs/default.py, the reference); any key can be overridden in the
ml_collections style, e.g. ``--config.optim.num_epochs=3`` or ``--config.model.name=conv
--config.model.channels=(16,32)`` (a model's or objective's settings are its own, with its
defaults). ``--plugin=MODULE`` (repeatable) imports a module that registers models or
objectives of your own; the run records it, so every later command on DIR imports it again
(as do installed packages' ``vae_jax.plugins`` entry points). Bad input (unknown key, wrong type,
invalid value, unusable data, workdir or checkpoint; an OS error such as a full disk, a name
too long or no permission, naming the path and what to do) is one line on stderr and exit status
2; a non-finite loss is one line and exit status 1. SIGINT or SIGTERM stops at the next safe
point with one line saying what was kept (exit status 128 + the signal); the same command
continues. One process writes a workdir at a time (a lock); a second is refused, naming the first.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging as py_logging
import os
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import cast

import ml_collections
from absl import flags
from ml_collections import config_flags

COMMANDS = {
  "train": "train (or resume) a run: --workdir DIR [--config FILE] [--config.SECTION.KEY=VALUE]",
  "sample": "decode z ~ p(z), the run's prior, into a PNG grid: --workdir DIR --out FILE.png [--num 64] "
  "[--seed 0] [--label K: a conditional model's class]",
  "reconstruct": "originals over reconstructions: --workdir DIR --out FILE.png [--num 8] [--split test]",
  "encode": "posterior means and log-variances (another posterior family: its codes): --workdir DIR --out FILE.npz [--split test]",
  "evaluate": "a split's losses and latent diagnostics (one JSON line): --workdir DIR [--split test]",
  "likelihood": "test NLL by importance sampling (one JSON line): --workdir DIR [--num_samples 5000]",
  "augment": "a conditional model's samples of every class, labelled, as IDX files (a training "
  "set to add to yours): --workdir DIR --out DIR [--num 1000 per class] [--seed 0]",
  "compress": "images into a file, losslessly, by bits-back coding with the run's model: "
  "--workdir DIR --input IDX|PNG_DIR|test --out FILE [--overwrite]",
  "decompress": "a compressed file's images, bit for bit: --workdir DIR --input FILE "
  "--out PNG_DIR|FILE-ubyte [--overwrite]",
  "sweep": "run a study: --config experiments/ablations/STUDY.py --workdir DIR",
  "prepare": "build a TFDS dataset (ArrayRecord) offline from IDX files: --dataset NAME "
  "[--from DIR] [--tfds_dir DIR] [--download]",
}
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.py"


def usage(command: str | None) -> str:
  """The module's usage, or one command's line and its flags; printed by --help."""
  if command not in COMMANDS:
    return (
      __doc__.strip() + "\n\nCommands:\n" + "\n".join(f"  {c:12s}{h}" for c, h in COMMANDS.items())
    )
  return (
    f"python -m vae_jax {command}: {COMMANDS[command]}\n\n"
    + __doc__.strip().split("\n\n", 2)[-1]
    + "\n\nConfig keys (train): "
    + ", ".join(_config_keys())
  )


def _config_keys() -> list[str]:
  from vae_jax import config as config_lib

  return config_lib.known_keys()


def _fail(message: str, status: int = 2) -> int:
  message = " ".join(message.split()).encode("utf-8", "backslashreplace").decode()  # Any path.
  print(f"vae_jax: error: {message}", file=sys.stderr)
  return status


def define_flags() -> flags.FlagValues:
  """The CLI's flags in a FlagValues of their own (main can run more than once in a process)."""
  fv = flags.FlagValues()
  # config_flags applies the --config.* overrides while the flag is parsed, so an unknown key
  # surfaces then, as a KeyError/AttributeError from ml_collections.
  config_flags.DEFINE_config_file(
    "config", str(DEFAULT_CONFIG), "Config file.", flag_values=fv, lock_config=True
  )
  flags.DEFINE_string("workdir", None, "Directory of the run.", flag_values=fv)
  flags.DEFINE_multi_string(
    "plugin",
    [],
    "Module to import first (registers models or objectives "
    "of your own; recorded by the run). Repeatable.",
    flag_values=fv,
  )
  flags.DEFINE_string("checkpoint", "latest", "latest, best or an epoch number.", flag_values=fv)
  flags.DEFINE_string(
    "out",
    None,
    "Output file (sample, reconstruct: .png; encode: .npz); augment: a directory.",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "num",
    None,
    "Images to sample (default 64) or reconstruct (default 8); "
    "likelihood: test examples (default 0 = all); augment: images per class (default 1000).",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "seed", 0, "sample, likelihood, augment: key of the z draws.", flag_values=fv
  )
  flags.DEFINE_integer(
    "label", None, "sample: the class of every image (a conditional model).", flag_values=fv
  )
  flags.DEFINE_string(
    "input",
    None,
    "compress: an IDX file, a directory of PNGs or 'test'; decompress: the compressed file.",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "overwrite", False, "compress, decompress: replace --out if it exists.", flag_values=fv
  )
  flags.DEFINE_integer(
    "num_samples", 5000, "likelihood: importance samples per example.", flag_values=fv
  )
  flags.DEFINE_enum("split", "test", ["train", "test"], "Data split to use.", flag_values=fv)
  flags.DEFINE_string(
    "dataset",
    None,
    "prepare: the TFDS name (mnist, fashion_mnist; others "
    "with --download); sweep: config.data.name of every run.",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "from",
    None,
    "prepare: the directory of IDX files (default: the dataset's bundled or system copy).",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "tfds_dir",
    None,
    "prepare: the TFDS data directory to build in (default: TFDS's own, ~/tensorflow_datasets).",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "download", False, "prepare: let TFDS download and build the dataset.", flag_values=fv
  )
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-process: host:port of process 0 (default: JAX_COORDINATOR_ADDRESS; unset: one process).",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "num_processes", None, "Multi-process: how many (JAX_NUM_PROCESSES).", flag_values=fv
  )
  flags.DEFINE_integer(
    "process_id", None, "Multi-process: this one's index (JAX_PROCESS_ID).", flag_values=fv
  )
  return fv


def config_file_of(argv: list[str]) -> str:
  """The --config argument (default: the reference's config file)."""
  return next(
    (
      a.split("=", 1)[1] if "=" in a else argv[i + 1]
      for i, a in enumerate(argv)
      if a == "--config" and i + 1 < len(argv) or a.startswith("--config=")
    ),
    str(DEFAULT_CONFIG),
  )


def parse(argv: list[str]):
  """(command, flags, config) or an int: the exit status after one error line."""
  config_file = config_file_of(argv)
  path = config_file  # 'file.py:ARG' passes ARG to get_config (ml_collections' config_flags).
  if not Path(path).is_file() and ":" in path and Path(path.rsplit(":", 1)[0]).is_file():
    path = path.rsplit(":", 1)[0]
  if not Path(path).is_file():
    return _fail(
      f"--config {config_file}: not a file (expected a Python file defining get_config())"
    )
  argv, entry_overrides = split_entry_overrides(argv)
  if isinstance(argv, int):
    return argv
  saved_argv, sys.argv = sys.argv, ["vae_jax", *argv]  # config_flags reads sys.argv.
  sys.modules.pop("config_config", None)  # config_flags' module of an earlier file (in-process).
  try:
    fv = define_flags()
    args = fv(["vae_jax", *argv])[1:]
    config = fv["config"].value
  except flags.Error as e:
    cause = e.__cause__ or e.__context__
    if isinstance(cause, (AttributeError, KeyError)) and "config" in str(e).split(":")[0]:
      return _unknown_key(cause, config_file, argv)
    if cause is not None and "Error whilst parsing config file" in str(e):  # get_config raised:
      raised = [
        line.strip()
        for line in str(cause).splitlines()  # its traceback's last line.
        if re.match(r"\s*\w+(Error|Exception): ", line)
      ]
      return _fail(f"--config {config_file}: cannot be loaded ({raised[-1] if raised else cause})")
    return _fail(str(e).splitlines()[0])
  except (AttributeError, KeyError) as e:
    return _unknown_key(e, config_file, argv)
  except Exception as e:  # A config file is user code: whatever it raises is one line.
    # An override indexes what get_config() returned: a list, str or tuple raises TypeError.
    loaded = _config_without_overrides(argv)
    if loaded is not _FAILED and not isinstance(loaded, ml_collections.ConfigDict):
      return _not_a_config_dict(config_file, loaded)
    return _fail(f"--config {config_file}: cannot be loaded ({type(e).__name__}: {e})")
  finally:
    sys.argv = saved_argv
  if not isinstance(config, ml_collections.ConfigDict):
    return _not_a_config_dict(config_file, config)
  if len(args) != 1 or args[0] not in COMMANDS:
    return _fail(f"expected one command ({', '.join(COMMANDS)}), got {args or 'none'}")
  command = args[0]
  if command == "prepare":
    if not fv.dataset:
      return _fail(
        "prepare: --dataset is required (mnist, fashion_mnist, or a TFDS name with --download)"
      )
    return command, fv, config
  if not fv.workdir:
    return _fail("--workdir is required")
  if entry_overrides and command != "train":
    return _fail(
      f"{command}: takes no --config.model.* or --config.objective.* overrides (the run "
      "recorded its settings)"
    )
  from vae_jax import plugins  # Imports jax: after the arguments are known to be good.
  from vae_jax.registry import ConfigError

  try:
    plugins.load(fv.plugin, "--plugin")
    recorded = plugins.recorded(fv.workdir)
    plugins.load(recorded, f"recorded by run {fv.workdir}")
    if command == "train":
      plugins.load(config.get("plugins", ()), "config.plugins")
      config = with_entry_overrides(config, entry_overrides, [*fv.plugin, *recorded], config_file)
      if isinstance(config, int):
        return config
    elif command == "sweep" and fv.plugin:  # The study's runs record them.
      with config.unlocked():
        config.base["plugins"] = tuple(dict.fromkeys([*config.base.get("plugins", ()), *fv.plugin]))
  except ConfigError as e:
    return _fail(str(e))
  if (
    command in ("sample", "reconstruct", "encode", "augment", "compress", "decompress")
    and not fv.out
  ):
    return _fail(f"{command}: --out is required")
  if command in ("compress", "decompress") and not fv.input:
    return _fail(f"{command}: --input is required")
  for name, (low, high, what) in INTEGER_FLAGS.items():
    value = fv[name].value
    if value is not None and not low <= value < high:
      return _fail(f"--{name}={value}: expected an integer {what}")
  return command, fv, config


# Each integer flag's range [low, high): past it, a number cannot be what the flag means (a
# key has 32 bits; counts and indices must fit C's int64 and int32).
INTEGER_FLAGS = {
  "num": (0, 2**63, ">= 0"),
  "num_samples": (1, 2**63, ">= 1"),
  "seed": (0, 2**32, "in [0, 2**32) (the key's 32 bits)"),
  "label": (0, 2**31, ">= 0 (a class index)"),
  "num_processes": (1, 2**31, "in [1, 2**31)"),
  "process_id": (0, 2**31, "in [0, 2**31)"),
}


# The sections chosen by name (config.REGISTERED: model, prior, posterior, objective).
ENTRY_OVERRIDE = re.compile(r"--config\.(model|prior|posterior|objective)\.(\w+)(?:=(.*))?$", re.S)


def split_entry_overrides(argv: list[str]):
  """(other arguments, [(section, key, value text)]) for --config.model.*, --config.prior.*,
  --config.posterior.* and --config.objective.*: they are applied once the chosen entry is
  known, to its settings."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    match = ENTRY_OVERRIDE.match(argv[i])
    if match is None:
      rest.append(argv[i])
    elif match.group(3) is not None:
      overrides.append((match.group(1), match.group(2), match.group(3)))
    elif i + 1 < len(argv):
      overrides.append((match.group(1), match.group(2), argv[i + 1]))
      i += 1
    else:
      return _fail(f"{argv[i]}: expected a value ({argv[i]}=VALUE)"), []
    i += 1
  return rest, overrides


def with_entry_overrides(config, overrides, plugins: list[str], config_file: str):
  """The config with its model, prior, posterior and objective sections for the chosen
  entries (the last --config.<section>.name, else the file's, else the default), the
  overrides checked against that entry's settings and parsed as their types, and
  config.plugins extended (recorded)."""
  from vae_jax import config as config_lib

  values = config.to_dict()
  unknown = [k for k in config_lib.REGISTERED if not isinstance(values.get(k, {}), dict)]
  if unknown:
    return _fail(f"--config {config_file}: config.{unknown[0]} is not a section")
  entries = {}
  for kind, registry in config_lib.registries().items():
    given = dict(values.get(kind, {}))
    names = [value for section, key, value in overrides if section == kind and key == "name"]
    entry = registry.get(names[-1] if names else given.get("name", registry.default))
    entries[kind] = entry
    values[kind] = {
      **entry.settings,
      **{k: v for k, v in given.items() if k != "name"},
      "name": entry.name,
    }
    for section, key, value in overrides:
      if section == kind and key != "name":
        registry.check_key(entry, key, None, shown=value)
  if "plugins" in values or plugins:
    values["plugins"] = tuple(dict.fromkeys([*values.get("plugins", ()), *plugins]))
  args = [
    "vae_jax",
    *(f"--config.{section}.{key}={value}" for section, key, value in overrides if key != "name"),
  ]
  saved_argv, sys.argv = sys.argv, args  # config_flags reads sys.argv.
  try:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_dict(
      "config", ml_collections.ConfigDict(values), flag_values=fv, lock_config=True
    )
    fv(args)
  except flags.Error as e:
    return _fail(str(e).splitlines()[0])
  finally:
    sys.argv = saved_argv
  return fv["config"].value


def _unknown_key(e: Exception, config_file: str | None, argv: list[str]) -> int:
  text = str(e).strip("\"'")
  if "get_config" in text:
    return _fail(
      f"--config {config_file}: defines no get_config() (expected a function returning "
      "an ml_collections.ConfigDict)"
    )
  loaded = _config_without_overrides(argv)  # An override fails on a non-ConfigDict too.
  if loaded is not _FAILED and not isinstance(loaded, ml_collections.ConfigDict):
    return _not_a_config_dict(config_file, loaded)
  return _fail(f"unknown config key {text!r}; known keys: {', '.join(_config_keys())}")


_FAILED = object()  # _config_without_overrides: the config file could not be loaded.


def _not_a_config_dict(config_file: str | None, loaded: object) -> int:
  """The exit status after one error line: get_config() returned `loaded`, which is not a
  ConfigDict (None, a number, a list, a dict...). The one wording for every path."""
  return _fail(
    f"--config {config_file}: get_config() returned a {type(loaded).__name__}, "
    "expected an ml_collections.ConfigDict"
  )


def _config_without_overrides(argv: list[str]):
  """What the config file's get_config() returns (None included), no --config.* applied;
  _FAILED when it cannot be loaded."""
  tokens = [
    a
    for i, a in enumerate(argv)
    if a == "--config" or a.startswith("--config=") or i and argv[i - 1] == "--config"
  ]
  saved_argv, sys.argv = sys.argv, ["vae_jax", *tokens]
  sys.modules.pop("config_config", None)
  try:
    fv = define_flags()
    fv(["vae_jax", *tokens])
    return fv["config"].value
  except Exception:  # User code: its own error is not the one being reported.
    return _FAILED
  finally:
    sys.argv = saved_argv


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if hasattr(sys.stdout, "reconfigure"):
    sys.stdout.reconfigure(errors="backslashreplace")  # Paths that are not UTF-8 still print.
  if any(a in ("--help", "-h", "--helpfull", "help") for a in argv):
    print(usage(next((a for a in argv if a in COMMANDS), None)))
    return 0
  try:
    parsed = parse(argv)
  except OSError as e:  # A --config path the OS refuses (too long, a link loop).
    return _fail(describe_os_error(e, {"config": config_file_of(argv)}))
  if isinstance(parsed, int):
    return parsed
  command, f, config = parsed

  from absl import logging

  logging.set_verbosity(logging.FATAL)  # Orbax logs what our errors already say.
  py_logging.getLogger("asyncio").setLevel(py_logging.CRITICAL)
  # Imports jax: after the arguments are known to be good.
  from vae_jax import interrupt

  previous_handlers = interrupt.install()
  background: list[BaseException] = []  # Errors of other threads while the command runs.
  try:
    with collected_in(background):
      try:  # The OS's limits and C's, for every command: one line.
        status = run(command, f, config)
      except OSError as e:
        gc.collect()  # What a failed save left (futures on a closed loop) is finalized here.
        status = _fail(describe_os_error(e, path_flags(f, config)))
      except OverflowError as e:
        status = _fail(f"a number is out of range ({e}); use a smaller value")
  finally:
    interrupt.restore(previous_handlers)
  if status == 0:  # A failure's line says what failed; after a success, they are news.
    for text in dict.fromkeys(" ".join(str(e).split()) or type(e).__name__ for e in background):
      print(f"vae_jax: warning: a background thread failed: {text}", file=sys.stderr)
  return status


def run(command: str, f, config) -> int:
  """Runs one parsed command; its errors of input (and the OS's, in main) are one line."""
  from vae_jax import (
    checkpoint,
    data,
    distributed,
    evaluate,
    inference,
    interrupt,
    parallel,
    sweep,
    training,
    workdir,
  )
  from vae_jax.registry import ConfigError

  try:
    if command == "prepare":
      from vae_jax import prepare

      tfds_dir = f.tfds_dir or os.path.expanduser("~/tensorflow_datasets")
      where = prepare.prepare(f.dataset, tfds_dir, f["from"].value, f.download)
      print(
        f"Prepared {f.dataset} in {where}; train on it with --config.data.source=tfds "
        f"--config.data.name={f.dataset} --config.data.dir={tfds_dir}"
      )
      return 0
    if command in ("train", "sweep"):  # XLA_FLAGS for the CPU's kernels, before the backend starts.
      from vae_jax import config as config_lib, cpu_kernels

      run = config_lib.flatten(config.get("base") or {} if command == "sweep" else config)
      cpu_kernels.configure(run.get("run.cpu_kernels", "auto"))
    distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)
    parallel.configure_compilation_cache()
    if command == "train":
      _, records = training.train_and_evaluate(config, f.workdir)
      if distributed.is_primary():
        print()
        print(workdir.format_table(records))
        print(
          f"\nOutputs in {f.workdir}: metrics.jsonl, config.json, checkpoints/, "
          "reconstruction_N.png, sample_N.png"
        )
    elif command == "sample":
      out = inference.sample(
        f.workdir,
        f.out,
        num=64 if f.num is None else f.num,
        seed=f.seed,
        which=f.checkpoint,
        label=f.label,
      )
      print(f"Wrote {out}")
    elif command in ("compress", "decompress"):
      from vae_jax import compression

      coder = compression.compress if command == "compress" else compression.decompress
      print(json.dumps(coder(f.workdir, f.input, f.out, which=f.checkpoint, overwrite=f.overwrite)))
    elif command == "augment":
      from vae_jax import augmentation

      out = augmentation.augment(
        f.workdir,
        f.out,
        per_class=1000 if f.num is None else f.num,
        seed=f.seed,
        which=f.checkpoint,
      )
      print(f"Wrote {out}: generated images and their labels as IDX files")
    elif command == "reconstruct":
      out = inference.reconstruct(
        f.workdir, f.out, num=8 if f.num is None else f.num, split=f.split, which=f.checkpoint
      )
      print(f"Wrote {out}")
    elif command == "encode":
      out = inference.encode(f.workdir, f.out, split=f.split, which=f.checkpoint)
      import numpy as np

      print(f"Wrote {out}: {', '.join(np.load(out).files)}")
    elif command == "sweep":
      study = config
      if f.dataset:  # --dataset NAME: the study's runs on that dataset.
        study = sweep.make_study(
          config.name,
          config.get("question", ""),
          dict(config.axes),
          config.seeds,
          {**dict(config.base), "data.name": f.dataset},
        )
      study = sweep.check_study(study, f["config"].config_filename)
      sweep.run_study(study, f.workdir)
      print((Path(f.workdir) / "summary.md").read_text())
      print(f"Outputs in {f.workdir}: results.csv, summary.md, test_loss.png, runs/")
    elif command == "likelihood":
      with warnings.catch_warnings():  # Its warnings are printed once below, not twice.
        warnings.simplefilter("ignore")
        result = evaluate.evaluate_run(
          f.workdir,
          which=f.checkpoint,
          num_samples=f.num_samples,
          seed=f.seed,
          num_examples=f.num or 0,
        )
      for note in result["warnings"]:
        print(f"vae_jax: warning: {note}", file=sys.stderr)
      print(json.dumps(result))
    else:
      print(json.dumps(inference.evaluate(f.workdir, which=f.checkpoint, split=f.split)))
  except (
    ConfigError,
    workdir.WorkdirError,
    data.DataError,
    checkpoint.CheckpointError,
    sweep.StudyError,
    ValueError,
  ) as e:
    return _fail(str(e))
  except FloatingPointError as e:
    return _fail(str(e), status=1)
  except interrupt.Interrupted as e:
    return _fail(*interrupt.describe(e))
  return 0


@contextlib.contextmanager
def collected_in(errors: list):
  """Errors raised in other threads while the body runs (orbax's writers, tensorstore's
  callbacks after a failed save) go to ``errors``, not to stderr as tracebacks. A body that
  fails collects garbage inside (a full collection costs a long-lived process ~0.1 s)."""
  previous = threading.excepthook, sys.unraisablehook
  threading.excepthook = lambda args: errors.append(args.exc_value)
  sys.unraisablehook = lambda unraisable: errors.append(unraisable.exc_value)
  try:
    yield errors
  except BaseException:
    gc.collect()  # What a failed save left (futures on a closed loop) is finalized here.
    raise
  finally:
    threading.excepthook, sys.unraisablehook = previous


# What to do about an OS error, by errno: the line names the path (and its flag) and this.
OS_ADVICE = {
  errno.ENOSPC: "free space on that file system, then run the same command again (a run "
  "resumes from its last checkpoint)",
  errno.EDQUOT: "free space within your quota, then run the same command again",
  errno.EACCES: "choose a path you may write, or change its permissions",
  errno.EPERM: "choose a path you may write, or change its permissions",
  errno.EROFS: "choose a path on a writable file system",
  errno.ENAMETOOLONG: "choose a shorter name (the file system allows 255 bytes per name)",
  errno.ELOOP: "a symbolic link loops or is too deep: fix it, or choose another path",
  errno.ENOENT: "check the path: a directory on the way does not exist",
  errno.ENOTDIR: "check the path: a file stands where a directory is expected",
  errno.EISDIR: "a directory stands where a file is expected: choose another path",
}


def path_flags(f, config) -> dict[str, str | None]:
  """The command's path arguments by flag name (to say which flag an OS error's path is in)."""
  paths = {name: f[name].value for name in ("workdir", "out", "from", "tfds_dir", "input")}
  data_dir = (
    config.get("data", {}).get("dir") if isinstance(config, ml_collections.ConfigDict) else None
  )
  return {**paths, "config.data.dir": data_dir}


def describe_os_error(e: OSError, flags_: dict[str, str | None]) -> str:
  """One line: the flag and path the OS refused, what it said and what to do."""
  where = os.fsdecode(e.filename) if e.filename is not None else None
  flag = next(
    (
      name
      for name, value in flags_.items()
      if value and where and (os.path.abspath(where) + "/").startswith(os.path.abspath(value) + "/")
    ),
    None,
  )
  number = cast(int, e.errno)  # Or None: both .get()s then give their defaults.
  reason = f"{e.strerror or e} ({errno.errorcode.get(number, number)})"
  advice = OS_ADVICE.get(number, "check the path and the file system")
  return f"{f'--{flag} ' if flag else ''}{where or 'a file'}: {reason}; {advice}"


if __name__ == "__main__":
  status = main()
  if status:  # Exit now: orbax's threads may still report a failed read on stderr.
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    os._exit(status)
