"""Safety rules of the package's own source: no eval, no pickles of user data, one archive extractor.

(The path-traversal archive itself is refused in tests/test_lastfm_hetrec.py.)
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("tfrec_music", "trainer", "tuning")


def _sources():
  for package in PACKAGES:
    for folder, _, names in os.walk(os.path.join(ROOT, package)):
      for name in names:
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          with open(path, encoding="utf-8") as f:
            yield os.path.relpath(path, ROOT), ast.parse(f.read(), filename=path)


def _calls(tree):
  for node in ast.walk(tree):
    if isinstance(node, ast.Call):
      func = node.func
      name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
      owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(
          func.value, ast.Name) else ""
      yield node, owner, name


def test_no_eval_exec_or_pickle():
  problems = []
  for path, tree in _sources():
    for node, owner, name in _calls(tree):
      if owner == "" and name in ("eval", "exec"):
        problems.append(f"{path}:{node.lineno} {name}()")
      if owner in ("pickle", "cPickle", "dill", "joblib", "marshal") or name == "unsafe_load":
        problems.append(f"{path}:{node.lineno} {owner}.{name}()")
      if owner == "yaml" and name == "load":
        problems.append(f"{path}:{node.lineno} yaml.load()")
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
        if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "marshal") for n in names):
          problems.append(f"{path}:{node.lineno} imports a pickle module")
  assert not problems, problems


def test_numpy_loads_refuse_pickles():
  problems = []
  for path, tree in _sources():
    for node, owner, name in _calls(tree):
      if owner in ("np", "numpy") and name == "load":
        flags = {k.arg: k.value for k in node.keywords}
        value = flags.get("allow_pickle")
        if not (isinstance(value, ast.Constant) and value.value is False):
          problems.append(f"{path}:{node.lineno} np.load without allow_pickle=False")
  assert not problems, problems


def test_archives_are_extracted_only_through_the_safe_extractor():
  problems = []
  for path, tree in _sources():
    if path.endswith("safe_extract.py"):
      continue
    for node, _, name in _calls(tree):
      if name in ("extractall", "extract"):
        problems.append(f"{path}:{node.lineno} {name}()")
  assert not problems, problems
