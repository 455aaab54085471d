"""Executes colab/your_model.ipynb on its tiny setting: a flax CNN with BatchNorm
and dropout trained, loaded back, probed (Hessian, NTK) and trained with NaP."""
import re


def test_notebook_runs_tiny(run_notebook):
  nb = run_notebook("your_model")
  assert nb.images >= 4  # curves, density, NTK, NaP norms
  text = nb.text
  assert "loaded params equal the trained ones: True" in text
  top = re.search(r"top Hessian eigenvalues: \[([^\]]+)\]", text)
  assert top and float(top.group(1).split()[0]) > 0
  drift = dict(re.findall(r"(Adam(?: \+ NaP)?): largest per-channel norm drift (\S+),", text))
  # NaP holds every projected channel norm (float32 rounding); plain Adam lets them move.
  assert float(drift["Adam + NaP"]) < 1e-4 < float(drift["Adam"]), drift
