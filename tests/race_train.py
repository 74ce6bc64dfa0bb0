"""Two `train` processes started together on one workdir, 10 tries: one refused, the other
finishes bit-identical to a lone run. A measurement, not a test (the suite repeats it twice):

  .venv/bin/python tests/race_train.py
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import synthetic_split, write_idx_dir  # This script's directory is tests/.

root = Path(tempfile.mkdtemp())
idx = write_idx_dir(
  root / "idx", {"train": synthetic_split(300, 0), "test": synthetic_split(100, 1)}
)


def args(w):
  return [
    sys.executable,
    "-m",
    "vae_jax",
    "train",
    f"--workdir={w}",
    "--config.data.source=idx",
    f"--config.data.dir={idx}",
    "--config.optim.num_epochs=3",
    "--config.run.progress=False",
  ]


def strip(w):
  return [
    {k: v for k, v in json.loads(l).items() if k not in ("train_seconds", "compile_seconds")}
    for l in (w / "metrics.jsonl").read_text().splitlines()
  ]


lone = root / "lone"
subprocess.run(args(lone), check=True, capture_output=True)
ok = 0
for i in range(10):
  w = root / f"try{i}"
  procs = [
    subprocess.Popen(args(w), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(2)
  ]
  outs = [p.communicate() for p in procs]
  codes = sorted(p.returncode for p in procs)
  refused = [o[1].strip() for p, o in zip(procs, outs) if p.returncode == 2]
  same = strip(w) == strip(lone)
  print(i, codes, same, refused[0][:120] if refused else "")
  ok += (
    codes == [0, 2]
    and same
    and len(refused) == 1
    and "in use by another vae_jax process" in refused[0]
  )
print(f"{ok} of 10 tries: one refused, the other bit-identical to the lone run")
