"""Name -> implementation tables for models and objectives; their config sections derive from them.

A registry entry declares its settings (key -> default). The config section of a registry
(``config.model``, ``config.objective``) is ``name`` plus the union of every entry's
settings, so ``--config.objective.tc_weight=2`` works from the command line; a key that
the chosen entry does not use is refused when it differs from its default, never ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
  """A config value is invalid; the message names the key and what was expected."""


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  target: Any  # The model class or the objective.
  settings: dict[str, Any]  # Config key -> default.


class Registry:
  """Entries of one kind ('model', 'objective'), chosen by ``config.<kind>.name``."""

  def __init__(self, kind: str, default: str):
    self.kind, self.default = kind, default
    self.entries: dict[str, Entry] = {}

  def register(self, name: str, target: Any, settings: dict[str, Any]) -> Entry:
    """Adds (or replaces) an entry. A setting shared with another entry must share its default."""
    for other in self.entries.values():
      for key in settings.keys() & other.settings.keys():
        if other.name != name and other.settings[key] != settings[key]:
          raise ValueError(f"{self.kind} {name!r}: setting {key!r} defaults to {settings[key]!r} "
                           f"but {self.kind} {other.name!r} defaults it to {other.settings[key]!r}; "
                           "shared settings need one default (or use another name)")
    self.entries[name] = Entry(name, target, dict(settings))
    return self.entries[name]

  def union(self) -> dict[str, Any]:
    """Every setting of every entry with its default."""
    out: dict[str, Any] = {}
    for entry in self.entries.values():
      out.update(entry.settings)
    return out

  def section(self) -> dict[str, Any]:
    """The config section: the default name and every entry's settings."""
    return {"name": self.default, **self.union()}

  def get(self, name: str) -> Entry:
    if name not in self.entries:
      raise ConfigError(f"config.{self.kind}.name={name!r}: expected one of "
                        f"{', '.join(sorted(self.entries))}")
    return self.entries[name]

  def resolve(self, section: dict[str, Any]) -> tuple[Entry, dict[str, Any]]:
    """(entry, its settings) from a config section; ConfigError names the first bad key."""
    section = dict(section)
    entry = self.get(section.pop("name", self.default))
    union = self.union()
    for key, value in section.items():
      where = f"config.{self.kind}.{key}"
      if key not in union:
        raise ConfigError(f"{where}: unknown key; {self.kind} settings: {', '.join(sorted(union))}")
      if key not in entry.settings and value != union[key]:
        raise ConfigError(f"{where}={value!r}: does not apply to {self.kind} {entry.name!r} "
                          f"(its settings: {', '.join(sorted(entry.settings)) or 'none'})")
    return entry, {key: check_type(f"config.{self.kind}.{key}", section.get(key, default), default)
                   for key, default in entry.settings.items()}


def check_type(where: str, value: Any, default: Any) -> Any:
  """value converted to the type of default (int -> float allowed); ConfigError otherwise."""
  kind = type(default)
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if kind is tuple and isinstance(value, (list, tuple)):
    if all(isinstance(v, type(default[0])) and not isinstance(v, bool) for v in value) if default else True:
      return tuple(value)
  elif isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
    return value
  raise ConfigError(f"{where}={value!r}: expected a {kind.__name__}"
                    f"{' of ' + type(default[0]).__name__ if kind is tuple and default else ''}")
