"""Every command the README gives for a study names a config and a study that exist."""
import os
import re

from experiments import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_opens_with_the_two_commands():
  text = open(os.path.join(ROOT, "README.md")).read()
  head = text.split("\n## ")[0]
  assert "make run" in head and "make test" in head


def test_readme_study_commands_load():
  text = open(os.path.join(ROOT, "README.md")).read()
  commands = re.findall(r"python -m experiments\.run --config=(\S+) --workdir=\S+", text)
  assert commands, "the README lists no study commands"
  for spec in commands:
    config = run.load_config(os.path.join(ROOT, spec))
    run.study_module(config)  # the study module exists and imports


def test_readme_model_contract_example_runs(tmp_path, monkeypatch):
  """The linen example of "Your own model" runs as printed (in a temporary directory)."""
  text = open(os.path.join(ROOT, "README.md")).read()
  section = text.split("### Your own model")[1].split("\n## ")[0]
  code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
  monkeypatch.chdir(tmp_path)
  scope = {}
  exec(compile(code, "README.md", "exec"), scope)
  assert int(scope["result"].state.step) == 200
  assert scope["result"].history[-1]["accuracy"] > 0.5
  assert set(scope["state"]) == {"batch_stats"}
