"""notebooks/realm_demo.ipynb executes top to bottom (nbclient, current interpreter) at the `test` scale."""
import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "realm_demo.ipynb")


def test_notebook_is_valid_and_colab_ready():
  import nbformat  # pylint: disable=g-import-not-at-top
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  first = nb.cells[1].source
  assert nb.cells[1].cell_type == "code"
  assert 'find_spec("realm_tf2") is None' in first and "pip" in first  # install only when missing
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored without outputs


@pytest.mark.slow
def test_notebook_runs_tiny(tmp_path):
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top
  # A kernelspec that runs THIS interpreter (the one with realm_tf2 installed).
  spec_dir = tmp_path / "kernels" / "realm-test"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "realm-test", "language": "python"}))
  os.environ["JUPYTER_PATH"] = str(tmp_path) + os.pathsep + os.environ.get("JUPYTER_PATH", "")
  os.environ["REALM_DEMO_SCALE"] = "test"
  os.environ["REALM_DEMO_OUTPUT_DIR"] = str(tmp_path / "demo")
  os.environ["MPLBACKEND"] = "Agg"
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="realm-test",
                                   resources={"metadata": {"path": REPO}})
  try:
    client.execute()
  finally:
    for k in ("REALM_DEMO_SCALE", "REALM_DEMO_OUTPUT_DIR"):
      os.environ.pop(k, None)
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.get("output_type") == "stream")
  assert "skipping pip install" in text
  assert "index versions seen during REALM:" in text
  assert "before REALM #1" in text and "after REALM  #1" in text
  assert "evidence:" in text
  assert "REALM demo summary" in text
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert images, "the training-curve plot was not rendered"
  with open(tmp_path / "demo" / "summary.json") as f:
    assert json.load(f)["index_refreshes"] >= 2
