"""Name -> implementation tables for models and objectives; each entry owns its settings.

A registry entry declares its settings (key -> default). The config section of a registry
(``config.model``, ``config.objective``) holds ``name`` and the settings given for that
entry; ``resolve`` fills the others from the entry's own defaults. Two entries may share a
key with different defaults (a plugin's ``beta`` need not be the ELBO's). A key the chosen
entry does not have is refused in one line, unless it is another entry's key left at that
entry's default (a section filled for one entry, then switched by name).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")  # A class a registrar returns as it was given.


class ConfigError(ValueError):
  """A config value is invalid; the message names the key and what was expected."""


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  target: Any  # The model class or the objective.
  settings: dict[str, Any]  # Config key -> default.
  module: str | None = None  # Where it was defined (importable name; None: not importable).
  origin: Any = dataclasses.field(default=None, compare=False, repr=False)  # What was decorated.


def home_module(obj) -> str | None:
  """The importable module that defines obj: its __module__, or for '__main__' the name it
  was run under (python -m pkg.mod); None when it cannot be imported again."""
  module = getattr(obj, "__module__", None)
  if module == "__main__":
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = spec.name if spec is not None and spec.name != "__main__" else None
  return module


def _origin(obj) -> tuple:
  return (home_module(obj), getattr(obj, "__qualname__", None))


class Registry:
  """Entries of one kind ('model', 'objective'), chosen by ``config.<kind>.name``."""

  def __init__(self, kind: str, default: str):
    self.kind, self.default = kind, default
    self.entries: dict[str, Entry] = {}

  def register(
    self,
    name: str,
    target: Any,
    settings: dict[str, Any],
    origin: Any = None,
    replace: bool = False,
  ) -> Entry:
    """Adds an entry; a name already taken is refused unless replace=True (or the same
    definition registers again: its module imported a second time, or reloaded)."""
    origin = target if origin is None else origin
    if not isinstance(name, str) or not name.isidentifier():
      raise ConfigError(f"{self.kind} name {name!r}: expected an identifier (letters, digits, _)")
    old = self.entries.get(name)
    if old is not None and not replace and _origin(old.origin) != _origin(origin):
      raise ConfigError(
        f"{self.kind} {name!r} is already registered (by {old.module or 'a script'}); "
        f"choose another name, or pass replace=True to replace it"
      )
    self.entries[name] = Entry(name, target, dict(settings), home_module(origin), origin)
    return self.entries[name]

  def keys(self) -> dict[str, list[str]]:
    """Every setting key -> the entries that have it."""
    out: dict[str, list[str]] = {}
    for entry in self.entries.values():
      for key in entry.settings:
        out.setdefault(key, []).append(entry.name)
    return out

  def section(self, name: str | None = None) -> dict[str, Any]:
    """A config section filled for one entry (default: the registry's): name and its settings."""
    entry = self.get(name or self.default)
    return {"name": entry.name, **entry.settings}

  def get(self, name: str) -> Entry:
    if name not in self.entries:
      raise ConfigError(
        f"config.{self.kind}.name={name!r}: expected one of "
        f"{', '.join(sorted(self.entries))} (an entry of your own: import the "
        "module that registers it with --plugin=MODULE or config.plugins)"
      )
    return self.entries[name]

  def check_key(self, entry: Entry, key: str, value: Any, shown: str | None = None) -> bool:
    """Whether key belongs to entry; False for another entry's key left at its default;
    ConfigError (one line) otherwise. shown: the value as the user wrote it."""
    if key in entry.settings:
      return True
    where = f"config.{self.kind}.{key}"
    owners = self.keys().get(key, [])
    if any(self.entries[o].settings[key] == value for o in owners) and shown is None:
      return False
    mine = ", ".join(sorted(entry.settings)) or "none"
    if owners:
      raise ConfigError(
        f"{where}={shown or repr(value)}: does not apply to {self.kind} "
        f"{entry.name!r} (its settings: {mine}; {key} is a setting of "
        f"{', '.join(sorted(owners))})"
      )
    if shown is not None:  # From the command line: named as the other unknown flags are.
      raise ConfigError(
        f"unknown config key {key!r}: {where} is not a setting of {self.kind} "
        f"{entry.name!r} (its settings: {mine})"
      )
    raise ConfigError(f"{where}: unknown key; {self.kind} {entry.name!r} settings: {mine}")

  def resolve(self, section: dict[str, Any]) -> tuple[Entry, dict[str, Any]]:
    """(entry, its settings) from a config section, the entry's defaults filling what the
    section leaves out; ConfigError names the first bad key."""
    section = dict(section)
    entry = self.get(section.pop("name", self.default))
    for key, value in section.items():
      self.check_key(entry, key, value)
    return entry, {
      key: check_type(f"config.{self.kind}.{key}", section.get(key, default), default)
      for key, default in entry.settings.items()
    }


def check_type(where: str, value: Any, default: Any) -> Any:
  """value converted to the type of default (int -> float allowed); ConfigError otherwise."""
  kind = type(default)
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if kind is tuple and isinstance(value, (list, tuple)):
    if (
      all(isinstance(v, type(default[0])) and not isinstance(v, bool) for v in value)
      if default
      else True
    ):
      return tuple(value)
  elif isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
    return value
  raise ConfigError(
    f"{where}={value!r}: expected a {kind.__name__}"
    f"{' of ' + type(default[0]).__name__ if kind is tuple and default else ''}"
  )


def module_registrar(
  registry: Registry, base: type, built: tuple[str, ...]
) -> Callable[..., Callable[[T], T]]:
  """``@register(name)`` for a registry of flax Module classes (models, priors, posteriors):
  the class's dataclass fields with defaults, but the ``built`` ones the run sets, are its
  config settings. A class that is not a ``base`` subclass is refused."""

  def register(name: str, replace: bool = False) -> Callable[[T], T]:
    """Class decorator: registers a subclass as ``config.<kind>.name=name``; its dataclass
    fields with defaults are its settings. A name already taken is refused unless
    replace=True."""

    def decorate(cls: T) -> T:
      if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(
          f"register_{registry.kind}({name!r}): {cls!r} is not a subclass of "
          f"vae_jax.{base.__name__}"
        )
      settings = {
        f.name: f.default
        for f in dataclasses.fields(cast(Any, cls))
        if f.name not in built and f.default is not dataclasses.MISSING
      }
      registry.register(name, cls, settings, replace=replace)
      return cls

    return decorate

  register.__doc__ = (register.__doc__ or "").replace("<kind>", registry.kind)
  return register
