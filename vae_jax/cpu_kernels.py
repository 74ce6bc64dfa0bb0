"""Which matmul kernels XLA's CPU backend runs: its own (Eigen), XNNPACK or oneDNN.

``config.run.cpu_kernels`` is 'auto', 'xla', 'xnnpack' or 'onednn'. A kernel path other than
XLA's own is an XLA flag, read once when the backend starts, so ``configure`` sets XLA_FLAGS
before that (the CLI calls it before anything touches a device) and refuses a path the
started backend does not run. Other kernels sum floats in another order: the path is
recorded in the run's checkpoints and a run resumes only on the path it was saved with.

'auto' chooses by the CPU: on the CPUs measured (experiments/cpu_kernels.py,
docs/performance-cpu.md) XLA's own kernels had the smallest per-step sum of the three paths
(and, on an idle Intel Xeon, the fastest whole epoch), so auto picks 'xla' there; XLA_FLAGS
that already ask for a path are followed. On a machine shared by many processes XNNPACK's
whole epoch at batch 20 was faster: set the path explicitly there.
"""

from __future__ import annotations

import os

from vae_jax.registry import ConfigError

CHOICES = ("auto", "xla", "xnnpack", "onednn")
FLAGS = {
  "xnnpack": "--xla_cpu_use_xnnpack=true",
  "onednn": "--xla_cpu_experimental_onednn_custom_call=true",
}
# The path auto picks per CPU vendor: the smallest per-step matmul sum measured there.
MEASURED = {"AuthenticAMD": "xla", "GenuineIntel": "xla"}


def cpu_info(path: str = "/proc/cpuinfo") -> dict[str, str]:
  """{'vendor', 'model', 'flags'} of the first CPU ('' where the system does not say)."""
  info = {"vendor": "", "model": "", "flags": ""}
  names = {"vendor_id": "vendor", "model name": "model", "flags": "flags"}
  try:
    with open(path) as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() in names and not info[names[key.strip()]]:
          info[names[key.strip()]] = value.strip()
  except OSError:
    pass
  return info


def requested_by_flags(xla_flags: str) -> str | None:
  """The kernel path XLA_FLAGS turn on ('xnnpack', 'onednn'), or None."""
  on = [name for name, flag in FLAGS.items() if flag in xla_flags.split()]
  return on[0] if len(on) == 1 else (None if not on else "+".join(on))


def resolve(
  setting: str, xla_flags: str | None = None, info: dict | None = None
) -> tuple[str, str]:
  """(path, why) for a run.cpu_kernels setting: auto's choice and the reason it gives."""
  if setting not in CHOICES:
    raise ConfigError(f"config.run.cpu_kernels={setting!r}: expected one of {', '.join(CHOICES)}")
  if setting != "auto":
    return setting, "set in config.run.cpu_kernels"
  xla_flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
  asked = requested_by_flags(xla_flags)
  if asked in FLAGS:
    return asked, f"auto: XLA_FLAGS asks for {FLAGS[asked]}"
  info = cpu_info() if info is None else info
  cpu = info["model"] or "this CPU"
  if info["vendor"] in MEASURED:
    return MEASURED[info["vendor"]], (
      f"auto: {cpu} ({info['vendor']}); the fastest XLA path per "
      "matmul on this vendor's CPUs measured, docs/performance-cpu.md"
    )
  return "xla", f"auto: {cpu} not measured; XLA's own kernels (experiments/cpu_kernels.py measures)"


def backend_started() -> bool:
  from jax._src import xla_bridge

  return xla_bridge.backends_are_initialized()


def configure(setting: str, env=None) -> tuple[str, str]:
  """(path, why): resolves the setting and puts its flag in XLA_FLAGS before the backend
  starts; ConfigError if the flags the backend started with run another path."""
  env = os.environ if env is None else env
  path, why = resolve(setting, env.get("XLA_FLAGS", ""))
  flags = env.get("XLA_FLAGS", "")
  asked = requested_by_flags(flags)
  if asked == path or (asked is None and path == "xla"):
    return path, why
  if asked is None and not backend_started():
    env["XLA_FLAGS"] = f"{flags} {FLAGS[path]}".strip()
    return path, why
  runs = asked or "xla"
  fix = (
    f"remove {' '.join(FLAGS[name] for name in runs.split('+'))} from XLA_FLAGS"
    if path == "xla"
    else f"start the process with {FLAGS[path]} in XLA_FLAGS"
  )
  raise ConfigError(
    f"config.run.cpu_kernels={setting!r} asks for {path} kernels, but "
    + (
      f"XLA_FLAGS={flags!r} asks for {runs}"
      if asked
      else f"the backend already started with {runs}'s (XLA_FLAGS={flags!r})"
    )
    + f": {fix}, or set config.run.cpu_kernels={runs!r}"
  )
