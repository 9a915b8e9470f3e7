"""Fingerprints of the code and files a component runs, for TFX's cache.

TFX keys a cached execution on the component's inputs and execution
properties. Our components name their code by module path
("trainer.task.run_fn"), which TFX does not read: a changed model file would
reuse a stale Trainer output. So the pipeline puts `code_fingerprint(module)`
into each component's properties: a hash of the source of the module and of
every project module it imports, directly or not, found by reading the
import statements (nothing is imported to compute it). Third-party code is
left out: it is pinned by the lock.

`file_checksum` does the same for a file a component reads by path (the
extractor's weights, the curated schema).
"""

import ast
import hashlib
import importlib.util
from typing import Dict, Iterable, Set

# The project's top-level packages; imports of anything else are libraries.
PROJECT_PACKAGES = ("captioner", "components", "core", "ingest", "pipeline",
                    "serving", "trainer")


def _module_file(name: str):
  """The source file of a project module, or None (a package's attribute)."""
  try:
    spec = importlib.util.find_spec(name)
  except (ImportError, AttributeError, ValueError):
    return None
  if spec is None or not spec.origin or not spec.origin.endswith(".py"):
    return None
  return spec.origin


def _imported_names(path: str) -> Iterable[str]:
  with open(path, "rb") as f:
    tree = ast.parse(f.read(), filename=path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      yield node.module
      # `from trainer import model`: a module; `from x import name`: not.
      for alias in node.names:
        yield f"{node.module}.{alias.name}"


def project_modules(module: str) -> Dict[str, str]:
  """`module` and every project module it imports, transitively: name ->
  source file."""
  found: Dict[str, str] = {}
  pending = [module]
  seen: Set[str] = set()
  while pending:
    name = pending.pop()
    if name in seen or name.split(".")[0] not in PROJECT_PACKAGES:
      continue
    seen.add(name)
    path = _module_file(name)
    if path is None:
      continue
    found[name] = path
    pending.extend(_imported_names(path))
  if module not in found:
    raise ValueError(f"no project module {module!r} (one of the packages "
                     f"{', '.join(PROJECT_PACKAGES)})")
  return found


def code_fingerprint(*modules: str) -> str:
  """A short hash of the source of `modules` and the project code they
  import; it changes when any of those files changes (comments included)."""
  files: Dict[str, str] = {}
  for module in modules:
    files.update(project_modules(module))
  digest = hashlib.sha256()
  for name in sorted(files):
    with open(files[name], "rb") as f:
      source = f.read()
    digest.update(f"{name}\0{len(source)}\0".encode())
    digest.update(source)
  return digest.hexdigest()[:16]


def file_checksum(path: str) -> str:
  """sha256 of a file's bytes (local or gs://), or the `features.weights`
  value itself when it names no file ("imagenet", "none")."""
  from core import extractors  # pylint: disable=g-import-not-at-top
  return extractors.weights_checksum(path)
