"""The first cell of every notebook installs jaxlab on Colab from JAXLAB_SOURCE,
and stops with a clear message when it is not set (no invented URL)."""
import glob
import os
import sys
import types

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))


def _first_code_cell(path):
  nb = nbformat.read(path, as_version=4)
  return next(c.source for c in nb.cells if c.cell_type == "code")


def _run_on_fake_colab(source, monkeypatch, tmp_path, value):
  """Runs the cell as IPython would on Colab; returns the shell commands it ran."""
  monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
  monkeypatch.delenv("JAXLAB_SOURCE", raising=False)
  monkeypatch.chdir(tmp_path)
  commands = []

  def system(cmd):  # IPython expands {NAME} from the caller's variables
    commands.append(cmd.format(**sys._getframe(1).f_globals))
    if commands[-1].startswith("git clone"):
      os.makedirs(commands[-1].split()[-1])  # what the clone would leave

  shell = types.SimpleNamespace(system=system)
  code = TransformerManager().transform_cell(
      source.replace('JAXLAB_SOURCE = ""', f"JAXLAB_SOURCE = {value!r}", 1))
  exec(compile(code, "first_cell", "exec"), {"get_ipython": lambda: shell})
  return commands


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_first_cell_needs_a_source_and_installs_from_it(path, monkeypatch, tmp_path):
  source = _first_code_cell(path)
  assert "github.com/jaxlab" not in source  # no invented URL
  with pytest.raises(ValueError, match="JAXLAB_SOURCE is empty"):
    _run_on_fake_colab(source, monkeypatch, tmp_path, "")
  folder = tmp_path / "checkout"
  folder.mkdir()
  commands = _run_on_fake_colab(source, monkeypatch, tmp_path, str(folder))
  assert commands == [f"pip install -q -e {folder}"] and os.getcwd() == str(folder)
  monkeypatch.chdir(tmp_path)
  commands = _run_on_fake_colab(source, monkeypatch, tmp_path, "https://example.org/jaxlab.git")
  assert commands == ["git clone -q https://example.org/jaxlab.git jaxlab_repo",
                      "pip install -q -e jaxlab_repo"]
