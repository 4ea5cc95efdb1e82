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
    # `GPT2.from_pretrained("gpt2")` and the fine-tune of "gpt2-medium" read tiny GPT-2s laid out as those Hub repos
    # in a cache, offline.
    from conftest import make_hf_model
    from local_hub import lay_out_cache, read_files

    for repo, layers in (("gpt2", 2), ("gpt2-medium", 3)):
        make_hf_model(vocab_size=50257, n_positions=64, n_embd=32, n_layer=layers, n_head=2).save_pretrained(
            tmp_path / repo)
        lay_out_cache(str(tmp_path / "hub"), repo, read_files(str(tmp_path / repo)))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
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
    assert "GPT-2 from the Hub: 1," in everything  # 50257 x 32 + ... parameters of the tiny "gpt2" repo
    assert "fine-tuned gpt2-medium (1,6" in everything and "bfloat16 base): validation loss" in everything
    assert "training loss" in everything and "no position attends to a later one" in everything
    assert "['generate', 'generate_text', 'serving_default', 'tokenize']" in everything
    assert "LiteRT-LM text equal to Keras: True" in everything
    assert ("LiteRT greedy tokens equal to Keras" in everything
            and "signatures: ['decode', 'prefill_16', 'prefill_8']" in everything)
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the loss curve and the attention maps
    assert os.listdir(tmp_path / "work" / "logs" / "train")  # TensorBoard event files
    assert (tmp_path / "work" / "gpt2.tflite").stat().st_size > 0


@pytest.mark.parametrize("repo", ["git+https://github.com/example/tf_gpt2.git", "https://example.com/tf_gpt2.zip"])
def test_the_install_cell_asks_pip_for_the_litert_extra_of_a_url(repo, monkeypatch):
    # pip reads "[litert]" after a path as extras, but after a URL as part of the URL: a URL needs "name[extra] @ url".
    from packaging.requirements import Requirement

    install = json.loads(NOTEBOOK.read_text())["cells"][1]
    calls = []
    monkeypatch.setenv("TF_GPT2_REPO", repo)
    import importlib.metadata

    def not_installed(name):  # (a folder named tf_gpt2 on sys.path, as Colab's /content is, is found but no install)
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr("importlib.metadata.version", not_installed)
    monkeypatch.setattr("subprocess.check_call", calls.append)
    exec("".join(install["source"]), {})
    (command,) = calls
    wanted = Requirement(command[command.index("-q") + 1])
    assert (wanted.name, wanted.extras, wanted.url) == ("tf_gpt2", {"litert"}, repo)
