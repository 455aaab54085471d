"""A workdir written before the mesh keys existed resumes when the new config keeps their defaults."""
import pytest

from jaxlab.train import errors, io, workdir


def _old_and_new(tmp_path, mesh):
  old = {"seed": 0, "model": {"width": 8}, "progress": True}
  io.write_json(str(tmp_path / "config.json"), old)
  return {**old, "mesh": mesh}


def test_absent_mesh_keys_at_their_defaults_are_no_change(tmp_path):
  new = _old_and_new(tmp_path, {"data": -1, "fsdp": 1})
  assert workdir.check_config(str(tmp_path), new) == {}
  assert io.read_json(str(tmp_path / "config.json"))["mesh"] == {"data": -1, "fsdp": 1}


def test_absent_mesh_key_at_another_value_is_a_change(tmp_path):
  new = _old_and_new(tmp_path, {"data": -1, "fsdp": 2})
  with pytest.raises(errors.ConfigChangedError, match=r"mesh.fsdp: '<absent>' -> 2"):
    workdir.check_config(str(tmp_path), new)


def test_a_recorded_mesh_key_changed_back_to_its_default_is_a_change(tmp_path):
  io.write_json(str(tmp_path / "config.json"), {"seed": 0, "mesh": {"data": 2, "fsdp": 2}})
  with pytest.raises(errors.ConfigChangedError, match="mesh.data: 2 -> -1"):
    workdir.check_config(str(tmp_path), {"seed": 0, "mesh": {"data": -1, "fsdp": 2}})
