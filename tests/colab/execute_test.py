"""colab/execute.py's scrub: no machine path and no progress-bar redraws reach a saved notebook."""
import importlib.util
import os
import tempfile

import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("colab_execute", os.path.join(ROOT, "colab", "execute.py"))
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)

PATHS = [("/home/u/repo/.venv", "<venv>"), ("/home/u/repo", "."), ("/tmp", "<tmp>"),
         ("/home/u", "~")]


def _notebook(*outputs):
  nb = new_notebook()
  nb.cells.append(new_code_cell("x", outputs=list(outputs)))
  return nb


def test_paths_in_streams_displays_and_tracebacks_become_placeholders():
  text = ('workdir: /tmp/icl_linreg_ab12\n'
          'File "/home/u/repo/.venv/lib/python3.12/site-packages/jax/x.py", line 1\n'
          '/home/u/repo/jaxlab/a.py:3: UserWarning: /home/u/data and /home/u/repo\n'
          'left alone: /home/u/repo2/x /data/home/u/repo /tmpfoo\n')
  png = "iVBORw0KGgo="
  nb = execute.scrub(_notebook(
      new_output("stream", name="stdout", text=text),
      new_output("display_data", data={"text/plain": "<Figure at /tmp/a>", "image/png": png}),
      new_output("error", ename="E", evalue="in /home/u/repo",
                 traceback=["\x1b[0;32m/home/u/repo/jaxlab/a.py\x1b[0m:3"])), PATHS)
  stream, display, error = nb.cells[0].outputs
  assert stream.text == ('workdir: <tmp>/icl_linreg_ab12\n'
                         'File "<venv>/lib/python3.12/site-packages/jax/x.py", line 1\n'
                         './jaxlab/a.py:3: UserWarning: ~/data and .\n'
                         'left alone: ~/repo2/x /data/home/u/repo /tmpfoo\n')
  assert display.data == {"text/plain": "<Figure at <tmp>/a>", "image/png": png}
  assert error.traceback == ["\x1b[0;32m./jaxlab/a.py\x1b[0m:3"] and error.evalue == "in ."


def test_progress_bars_keep_their_last_state_and_streams_merge_in_order():
  nb = execute.scrub(_notebook(
      new_output("stream", name="stderr", text="arm:   0%|   | 0/9\rarm:  50%|█  | 4/9"),
      new_output("stream", name="stderr", text="\rarm: 100%|███| 9/9\n"),
      new_output("stream", name="stdout", text="done\n"),
      new_output("stream", name="stderr", text="b: 1/2\rb: 2/2\r\nwarning\n")), PATHS)
  assert [(o.name, o.text) for o in nb.cells[0].outputs] == [
      ("stderr", "arm: 100%|███| 9/9\n"), ("stdout", "done\n"), ("stderr", "b: 2/2\nwarning\n")]
  nbformat.validate(nb)


def test_default_paths_are_this_machines():
  here = os.path.join(execute.ROOT, "jaxlab", "a.py")
  work = os.path.join(tempfile.gettempdir(), "nap_ab12")
  nb = execute.scrub(_notebook(new_output("stream", name="stdout", text=f"{here} {work}\n")))
  assert nb.cells[0].outputs[0].text == "./jaxlab/a.py <tmp>/nap_ab12\n"
