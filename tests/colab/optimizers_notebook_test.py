"""Executes colab/optimizers.ipynb on its tiny setting."""


def test_notebook_runs_tiny(run_notebook):
  nb = run_notebook("optimizers")
  # the schedule plot, TrAct's and AutoLRS's figures, plus the study's three plots
  assert nb.images >= 6
  text = nb.text
  assert "registered:" in text and "AlgoPerf-style score" in text
  loss_line = [ln for ln in text.splitlines() if ln.startswith("diffGrad after 300 steps")][0]
  assert float(loss_line.split()[-1]) < 1e-2  # diffGrad converged on the quadratic
  # TrAct: both arms at both contrasts report their steps to 90% accuracy
  assert sum("steps to 90% train accuracy" in ln for ln in text.splitlines()) == 4
  # AutoLRS: the tiny run (40 steps, stages 10, 20, ...) chose a rate for each of its stages
  stages = [ln for ln in text.splitlines() if ln.startswith("stage from step")]
  assert len(stages) >= 2
  assert all(1e-3 <= float(ln.split()[-1]) <= 1.0 for ln in stages)  # inside [min_lr, max_lr]
  # every learning-rate-free learner made progress on the quadratic with no learning rate given
  free = [ln for ln in text.splitlines() if "loss after 200 steps" in ln]
  assert len(free) == 6
  assert all(float(ln.split()[-3]) < 0.1 * 5.5 for ln in free)
