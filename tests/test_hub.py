"""GPT-2 by name: Hugging Face repo ids through huggingface_hub (its cache, HF_HUB_OFFLINE, HF_ENDPOINT), with
tiny repos saved by transformers and laid out here, never on the network. The environment variables are read
when huggingface_hub is imported, so each case runs in a fresh process, as a user's program would."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
from local_hub import COMMIT, lay_out_cache, read_files, serve

from tf_gpt2 import GPT2
from tf_gpt2.hub import hub_repo_id

TINY = dict(vocab_size=50257, n_positions=32, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3)
IDS = [[464, 3290, 318, 257, 11]]


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """{repo id: {file: bytes}}: float32 safetensors, bfloat16 shards, pickled weights only, and a Llama."""
    torch = pytest.importorskip("torch")
    from conftest import make_hf_model

    root = tmp_path_factory.mktemp("repos")
    model = make_hf_model(**TINY)
    model.save_pretrained(root / "tiny")
    model.to(torch.bfloat16).save_pretrained(root / "sharded-bf16", max_shard_size="2MB")
    shutil.copytree(root / "sharded-bf16", root / "renamed")  # shards by other names than transformers gives them:
    index = json.loads((root / "renamed" / "model.safetensors.index.json").read_text())  # read by the index's names
    for shard in set(index["weight_map"].values()):
        (root / "renamed" / shard).rename(root / "renamed" / shard.replace("model-", "part["))
    index["weight_map"] = {k: v.replace("model-", "part[") for k, v in index["weight_map"].items()}
    (root / "renamed" / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copytree(root / "renamed", root / "lost-shard")  # its index names a shard the repo lacks
    (root / "lost-shard" / "part[00002-of-00002.safetensors").unlink()
    model.to(torch.float32).config.save_pretrained(root / "binonly")  # the legacy layout: a pickled state dict
    torch.save(model.state_dict(), root / "binonly" / "pytorch_model.bin")
    shutil.copytree(root / "binonly", root / "binplus")  # beside an adapter's safetensors (a PEFT fine-tune's): the
    shutil.copy(root / "tiny" / "model.safetensors", root / "binplus" / "adapter_model.safetensors")  # .bin is read
    # Pickled weights in shards named by pytorch_model.bin.index.json, as transformers wrote them before safetensors.
    model.config.save_pretrained(root / "sharded-bin")
    state, names = model.state_dict(), sorted(model.state_dict())
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        shard = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: state[k] for k in part}, root / "sharded-bin" / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (root / "sharded-bin" / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    untyped = json.loads((root / "tiny" / "config.json").read_text())  # as older saves were: read as GPT-2's
    del untyped["model_type"]
    (root / "untyped").mkdir()
    (root / "untyped" / "config.json").write_text(json.dumps(untyped))
    (root / "untyped" / "model.safetensors").write_bytes((root / "tiny" / "model.safetensors").read_bytes())
    (root / "timm").mkdir()  # no model_type, and not GPT-2's: refused by its config, before its weights
    (root / "timm" / "config.json").write_text(json.dumps({"architecture": "resnet50", "num_classes": 1000}))
    (root / "timm" / "model.safetensors").write_bytes((root / "tiny" / "model.safetensors").read_bytes())
    shutil.copytree(root / "tiny", root / "peft")  # with a LoRA adapter, which transformers with peft applies
    (root / "peft" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    (root / "llama").mkdir()
    (root / "llama" / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 8}))
    (root / "kerashub").mkdir()  # a keras-hub preset on the Hub: its config names no model_type either
    (root / "kerashub" / "config.json").write_text(json.dumps({
        "module": "keras_hub.src.models.gpt2.gpt2_backbone", "class_name": "GPT2Backbone",
        "config": {"vocabulary_size": 50257}, "registered_name": "keras_hub>GPT2Backbone"}))
    (root / "kerashub" / "model.weights.h5").write_bytes(b"weights")
    found = {f"org/{name}": read_files(str(root / name))
             for name in ("tiny", "sharded-bf16", "renamed", "lost-shard", "binonly", "binplus", "sharded-bin",
                          "untyped", "timm", "llama", "kerashub", "peft")}
    assert "model.safetensors.index.json" in found["org/sharded-bf16"]
    assert not any(f.endswith(".safetensors") for f in found["org/binonly"])
    return found


SCRIPT = textwrap.dedent("""
    import contextlib, io, json, sys
    import numpy as np
    from tf_gpt2 import GPT2
    from tf_gpt2.cli import main

    ids, result = np.array({ids}), {{"diff": {{}}, "errors": {{}}, "cli": {{}}}}
    for name in {loads}:
        ours = np.asarray(GPT2.from_pretrained(name)(ids))
        if {local}:  # the same files read from a plain directory (transformers would fetch files of its own)
            theirs = np.asarray(GPT2.from_pretrained({local}[name])(ids))
        else:  # (torch and transformers load only here: seconds of the test's time)
            import torch, transformers
            hf = transformers.GPT2LMHeadModel.from_pretrained(name.removeprefix("hf://"), dtype=torch.float32)
            with torch.no_grad():
                theirs = hf(torch.tensor(ids)).logits.numpy()
        result["diff"][name] = float(np.abs(ours - theirs).max())
    for name, revision in {fails}:
        try:
            GPT2.from_pretrained(name, revision=revision)
            result["errors"][name] = "loaded"
        except Exception as e:
            result["errors"][name] = f"{{type(e).__name__}}: {{e}}"
    for name in {cli}:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["generate", "Hello", "--model", name, "--max-new-tokens", "3"])
        result["cli"][name] = [code, err.getvalue()]
    print(json.dumps(result))
