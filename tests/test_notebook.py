"""notebooks/quickstart.ipynb runs top to bottom (tiny sizes) in a real Jupyter kernel, and shows what it promises."""

import json
import os
import pathlib

import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_notebook_is_saved_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


def test_quickstart_notebook_runs_and_shows_its_results(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("TF_GPT2_TINY", "1")
    monkeypatch.setenv("TF_GPT2_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    def text(cell):
        return "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", ""))
                       for o in cell.outputs)

    code = [c for c in notebook.cells if c.cell_type == "code"]
    everything = "\n".join(text(c) for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert "decode(encode(text)) == text" in everything
    assert "training loss" in everything and "no position attends to a later one" in everything
    assert "['generate', 'generate_text', 'serving_default']" in everything
    assert "LiteRT-LM text equal to Keras: True" in everything
    assert "LiteRT greedy tokens equal to Keras" in everything and "signatures: ['decode', 'prefill_16', 'prefill_8']" in everything
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the loss curve and the attention maps
    assert os.listdir(tmp_path / "work" / "logs" / "train")  # TensorBoard event files
    assert (tmp_path / "work" / "gpt2.tflite").stat().st_size > 0
