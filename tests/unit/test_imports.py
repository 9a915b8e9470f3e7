"""The project's packages import each other in one direction only.

Read from the source (every import statement, at module level or inside a
function), nothing imported:

  core        <- every package may import it; it imports none of ours
  ingest      -> core
  trainer     -> core            (the Trainer's and Transform's module files)
  components  -> core, ingest    (TFX components only)
  pipeline    -> core, ingest, components (trainer modules are named by path)
  serving     -> core, ingest    (a SavedModel client: captions, attention;
                                  batch captioning reads with ingest)
  captioner   -> anything        (the command line; nothing imports it)
"""

import ast
import collections
import os

from core.config import REPO_ROOT
from pipeline import fingerprint

ALLOWED = {
    "core": set(),
    "ingest": {"core"},
    "trainer": {"core"},
    "components": {"core", "ingest"},
    "pipeline": {"core", "ingest", "components"},
    "serving": {"core", "ingest"},
    "captioner": {"core", "ingest", "components", "pipeline", "serving",
                  "trainer"},
}
COMMAND_LINE = "captioner"


def _imports(source: str):
  """(imported module, line) for every absolute import in `source`."""
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, node.lineno
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      yield node.module, node.lineno


def package_imports(root: str = REPO_ROOT):
  """{package: {imported package: ["file:line", ...]}} between our packages."""
  graph = collections.defaultdict(lambda: collections.defaultdict(list))
  for package in fingerprint.PROJECT_PACKAGES:
    for folder, _, files in os.walk(os.path.join(root, package)):
      for name in sorted(files):
        if not name.endswith(".py"):
          continue
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
          source = f.read()
        for module, line in _imports(source):
          top = module.split(".")[0]
          if top in fingerprint.PROJECT_PACKAGES and top != package:
            graph[package][top].append(
                f"{os.path.relpath(path, root)}:{line}")
  return graph


def _cycle(graph):
  """A list of packages forming a cycle, or None."""
  state = {}

  def visit(package, path):
    state[package] = "open"
    for target in sorted(graph.get(package, {})):
      if state.get(target) == "open":
        return path[path.index(target):] + [target]
      if target not in state:
        found = visit(target, path + [target])
        if found:
          return found
    state[package] = "done"
    return None

  for package in sorted(graph):
    if package not in state:
      found = visit(package, [package])
      if found:
        return found
  return None


def test_the_table_names_every_package():
  assert set(ALLOWED) == set(fingerprint.PROJECT_PACKAGES)


def test_no_cycle_between_packages():
  graph = package_imports()
  cycle = _cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle) + "; " + "; ".join(
      f"{a} -> {b} at {graph[a][b][0]}" for a, b in zip(cycle, cycle[1:]))


def test_library_code_never_imports_the_command_line():
  graph = package_imports()
  offenders = [f"{package} at {', '.join(graph[package][COMMAND_LINE])}"
               for package in graph if COMMAND_LINE in graph[package]]
  assert not offenders, f"imports the command line: {offenders}"


def test_every_import_points_the_allowed_way():
  graph = package_imports()
  wrong = [f"{package} -> {target} ({', '.join(places)})"
           for package, targets in sorted(graph.items())
           for target, places in sorted(targets.items())
           if target not in ALLOWED[package]]
  assert not wrong, "\n".join(wrong)


def test_the_check_finds_a_cycle_and_a_command_line_import(tmp_path):
  # The checks above must be able to fail: a made-up tree with both faults.
  for package in fingerprint.PROJECT_PACKAGES:
    (tmp_path / package).mkdir()
  (tmp_path / "core" / "a.py").write_text("from ingest import b\n")
  (tmp_path / "ingest" / "b.py").write_text(
      "def f():\n  from core import a\n  import captioner.cli\n")
  graph = package_imports(str(tmp_path))
  assert _cycle(graph) in (["core", "ingest", "core"],
                           ["ingest", "core", "ingest"])
  assert graph["ingest"][COMMAND_LINE] == ["ingest/b.py:3"]