""")


def run_script(env, loads=(), fails=(), cli=(), local=None, cwd=None):
    """Load `loads` by name (compared with transformers' logits, or with the directories in `local`), try
    `fails` [(name, revision)] and the CLI on `cli`, in a fresh process with `env`."""
    code = SCRIPT.format(ids=IDS, loads=list(loads), fails=list(fails), cli=list(cli), local=local or {})
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", **env}
    env.pop("HF_TOKEN", None)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_names_load_from_the_hugging_face_cache_offline(repos, tmp_path):
    """The cache layout (snapshots of symlinks into blobs/), float32, sharded bfloat16 and pickled weights (one file
    or shards), by id and as hf://, equal transformers' logits for the same id; failures name the repo and what to
    do."""
    for repo_id, files in repos.items():
        lay_out_cache(str(tmp_path / "cache"), repo_id, files)
    # a repo whose config.json alone was cached (AutoConfig read it): its weights were "pickled ones that need torch"
    lay_out_cache(str(tmp_path / "cache"), "org/config-only", {"config.json": repos["org/tiny"]["config.json"]})
    (tmp_path / "runs" / "demo").mkdir(parents=True)  # beside it, `runs/dmeo` is a mistyped path
    result = run_script({"HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"},
                        loads=["org/tiny", "hf://org/tiny", "org/sharded-bf16", "org/binonly", "org/sharded-bin",
                               "org/untyped"],
                        fails=[("org/missing", None), ("org/llama", None), ("org/tiny", "v2"), ("runs/dmeo", None),
                               ("org/config-only", None)],
                        cli=["org/tiny", "org/missing"], cwd=tmp_path)
    assert max(result["diff"].values()) <= 1e-4, result["diff"]  # measured: 3.3e-6 to 3.8e-6
    errors = result["errors"]
    assert errors["org/missing"].startswith("FileNotFoundError: Hugging Face repo 'org/missing' is not in the "
                                            f"Hugging Face cache ({tmp_path / 'cache'}) and HF_HUB_OFFLINE is set")
    assert errors["org/llama"] == "ValueError: Hugging Face repo 'org/llama' holds a 'llama' model, not GPT-2"
    assert errors["org/tiny"].startswith("FileNotFoundError: Hugging Face repo 'org/tiny' at revision 'v2' is not in")
    assert errors["org/config-only"] == (
        "FileNotFoundError: Hugging Face repo 'org/config-only': no weights tf_gpt2 reads (model.safetensors, "
        "pytorch_model.bin or their shards) are in the Hugging Face cache ("
        f"{tmp_path / 'cache' / 'models--org--config-only' / 'snapshots' / COMMIT} holds config.json) and "
        "HF_HUB_OFFLINE is set: load it once online, or `hf download org/config-only`")
    assert errors["runs/dmeo"].startswith("FileNotFoundError: no such local path 'runs/dmeo' (runs/ exists), and "
                                          "Hugging Face repo 'runs/dmeo' is not in the Hugging Face cache")
    (code, err), (missing_code, missing_err) = result["cli"]["org/tiny"], result["cli"]["org/missing"]
    assert code == 0 and "Traceback" not in err
    assert missing_code == 2 and missing_err.strip().startswith("tf-gpt2 generate: error: Hugging Face repo "
                                                                "'org/missing' is not in the Hugging Face cache")
    assert len(missing_err.strip().splitlines()) == 1


def test_names_download_through_the_hub_endpoint_then_load_warm_offline(repos, tmp_path):
    """HF_ENDPOINT at a loopback server that answers as huggingface.co: a cold load downloads config.json, then
    the safetensors and tokenizer files only (pickled shards and their index where there are no safetensors); a
    Llama repo, and one whose config has no model_type and is not GPT-2's, are refused after their config, before
    any weights."""
    cache, local = str(tmp_path / "cache"), {}
    for name in ("org/tiny", "org/sharded-bf16", "org/renamed", "org/sharded-bin", "org/binplus"):
        local[name] = str(tmp_path / name)
        os.makedirs(local[name])
        for file, data in repos[name].items():
            with open(os.path.join(local[name], file), "wb") as f:
                f.write(data)
    # A training checkpoint kept beside the model in the repo is not the model: never fetched.
    # Nor is a variant of its weights (model.fp16.safetensors) or an adapter's weights without adapter_config.json.
    served = {**repos, "org/tiny": {**repos["org/tiny"], "checkpoint-500/model.safetensors": b"not these weights",
                                    "model.fp16.safetensors": b"other weights", "adapter_model.safetensors": b"no"}}
    with serve(served) as (endpoint, log):
        result = run_script({"HF_HUB_CACHE": cache, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"},
                            loads=["org/tiny", "org/sharded-bf16", "org/renamed", "org/sharded-bin", "org/binplus"],
                            local=local,
                            fails=[("org/none", None), ("org/tiny", "v9"), ("org/llama", None), ("org/timm", None),
                                   ("org/kerashub", None), ("org/peft", None), ("org/lost-shard", None)])
    assert max(result["diff"].values()) == 0, result["diff"]  # the same weights, downloaded
    errors = result["errors"]
    assert errors["org/none"] == (f"ValueError: no Hugging Face repo 'org/none' on {endpoint} (a private or gated repo "
                                  "needs a token: `hf auth login` or HF_TOKEN)")
    assert errors["org/tiny"] == ("ValueError: Hugging Face repo 'org/tiny' at revision 'v9': no such revision "
                                  "(a branch, tag or commit of the repo)")
    assert errors["org/llama"] == "ValueError: Hugging Face repo 'org/llama' holds a 'llama' model, not GPT-2"
    fetched = {line.split()[1].split("/", 5)[-1] for line in log if line.startswith("GET /org/tiny/resolve/")}
    assert fetched == {"config.json", "model.safetensors"}, fetched  # no pickled weights, no checkpoint, nothing else
    shards = {line.split()[1].split("/", 5)[-1] for line in log if line.startswith("GET /org/sharded-bin/resolve/")}
    assert shards == {"config.json", "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin",
                      "pytorch_model-00002-of-00002.bin"}, shards
    assert errors["org/lost-shard"] == ("FileNotFoundError: Hugging Face repo 'org/lost-shard': its "
                                        "model.safetensors.index.json names shards the repo does not hold: "
                                        "part[00002-of-00002.safetensors")
    renamed = {line.split()[1].split("/", 5)[-1] for line in log if line.startswith("GET /org/renamed/resolve/")}
    assert {"part[00001-of-00002.safetensors", "part[00002-of-00002.safetensors"} <= renamed, renamed
    beside = {line.split()[1].split("/", 5)[-1] for line in log if line.startswith("GET /org/binplus/resolve/")}
    assert "pytorch_model.bin" in beside, beside  # (was not fetched: "no model.safetensors or pytorch_model.bin")
    assert errors["org/timm"] == ("ValueError: Hugging Face repo 'org/timm''s config.json lacks vocab_size, n_embd, "
                                  "n_layer, n_head, n_positions: not a GPT-2 config")
    assert errors["org/kerashub"] == (  # (was: "lacks vocab_size, n_embd, n_layer, n_head: not a GPT-2 config")
        "ValueError: Hugging Face repo 'org/kerashub' is a keras-hub preset, not a transformers checkpoint: download "
        "it (`hf download org/kerashub --local-dir DIR`) and load DIR, or load keras-hub's name for it (gpt2_base_en, "
        "gpt2_medium_en, gpt2_large_en, gpt2_extra_large_en)")
    assert re.fullmatch(r"ValueError: Hugging Face repo 'org/peft' holds a PEFT adapter \(adapter_config.json\), "
                        r"which transformers with peft applies to the model and tf_gpt2 does not: .*",
                        errors["org/peft"]), errors["org/peft"]
    peft = {line.split()[1].split("/", 5)[-1] for line in log if line.startswith("GET /org/peft/resolve/")}
    assert peft == {"config.json", "adapter_config.json"}, peft  # refused before its weights downloaded
    assert not [line for line in log if line.startswith(("GET /org/llama/resolve/", "GET /org/timm/resolve/",
                                                         "GET /org/kerashub/resolve/")) and "config.json" not in line]
    warm = run_script({"HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"}, loads=["org/tiny"], local=local)  # no server
    assert warm["diff"]["org/tiny"] == 0
    # Online, a second load downloads nothing: it asks which commit the revision names (api.md, README).
    with serve(served) as (endpoint, log):
        online = run_script({"HF_HUB_CACHE": cache, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"},
                            loads=["org/tiny"], local=local)
    assert online["diff"]["org/tiny"] == 0
    assert sorted(log) == ["GET /api/models/org/tiny/revision/main", "HEAD /org/tiny/resolve/main/config.json"], log


def test_a_cache_filled_by_hf_download_with_the_weights_alone_loads_offline(repos, tmp_path):
    """Fetched ahead of time with `hf download REPO config.json model.safetensors`, a repo's tokenizer files are not
    in a cache whose listing names them: offline, huggingface_hub calls that snapshot incomplete, and the load failed
    as "not in the Hugging Face cache". It names the tokenizer files to fetch (read to check that the tokenizer is
    GPT-2's: loaded without them, another tokenizer would pass), then loads with them, as the README fetches; a repo
    listed with a PEFT adapter is refused as online."""
    from tf_gpt2.tokenizer import default_vocab_files

    vocabulary = dict(zip(("vocab.json", "merges.txt"), default_vocab_files()))  # GPT-2's, as the Hub's gpt2 has
    files = {**repos["org/tiny"], **{name: open(path, "rb").read() for name, path in vocabulary.items()}}
    cache = str(tmp_path / "cache")
    with serve({"org/tokenized": files, "org/peft": repos["org/peft"]}) as (endpoint, log):
        env = {**os.environ, "HF_HUB_CACHE": cache, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
               "HF_HUB_DISABLE_UPDATE_CHECK": "1"}  # (the command asks pypi.org for a newer huggingface_hub)
        hf = os.path.join(os.path.dirname(sys.executable), "hf")  # huggingface_hub's own command
        def download(repo, *names):
            run = subprocess.run([hf, "download", repo, *names], env=env, capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stderr[-2000:]

        for repo in ("org/tokenized", "org/peft"):
            download(repo, "config.json", "model.safetensors")
        offline = {"HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1"}
        assert not [line for line in log if "vocab.json" in line or "adapter_config" in line], log
        refused = run_script(offline, fails=[("org/tokenized", None)])["errors"]["org/tokenized"]
        assert refused == ("FileNotFoundError: Hugging Face repo 'org/tokenized': its tokenizer files merges.txt, "
                           "vocab.json are not in the Hugging Face cache and HF_HUB_OFFLINE is set: a load reads them "
                           "to check that the tokenizer is GPT-2's; fetch them too (`hf download org/tokenized "
                           "merges.txt vocab.json`), or load it once online"), refused
        download("org/tokenized", "vocab.json", "merges.txt")
    local = lay_out_cache(str(tmp_path / "local"), "org/tiny", repos["org/tiny"])  # the same weights, read as a folder
    result = run_script(offline, loads=["org/tokenized"], local={"org/tokenized": local}, cli=["org/tokenized"],
                        fails=[("org/peft", None)])
    assert result["diff"]["org/tokenized"] == 0 and result["cli"]["org/tokenized"][0] == 0, result
    # A repo the Hub lists with an adapter is refused though the adapter's config was not fetched (it loaded the
    # base weights alone, which transformers with peft would not).
    assert result["errors"]["org/peft"].startswith("ValueError: Hugging Face repo 'org/peft' holds a PEFT adapter "
                                                   "(adapter_config.json)"), result["errors"]


def test_pickled_weights_without_torch_are_refused_before_they_download(repos, tmp_path):
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        from tf_gpt2 import GPT2
        try:
            GPT2.from_pretrained("org/sharded-bin")
        except ImportError as e:
            print(e)
    """)
    with serve({"org/sharded-bin": repos["org/sharded-bin"]}) as (endpoint, log):
        env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.stdout.strip() == ("Hugging Face repo 'org/sharded-bin' has no model.safetensors (nor its shards): its "
                                  "pickled weights (pytorch_model.bin or its shards) need torch to be read (pip "
                                  "install 'tf_gpt2[torch]')"), run.stderr[-2000:]
    assert not [line for line in log if line.startswith("GET") and line.endswith(".bin")], log


def test_a_cached_index_may_point_into_blobs_but_not_elsewhere(repos, tmp_path):
    snapshot = lay_out_cache(str(tmp_path / "cache"), "org/sharded-bf16", repos["org/sharded-bf16"])
    assert os.path.islink(os.path.join(snapshot, "model.safetensors.index.json"))
    GPT2.from_pretrained(snapshot)  # shards are symlinks into ../../blobs: loads
    index = json.loads(repos["org/sharded-bf16"]["model.safetensors.index.json"])
    blob = os.readlink(os.path.join(snapshot, index["weight_map"]["transformer.wte.weight"]))
    index["weight_map"]["transformer.wte.weight"] = blob  # "../../blobs/<sha>": a path, not a file of the snapshot
    os.remove(os.path.join(snapshot, "model.safetensors.index.json"))
    with open(os.path.join(snapshot, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    with pytest.raises(ValueError, match="points at '../../blobs/.*not a file of .*refusing to read it"):
        GPT2.from_pretrained(snapshot)


def test_a_local_path_never_goes_to_the_hub(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nothing.keras, and it is not a Hugging Face"):
        GPT2.from_pretrained(str(tmp_path / "nothing.keras"))
    monkeypatch.chdir(tmp_path)
    for missing in ("model.safetensors", "pytorch_model.bin", "Model.SAFETENSORS", "gpt2.pth"):  # never repo names
        with pytest.raises(FileNotFoundError, match=f"no checkpoint at {re.escape(missing)}, and it is not a Hugging"):
            GPT2.from_pretrained(missing)
    assert hub_repo_id("hf://org/gpt2.bin") == "org/gpt2.bin"  # hf:// says it is a repo, whatever its name ends in
    with pytest.raises(ValueError, match="revision='main' is for a Hugging Face repo name, not the local path"):
        GPT2.from_pretrained(str(tmp_path), revision="main")


def test_a_keras_hub_preset_that_cannot_download_says_so_and_where_else_to_load_from(tmp_path, monkeypatch):
    """keras-hub presets come from Kaggle: here its endpoint is a closed loopback port (kagglesdk's TEST setting)."""
    pytest.importorskip("keras_hub")
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")  # http://localhost:7777
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    with pytest.raises(ConnectionError) as raised:
        GPT2.from_pretrained("gpt2_medium_en")
    message = str(raised.value)
    assert message.startswith("keras-hub preset 'gpt2_medium_en' could not be loaded: keras-hub downloads it from "
                              f"Kaggle on first use (cached in {tmp_path / 'kagglehub'}), and that failed (")
    assert "the Hugging Face name 'gpt2-medium' (the same weights)" in message and "\n" not in message
