"""Executes colab/hessian_studies.ipynb on its tiny setting (every study on a tiny override)."""
import re


def test_notebook_runs_tiny(run_notebook):
  nb = run_notebook("hessian_studies")
  text = nb.text
  # hessian_outliers 3 plots, batch_hessian 3, edge_of_stability 1, lr_transfer 2 (when present).
  assert nb.images >= 7, nb.images
  assert "outlier count per arm" in text and "median λ_max·η/2" in text
  fit = re.search(r"fit: λ = (\S+), Pσ² = (\S+), rms relative error (\S+)%", text)
  assert fit and float(fit.group(1)) > 0
  assert "measured max-stable-rate exponents" in text
  assert "lr_transfer optimum shift" in text or "lr_transfer skipped" in text
