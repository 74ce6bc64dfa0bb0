"""Command line: ``python -m vae_jax train --workdir DIR [--config.KEY=VALUE ...]``.

``--config`` names a config file (default: vae_jax/configs/default.py, the reference);
any key can be overridden in the ml_collections style, e.g. ``--config.num_epochs=3``.
Bad input (unknown key, wrong type, invalid value, unusable data or workdir) is one line
on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags
from ml_collections import config_flags

COMMANDS = ("train",)
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.py"


def _fail(message: str) -> int:
  print(f"vae_jax: error: {message}", file=sys.stderr)
  return 2


def main() -> int:
  argv = ["vae_jax", *sys.argv[1:]]
  try:
    # config_flags applies the --config.* overrides while the flag is defined, so an
    # unknown key surfaces here, as a KeyError/AttributeError from ml_collections.
    config_flag = config_flags.DEFINE_config_file("config", str(DEFAULT_CONFIG), "Config file.",
                                                  lock_config=True)
    workdir_flag = flags.DEFINE_string("workdir", None, "Directory for metrics, images, config.")
    args = flags.FLAGS(argv)[1:]
    config = config_flag.value
    config.keys()  # A config file that failed to load raises only when used.
  except OSError as e:
    return _fail(" ".join(str(e).split()))
  except flags.Error as e:
    return _fail(str(e).splitlines()[0])
  except (AttributeError, KeyError) as e:
    from vae_jax.configs import default
    key = str(e).strip("\"'")
    return _fail(f"unknown config key {key!r}; known keys: {', '.join(default.get_config())}")
  if len(args) != 1 or args[0] not in COMMANDS:
    return _fail(f"expected one command ({', '.join(COMMANDS)}), got {args or 'none'}")
  if not workdir_flag.value:
    return _fail("--workdir is required")

  from vae_jax import data, train  # Imports jax: after the arguments are known to be good.
  try:
    _, records = train.train_and_evaluate(config, workdir_flag.value)
  except (train.ConfigError, train.WorkdirError, data.DataError) as e:
    return _fail(str(e))
  print()
  print(train.format_table(records))
  print(f"\nOutputs in {workdir_flag.value}: metrics.jsonl, config.json, "
        "reconstruction_N.png, sample_N.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
