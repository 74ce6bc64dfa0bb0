"""The docs run: every ```python and shell block of README.md, CONTRIBUTING.md and docs/*.md.

A block is either executed here at small size or marked, on the line directly above its
opening fence, ``<!-- not-run: <reason> -->`` (the reason says why: a 10-minute experiment,
a GPU, two processes; and what covers it at small size). A block neither run nor marked, a
block that fails, a relative link to a missing file or heading: each fails a test, so no
example rots. EXPECTED_COUNTS below is the count of each; a new block changes it on purpose.

How a page's blocks run (in order, in one sandbox per page, so one block may train a run
that the next one samples from):
- Working directory: a temporary sandbox holding links to the repository's vae_jax/ and
  experiments/, so ``--workdir runs/x`` and ``--config vae_jax/configs/conv.py`` mean what
  they say. The sandbox is on sys.path, as the current directory is for ``python -m``.
- Small size: the default config (vae_jax.config.default_sections, which get_config,
  configs/default.py and every saved run start from) is the reference with the data pointed
  at 300 train + 100 test synthetic images in IDX files (conftest.write_idx_dir), 1 epoch, no
  progress bar, TensorBoard or images, a checkpoint after the last epoch only. A shell
  line's ``--config.optim.num_epochs=N`` is cut to 3 and ``--num_samples N`` to 20. Nothing
  else is changed: a block that sets epochs in Python gets what it asks for.
- Shell blocks: continuation lines are joined, comments dropped, ``&&`` chains split. Each
  command must be ``bash .ci/setup [test]`` (skipped: this test runs in the environment it
  makes) or ``[.venv/bin/]python -m vae_jax ARGS``, run as ``vae_jax.__main__.main(ARGS)`` in
  this process and expected to return 0. Anything else fails: mark the block.
- Python blocks: exec'd in this process, the blocks of a page sharing one namespace. A block
  whose first line is ``# file: NAME.py`` is a user's own module: it is written to the sandbox
  and imported (later blocks, config files and --plugin use it by name).
- Speed: compiled programs go to jax's persistent compilation cache in a temporary directory
  for this file's tests, so pages that train the same model on the same data compile it once.
The registries (models, priors, posteriors, objectives) and sys.modules are restored after each page (the
cache after the last), so what an example registers does not leak into other tests.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
from conftest import synthetic_split, write_idx_dir

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell", "console")
EXPECTED_COUNTS = {"run": 26, "not_run": 31}
SMALL = {"--config.optim.num_epochs": 3, "--num_samples": 20}  # Flag -> the largest value run.

FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
NOT_RUN = re.compile(r"^\s*<!-- not-run: (.+) -->\s*$")


def blocks(page: Path) -> list[dict]:
  """Every fenced block of a page: lang, code (dedented), line (of the fence), not_run reason."""
  lines = page.read_text().splitlines()
  out, i = [], 0
  while i < len(lines):
    match = FENCE.match(lines[i])
    if not match:
      i += 1
      continue
    indent, lang, start = len(match.group(1)), match.group(2), i
    i += 1
    body = []
    while i < len(lines) and lines[i].strip() != "```":
      body.append(lines[i][indent:])
      i += 1
    marked = NOT_RUN.match(lines[start - 1]) if start else None
    out.append(
      {
        "lang": lang,
        "code": "\n".join(body) + "\n",
        "line": start + 1,
        "not_run": marked.group(1).strip() if marked else None,
      }
    )
    i += 1
  return out


def runnable(block) -> bool:
  return block["lang"] in ("python", *SHELL)


def rel(page: Path) -> str:
  return str(page.relative_to(ROOT))


def shell_commands(code: str) -> list[list[str]]:
  """The argv of each command of a shell block."""
  code = code.replace("\\\n", " ")
  commands = []
  for line in code.splitlines():
    argv = shlex.split(line, comments=True)
    while argv:
      cut = argv.index("&&") if "&&" in argv else len(argv)
      commands.append(argv[:cut])
      argv = argv[cut + 1 :]
  return commands


def small(args: list[str]) -> list[str]:
  """args with the flags of SMALL cut to their small values (--flag=N or --flag N)."""
  out = []
  for i, arg in enumerate(args):
    flag, eq, value = arg.partition("=")
    if flag in SMALL and eq:
      arg = f"{flag}={min(int(value), SMALL[flag])}"
    elif i and args[i - 1] in SMALL and arg.isdigit():
      arg = str(min(int(arg), SMALL[args[i - 1]]))
    out.append(arg)
  return out


def run_shell(code: str, where: str) -> None:
  from vae_jax.__main__ import main

  for argv in shell_commands(code):
    if argv[:2] == ["bash", ".ci/setup"] and argv[2:] in ([], ["test"]):
      continue  # This test runs inside the environment that setup makes.
    if (
      len(argv) >= 3
      and Path(argv[0]).name in ("python", "python3")
      and argv[1:3] == ["-m", "vae_jax"]
    ):
      status = main(small(argv[3:]))
      assert status == 0, f"{where}: `{shlex.join(argv)}` returned {status}"
      continue
    pytest.fail(
      f"{where}: `{shlex.join(argv)}`: not a command this test can run at small size; "
      "run it another way or mark the block `<!-- not-run: <reason> -->`"
    )


def run_python(code: str, namespace: dict, sandbox: Path, where: str) -> None:
  first = code.splitlines()[0] if code.strip() else ""
  file = re.match(r"#\s*file:\s*(\S+\.py)\s*$", first)
  if file:  # A user's module: written where the examples import it from, then imported.
    path = sandbox / file.group(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code)
    if path.parent == sandbox:
      __import__(path.stem)
    return
  exec(compile(code, where, "exec"), namespace)  # noqa: S102  (running the docs is the point)


@pytest.fixture(scope="module")
def docs_data(tmp_path_factory):
  """The small IDX data of every example (compiled programs: the suite's cache, conftest)."""
  splits = {"train": synthetic_split(300, 0), "test": synthetic_split(100, 1)}
  return write_idx_dir(tmp_path_factory.mktemp("docs_idx"), splits)


def registries():
  from vae_jax import config as config_lib

  return list(config_lib.registries().values())


@pytest.mark.parametrize(
  "page",
  [p for p in PAGES if p.exists() and any(runnable(b) and not b["not_run"] for b in blocks(p))],
  ids=rel,
)
def test_page_examples_run_at_small_size(page, docs_data, tmp_path, monkeypatch):
  from vae_jax import config as config_lib

  default_sections = config_lib.default_sections

  def small_defaults(*args, **kwargs):
    config = default_sections(*args, **kwargs)
    config.data.update(source="idx", dir=str(docs_data))
    config.optim.num_epochs = 1
    config.run.update(
      progress=False, tensorboard=False, save_images=False, checkpoint_every_epochs=0
    )
    return config

  monkeypatch.setattr(config_lib, "default_sections", small_defaults)
  for name in ("vae_jax", "experiments"):
    (tmp_path / name).symlink_to(ROOT / name)
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  saved = [
    (r, {k: dict(v) if isinstance(v, dict) else v for k, v in vars(r).items()})
    for r in registries()
  ]
  modules = set(sys.modules)
  namespace = {"__name__": "__docs__"}
  ran = 0
  try:
    for block in blocks(page):
      if not runnable(block) or block["not_run"]:
        continue
      where = f"{rel(page)}:{block['line']}"
      if block["lang"] == "python":
        run_python(block["code"], namespace, tmp_path, where)
      else:
        run_shell(block["code"], where)
      ran += 1
  finally:
    for registry, state in saved:
      vars(registry).clear()
      vars(registry).update(state)
    for name in set(sys.modules) - modules:
      module_file = getattr(sys.modules[name], "__file__", None) or ""
      if module_file.startswith(str(tmp_path)) or name == "config_config":
        del sys.modules[name]
  assert ran == sum(runnable(b) and not b["not_run"] for b in blocks(page))


def test_every_block_is_run_or_marked_with_a_reason():
  counts = {"run": 0, "not_run": 0}
  for page in PAGES:
    if not page.exists():
      continue
    lines = page.read_text().splitlines()
    fences = {b["line"] for b in blocks(page)}
    for i, line in enumerate(lines):  # A mark must sit right above a fence.
      if line.lstrip().startswith("<!-- not-run"):
        assert NOT_RUN.match(line) and i + 2 in fences, (
          f"{rel(page)}:{i + 1}: expected `<!-- not-run: <reason> -->` directly above a ``` fence"
        )
    for block in blocks(page):
      where = f"{rel(page)}:{block['line']}"
      if block["not_run"]:
        assert runnable(block), f"{where}: a not-run mark on a ```{block['lang']} block"
        assert len(block["not_run"].split()) >= 4, (
          f"{where}: say why it cannot run: {block['not_run']!r}"
        )
        counts["not_run"] += 1
      elif runnable(block):
        counts["run"] += 1
      else:
        assert block["lang"] in ("text", "toml", "json", "markdown"), (
          f"{where}: a ```{block['lang'] or '(no language)'} block; name its language "
          "(python and shell blocks run; text, toml, json, markdown are shown only)"
        )
  print(f"docs blocks: {counts['run']} run, {counts['not_run']} marked not-run")
  assert counts == EXPECTED_COUNTS, (
    f"{counts} != EXPECTED_COUNTS {EXPECTED_COUNTS}: update it when you add or mark a block"
  )


def slug(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
  text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
  return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
  found, seen, fenced = set(), {}, False
  for line in page.read_text().splitlines():
    if FENCE.match(line) or line.strip() == "```":
      fenced = not fenced
    match = re.match(r"^#{1,6} (.+)$", line)
    if match and not fenced:
      base = slug(match.group(1))
      n = seen.get(base, 0)
      seen[base] = n + 1
      found.add(base if n == 0 else f"{base}-{n}")
  return found


def links(page: Path) -> list[tuple[int, str]]:
  """(line, target) of every markdown link and image outside code fences."""
  out, fenced = [], False
  for i, line in enumerate(page.read_text().splitlines(), 1):
    if FENCE.match(line) or line.strip() == "```":
      fenced = not fenced
      continue
    if not fenced:
      out += [(i, t) for t in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line))]
  return out


def test_relative_links_point_to_files_and_headings_that_exist():
  for page in PAGES:
    if not page.exists():
      continue
    for line, target in links(page):
      if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
        continue
      path, _, anchor = target.partition("#")
      file = (page.parent / path).resolve() if path else page
      where = f"{rel(page)}:{line}: {target}"
      assert file.exists(), f"{where}: no such file"
      if anchor:
        assert file.suffix == ".md" and anchor in anchors(file), f"{where}: no such heading"


def test_every_docs_page_is_linked_from_the_map():
  index = (ROOT / "docs" / "index.md").read_text()
  for page in (ROOT / "docs").glob("*.md"):
    if page.name != "index.md":
      assert f"]({page.name}" in index, f"docs/{page.name} is not linked from docs/index.md"
  assert "](docs/index.md)" in (ROOT / "README.md").read_text()
