"""run_demo.py --retrieval: passed through to the REALM stage's run_pretrain.py (device-mode REALM
runs end to end in tests/test_run_pretrain_device.py)."""
import pytest

from realm_tf2.demo import pipeline


class _Stop(Exception):
  pass


@pytest.mark.parametrize("retrieval", ["host", "device"])
def test_realm_stage_passes_retrieval(tmp_path, monkeypatch, retrieval):
  demo = pipeline.Demo(pipeline.DemoConfig(output_dir=str(tmp_path), retrieval=retrieval),
                       printer=lambda s: None, stream=False)
  calls = []

  def run_cli(stage, args, log_name=None):
    del log_name
    calls.append((stage, list(args)))
    raise _Stop()

  monkeypatch.setattr(demo, "run_cli", run_cli)
  with pytest.raises(_Stop):
    demo.stage_realm("ict/export/1/embedder")
  (stage, args), = calls
  assert stage == "realm" and args[0] == "run_pretrain.py"
  assert f"--retrieval={retrieval}" in args
