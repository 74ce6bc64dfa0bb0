"""Modules of your own that register models and objectives, imported by name.

A run records them (``config.plugins``: the modules given with ``--plugin=MODULE`` or in the
config, and the modules that define its model and objective), so resuming it, ``load_run``
and every command on its workdir import them again in a fresh process. Installed packages
can instead declare an entry point in the group ``vae_jax.plugins`` (pyproject.toml:
``[project.entry-points."vae_jax.plugins"] my_ideas = "my_pkg.ideas"``); those load whenever a
config is read. A module that cannot be imported is one ConfigError naming it and who asked.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
from pathlib import Path

from vae_jax.registry import ConfigError

GROUP = "vae_jax.plugins"
_installed_loaded = False


def load(names, where: str) -> None:
  """Imports each module (once; Python caches modules). where: who asked ('--plugin',
  'config.plugins', 'run DIR'), named in the error."""
  load_installed()
  for name in names:
    try:
      importlib.import_module(name)
    except Exception as e:  # Any failure of user code is one line naming it.
      cause = f"{type(e).__name__}: {e}".splitlines()[0]
      raise ConfigError(
        f"plugin {name!r} ({where}): cannot be imported ({cause}); put its package "
        "on PYTHONPATH or install it"
      ) from None


def load_installed() -> None:
  """Imports every module of the 'vae_jax.plugins' entry-point group, once per process."""
  global _installed_loaded
  if _installed_loaded:
    return
  _installed_loaded = True
  for point in importlib.metadata.entry_points(group=GROUP):
    try:
      point.load()
    except Exception as e:
      raise ConfigError(
        f"plugin {point.value!r} (entry point {point.name!r} of group {GROUP}, "
        f"package {point.dist.name if point.dist else '?'}): cannot be imported "
        f"({type(e).__name__}: {e})"
      ) from None


def recorded(workdir) -> list[str]:
  """The plugins recorded in a workdir: its config.json's, or a sweep's runs' (none: [])."""
  workdir = Path(workdir)
  try:
    if not workdir.is_dir():
      return []
    files = (
      [workdir / "config.json"]
      if (workdir / "config.json").is_file()
      else sorted(workdir.glob("runs/*/*/config.json"))
    )
  except OSError:  # An unusable name: the command's own checks report it.
    return []
  names = []
  for path in files:
    try:
      names += json.loads(path.read_text()).get("plugins", [])
    except (OSError, ValueError, AttributeError):
      continue  # An unreadable file is reported by the command that reads it.
  return list(dict.fromkeys(n for n in names if isinstance(n, str)))
