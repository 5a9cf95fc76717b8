"""Safety rules of the package's own source: no eval, no pickles of user data, safe archives."""

import ast
import os

import pytest

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


def test_path_traversal_archive_is_refused(tmp_path):
  from tfrec_music.data.loaders.safe_extract import safe_extract  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  archive = tmp_path / "evil.zip"
  with zipfile.ZipFile(archive, "w") as z:
    z.writestr("release/user_artists.dat", "userID\tartistID\tweight\n")
    z.writestr("../../escaped.txt", "owned")
  target = tmp_path / "out"
  with pytest.raises(Exception) as info:
    safe_extract(str(archive), str(target))
  assert "../../escaped.txt" in str(info.value) or "escape" in str(info.value).lower() \
      or "outside" in str(info.value).lower()
  assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()
