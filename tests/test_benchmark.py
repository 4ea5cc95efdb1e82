"""benchmarks/ runs the real systems side by side (tiny shapes here; speed itself is never asserted)."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import hf_logits, make_hf_model

from tf_gpt2 import GPT2Config

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)  # its scripts import each other flat, as `python benchmarks/bench.py` does

from bench import main as bench_main  # noqa: E402
from harness import MATRIX_FEATURES, TrainSetup, table  # noqa: E402


def test_nanogpt_peer_is_the_same_gpt2_as_hf():
    """The nanoGPT-style peer computes GPT-2: with HF's weights it gives HF's logits."""
    torch = pytest.importorskip("torch")
    from torch_nanogpt import NanoGPT

    cfg = dict(vocab_size=97, n_positions=24, n_embd=36, n_layer=2, n_head=3)
    hf = make_hf_model(**cfg)
    ours = NanoGPT(GPT2Config(**cfg)).eval()
    hf_weights = hf.state_dict()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            source = "transformer." + name.replace("blocks.", "h.").replace("attn_proj", "attn.c_proj") \
                .replace("c_attn", "attn.c_attn").replace("c_fc", "mlp.c_fc").replace("mlp_proj", "mlp.c_proj")
            value = hf_weights[source]
            p.copy_(value.T if value.dim() == 2 and "wte" not in name and "wpe" not in name else value)
    ids = np.random.RandomState(0).randint(0, 97, (2, 24))
    with torch.no_grad():
        logits = ours(torch.tensor(ids)).numpy()
    assert np.abs(logits - hf_logits(hf, ids)).max() <= 1e-4
    generated = ours.generate(torch.tensor(ids[:1, :4]), 5)[0].tolist()
    assert generated[:4] == ids[0, :4].tolist() and len(generated) == 9


def test_the_convergence_peer_follows_tf_gpt2s_schedule():
    """The torch reference of benchmarks/convergence.py sets each update's rate as `learning_rate_schedule` does."""
    import convergence

    from tf_gpt2.train_config import TrainConfig
    from tf_gpt2.training import learning_rate_schedule

    for steps in (500, 30):  # (30: a run shorter than the warmup)
        ours = learning_rate_schedule(TrainConfig(steps=steps, learning_rate=convergence.LR, warmup_steps=convergence.
                                                  WARMUP, min_learning_rate=convergence.MIN_LR))
        assert [convergence.lr_at(i, steps) for i in range(steps)] == pytest.approx(
            [float(ours(i)) for i in range(steps)], rel=1e-5)


def test_bench_smoke_runs_the_peers_and_writes_figures(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    # The nanoGPT-style peer is checked on its own above (each system here is a process of its own: a few seconds)
    assert bench_main(["--smoke", "--systems", "tf_gpt2,hf,litert", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert set(results["train"]) == {"tf_gpt2", "hf"}
    assert set(results["decode"]) == {"tf_gpt2", "hf", "litert"}
    assert all(v > 0 for part in ("train", "decode") for v in results[part].values())
    assert results["matmul_roof_flops"] > 1e8
    import keras  # each figure names what it was measured with: the packages' versions, the CPU's matrix instructions
    assert results["versions"]["keras"] == keras.version() and results["versions"]["torch"] == torch.__version__
    with open("/proc/cpuinfo", encoding="utf-8") as f:  # this host's flags, as the kernel lists them
        flags = set(next((line.split(":", 1)[1] for line in f if line.startswith("flags")), "").split())
    said = results["machine"].split("; ", 1)[1].split(")")[0].split(", ")
    assert said == ([label if flag in flags else f"no {label}" for flag, label in MATRIX_FEATURES] if flags
                    else ["instructions not read"]), results["machine"]
    assert "| tf_gpt2 (TF, XLA) |" in printed and "vs HF transformers GPT-2 (torch eager)" in printed
    assert "of greedy tokens equal the Keras model's" in printed
    assert results["threads"] == os.cpu_count()  # and the load at the start and at the end of the run
    assert all(isinstance(results[k], float) for k in ("load_average_at_start", "load_average_at_end"))


def test_a_measuring_process_reports_its_own_peak_memory_not_its_parents():
    """exec keeps the peak of the memory it replaces in getrusage's ru_maxrss: a peer's process started from a
    parent that once held 400 MB reported 400 MB, whatever the peer held."""
    import numpy as np

    ballast = np.ones(400 * 2**20 // 8)  # this process's peak is now at least 400 MB
    run = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {BENCHMARKS!r}); import harness; "
                          "print(harness.peak_rss_bytes())"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert ballast.sum() > 0 and 10 * 2**20 < int(run.stdout) < 200 * 2**20, run.stdout  # numpy's process: ~30 MB


def test_table_ratios_and_flops():
    text = table("t", {"hf": 100.0, "tf_gpt2": 250.0}, {"hf": "HF", "tf_gpt2": "ours"}, flops_per_token=10**9,
                 roof=1e12)
    assert "| ours | 250.0 | 2.50x | 250 | 25% |" in text and "| HF | 100.0 | 1.00x | 100 | 10% |" in text


def test_flops_per_token_follows_nanogpt():
    s = TrainSetup(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
    assert s.flops_per_token == 6 * (s.config.num_params() - 1024 * 768) + 12 * 12 * 768 * 1024
    assert abs(s.flops_per_token / 1e9 - 0.85) < 0.05  # nanoGPT: ~0.85 GFLOP per token for GPT-2 124M at T=1024


def test_bench_bad_system_is_named(capsys):
    assert bench_main(["--smoke", "--systems", "tf_gpt2,pytorch-lightning"]) == 2
    assert "pytorch-lightning" in capsys.readouterr().err


def test_a_benchmarks_figures_never_replace_an_earlier_runs_file(tmp_path, capsys):
    """--json into a file already there (benchmarks/results/ keeps those the docs cite) is refused before anything
    is measured, in each script that writes one; 0 steps or tokens are refused, not run as the default."""
    import convergence
    import finetune_memory
    import on_device
    import serving_throughput

    earlier = tmp_path / "earlier.json"
    earlier.write_text('{"kept": true}')
    for main in (bench_main, finetune_memory.main, on_device.main, serving_throughput.main):
        with pytest.raises(SystemExit) as status:
            main(["--smoke", "--json", str(earlier)])
        assert status.value.code == 2 and "holds an earlier run's results" in capsys.readouterr().err
    with pytest.raises(SystemExit), pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["convergence.py", "--json", str(earlier)])
        convergence.main()
    assert earlier.read_text() == '{"kept": true}'
    for path, said in ((tmp_path, "is a folder: name the file"), (tmp_path / "no" / "x.json", "is not there")):
        with pytest.raises(SystemExit):
            bench_main(["--smoke", "--json", str(path)])
        assert said in capsys.readouterr().err
    for flag in ("--steps", "--new-tokens"):
        with pytest.raises(SystemExit):
            bench_main(["--smoke", flag, "0"])
        assert f"{flag} must be a positive integer, got 0" in capsys.readouterr().err
    other = tmp_path / "t4096.json"  # rows of another sequence length: they were tabled as this run's
    other.write_text(json.dumps({"time": 4096, "rows": [{"preset": "gpt2", "mode": "full", "system": "tf"}]}))
    for argv, said in ((["--merge", str(other)], "t4096.json holds rows measured with {'time': 4096"),
                       (["--remat", "yes"], "--remat: unknown 'yes'; choose among off, on"),
                       (["--modes", "LoRA"], "--modes: unknown 'LoRA'")):
        with pytest.raises(SystemExit):
            finetune_memory.main(["--smoke", *argv])
        assert said in capsys.readouterr().err


def test_on_device_benchmark_smoke_runs_each_system_in_its_own_process(tmp_path):
    """benchmarks/on_device.py end to end on gpt2-tiny: export, CTranslate2 conversion, one worker process each."""
    pytest.importorskip("ctranslate2")
    pytest.importorskip("litert_lm")
    script = os.path.join(BENCHMARKS, "on_device.py")
    out = tmp_path / "on_device.json"
    run = subprocess.run([sys.executable, script, "--smoke", "--work", str(tmp_path / "work"), "--quantize", "int8",
                          "--systems", "litert-lm", "ct2", "--repeats", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["system"] for r in rows] == ["LiteRT-LM int8", "CTranslate2 int8"]
    assert all(r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["peak_mb"] > 0 for r in rows)
    assert "| LiteRT-LM int8 | 64 |" in run.stdout


def test_finetune_memory_computes_a_preset_from_the_measured_ones():
    """The computed peak of an unmeasured preset follows the fitted line of the measured ones (fixed + state ·
    parameters + per-width · n_layer · n_embd) and is marked as computed."""
    from finetune_memory import computed, parameters

    def peak(preset, layers_width):
        return 10**9 + 16 * parameters(preset) + 3000 * layers_width

    rows = [{"preset": p, "mode": "full", "system": "tf", "remat": True, "base_dtype": None,
             "peak_rss_bytes": peak(p, w)} for p, w in (("gpt2", 12 * 768), ("gpt2-medium", 24 * 1024))]
    (xl,) = computed(rows, ["gpt2-xl"])
    assert xl["computed"] and xl["preset"] == "gpt2-xl"
    assert xl["peak_rss_bytes"] == pytest.approx(peak("gpt2-xl", 48 * 1600), rel=1e-6)
    assert parameters("gpt2") == 124_439_808 and parameters("gpt2-xl") == 1_557_611_200  # transformers' counts
    assert computed(rows[:1], ["gpt2-xl"]) == []  # one preset fixes no line


def test_finetune_memory_smoke_measures_each_configuration_in_its_own_process(tmp_path):
    out = tmp_path / "memory.json"
    run = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "finetune_memory.py"), "--smoke", "--systems", "tf",
                          "--modes", "lora", "--remat", "on", "--base-dtype", "bfloat16", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["preset"], r["base_dtype"], r["remat"]) for r in rows] == [("gpt2-tiny", "bfloat16", True)]
    assert rows[0]["peak_rss_bytes"] > 2**27 and rows[0]["step_seconds"] > 0
    assert "| gpt2-tiny | lora (bfloat16 base) | tf_gpt2, TensorFlow (XLA) | - |" in run.stdout


def test_finetune_memory_says_what_fits_where():
    """Each GPU gets the fastest setting whose peak leaves a GB free: full, then with --remat, then LoRA."""
    from finetune_memory import fits

    def row(mode, remat, gb, **extra):
        return {"preset": "gpt2-large", "system": "tf", "mode": mode, "remat": remat, "peak_rss_bytes": gb * 1e9,
                "base_dtype": "bfloat16" if mode == "lora" else None, **extra}

    table = fits([row("full", False, 30), row("full", True, 20), row("lora", False, 14, computed=True),
                  row("lora", True, 6), {**row("full", False, 1), "system": "hf"}])
    lines = {line.split(" | ")[0][2:]: line.split(" | ")[3] for line in table.splitlines()[2:]}  # gpt2-large column
    assert lines == {"T4 16 GB": "LoRA `--base-dtype bfloat16`: 14.0 GB (computed)",
                     "L4 24 GB": "full `--remat`: 20.0 GB",
                     "A100 40 GB": "full: 30.0 GB", "A100 80 GB": "full: 30.0 GB"}
    assert "not measured" in table.splitlines()[2]  # gpt2: no row


def test_the_peers_processes_hold_no_tensorflow():
    """A torch or CTranslate2 peer's process imports the benchmark modules and reads tf_gpt2's shapes without
    loading TensorFlow (its 0.7 GB would count in the peer's peak memory); a later `import tf_gpt2` still loads in
    full. Run in a fresh process, as the benchmarks run their peers."""
    code = (f"import sys; sys.path.insert(0, {BENCHMARKS!r})\n"
            "import bench, finetune_memory, harness, on_device, serving_throughput, torch_nanogpt\n"
            "shapes = [harness.DecodeSetup().config.n_embd, harness.TrainSetup().config.n_layer,\n"
            "          len(harness.DecodeSetup().prompt), len(on_device.QUANTIZATIONS)]\n"
            "torch_nanogpt.NanoGPT(harness.SMOKE_TRAIN.config)\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules, shapes)\n"
            "from tf_gpt2 import GPT2\n"
            "print(type(harness._ours(harness.SMOKE_TRAIN.config)) is GPT2, 'tensorflow' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[:2] == ["False False [768, 6, 32, 3]", "True True"]


def test_gpu_benchmark_smoke_runs_every_path_each_in_its_own_process(tmp_path):
    """`benchmarks/gpu.py --smoke`: one job of each kind and system (parity, training, device-peak memory with peft,
    decode with transformers' static cache) runs on a CPU in its own process, the memory and parity processes beside
    the speed runs' compiles, and the tables and chart are written. TensorFlow is hidden, as on a GPU machine that
    has JAX and torch only: no job may import it."""
    hidden = tmp_path / "hidden" / "tensorflow"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ModuleNotFoundError("no TensorFlow here", name="tensorflow")\n')
    paths = [str(hidden.parent), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    out = tmp_path / "out"
    command = [sys.executable, os.path.join(BENCHMARKS, "gpu.py"), "--smoke", "--profile", "--out", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    import gpu

    results = json.loads((out / "results.json").read_text())
    assert sorted(job["name"] for job in results["jobs"]) == sorted(gpu.SMOKE_JOBS)
    failed = {job["name"]: job["result"] for job in results["jobs"] if "error" in job["result"]}
    assert not failed
    parity = next(job["result"] for job in results["jobs"] if job["kind"] == "parity")
    assert parity["max_abs_logit_diff"] < 1e-4 and parity["greedy_tokens_equal"] == 32
    assert all(value > 0 for job in results["jobs"] if job["kind"] in ("train", "decode")
               for key, value in job["result"].items() if key not in ("kernels", "device"))
    profiled = [job["result"]["kernels"] for job in results["jobs"] if "kernels" in job["result"]]
    assert len(profiled) == 2 and all(k["ms_per_step"] > 0 and k["top"] for k in profiled)  # tf_gpt2's training
    for kernels in profiled:  # the kernels' time by layer, from XLA's optimized program: each block's MLP's, both ways
        assert kernels["by_scope"]["h_*/mlp forward"] > 0 and kernels["by_scope"]["h_*/mlp backward"] > 0
        assert "adam_w" in kernels["by_scope"]
    for job in results["jobs"]:  # each process's seconds: a speed run's to compiled and warmed up, and to its end
        assert 0 < job["seconds"].get("ready", 0.1) < job["seconds"]["end"]
        assert 0 <= job["seconds"].get("stopped", 0) < job["seconds"]["end"]  # a pool job's, while one was timed
        assert ("ready" in job["seconds"]) == (job["kind"] in gpu.TIMED)
    assert (out / "ratios.png").stat().st_size > 0
    assert "| tf_gpt2 | bfloat16 |" in (out / "results.md").read_text()
    kept = (out / "results.json").read_bytes()
    again = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert again.returncode == 2 and "results.json holds an earlier run's results: give another --out" in again.stderr
    assert (out / "results.json").read_bytes() == kept


def test_the_lever_that_makes_q_k_v_apart_computes_the_same_attention():
    """gpu.py's "q, k, v apart" lever (three matmuls instead of slices of one) changes the program, not the math."""
    import gpu

    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.layers import CausalSelfAttention

    model = GPT2(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4, initializer_range=0.3))
    ids = np.random.default_rng(0).integers(0, 64, (2, 16))
    for block in model.h:  # biases too: a third taken from the wrong place must show
        block.attn.c_attn.bias.assign(np.random.default_rng(1).normal(0, 0.3, 96).astype("float32"))
    expected, fused = np.asarray(model(ids)), CausalSelfAttention._heads
    try:
        CausalSelfAttention._heads = gpu._heads_apart
        apart = np.asarray(model(ids))
    finally:
        CausalSelfAttention._heads = fused
    assert np.abs(apart - expected).max() <= 1e-5 and np.abs(expected).max() > 1  # float32


def test_the_lever_that_keeps_bfloat16_logits_gives_the_same_loss_and_gradients():
    """gpu.py's "bfloat16 logits" lever: the loss reads the head's bfloat16 output where the model hands it float32.
    The cast is exact and the gradient is rounded to bfloat16 on either way, so the same values, to the bit."""
    import gpu
    import keras
    import tensorflow as tf

    from tf_gpt2 import GPT2

    model = GPT2(GPT2Config(vocab_size=60, vocab_multiple=16, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                            initializer_range=0.3), dtype="mixed_bfloat16")  # 4 padding rows: cut off on both ways
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids = np.random.default_rng(0).integers(0, 60, (4, 17))

    def loss_and_gradient():
        with tf.GradientTape() as tape:
            logits = model.call(ids[:, :-1])  # (the compiled train step's path: the head in bfloat16)
            loss = model.compute_loss(y=ids[:, 1:], y_pred=logits)
        return logits.dtype, float(loss), tape.gradient(loss, model.wte.embeddings).numpy()

    head = GPT2._lm_head
    expected = loss_and_gradient()
    try:
        GPT2._lm_head = gpu._lm_head_in_compute_dtype
        lever = loss_and_gradient()
    finally:
        GPT2._lm_head = head
    assert (expected[0], lever[0]) == ("float32", "bfloat16")
    assert lever[1] == expected[1] and np.array_equal(lever[2], expected[2])


def test_the_gpu_fit_table_says_not_measured_where_a_row_is_missing_and_parts_are_checked(tmp_path, capsys):
    """"does not fit" only where every setting was measured too large or ran out of memory: a row that failed for
    another reason, was cut by --budget or is absent is "not measured", also where a slower setting fits (the
    cell names the fastest setting that fits, which it cannot know; a misspelt --parts wrote "does not fit" for
    every preset on every GPU, having run nothing), and --parts names only what gpu.py runs."""
    import gpu

    def memory(preset, mode, remat, **result):
        return {"kind": "memory", "system": "tf_gpt2", "preset": preset, "mode": mode, "remat": remat,
                "result": result}

    oom = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate"
    jobs = [memory("gpt2", "full", False, peak_bytes=2.5e9),
            *(memory("gpt2-medium", mode, remat, error=oom) for mode, remat in (("full", False), ("full", True),
                                                                                ("lora", True))),
            memory("gpt2-large", "full", False, error="not run: past the --budget of 480 s"),
            memory("gpt2-large", "full", True, peak_bytes=11e9),  # fits, but full in the first place was not run
            memory("gpt2-xl", "full", False, peak_bytes=90e9), memory("gpt2-xl", "full", True, peak_bytes=85e9),
            memory("gpt2-xl", "lora", True, error="ImportError: peft")]
    rows = gpu.fit_table({"jobs": jobs}).splitlines()[2:]
    assert rows[0] == "| T4 16 GB | full (2.5 GB) | does not fit | not measured | not measured |"
    assert rows[-1] == "| H100 / A100 80 GB | full (2.5 GB) | does not fit | not measured | not measured |"
    assert gpu.memory_cell({"jobs": jobs}, "tf_gpt2", "gpt2-medium", "full", False) == "out of memory"
    assert gpu.memory_cell({"jobs": jobs}, "tf_gpt2", "gpt2-large", "full", False) == "not run"
    assert gpu.memory_cell({"jobs": jobs}, "tf_gpt2", "gpt2-xl", "lora", True) == "failed"
    for argv, said in ((["--parts", "trian,decod"], "--parts: unknown 'trian', 'decod'; choose among train, decode"),
                       (["--parts", "parity", "--only", "nothing-is-named-so"], "no job is in --parts parity")):
        with pytest.raises(SystemExit) as status:
            gpu.main(["--smoke", "--out", str(tmp_path / "out"), *argv])
        assert status.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    peaks = {name: gpu.peak_flops(name) for name in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H100 80GB HBM3",
                                                     "NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA L40S", "NVIDIA L4")}
    assert peaks == {"NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12, "NVIDIA H100 80GB HBM3": 989e12,
                     "NVIDIA H200": 989e12, "NVIDIA H200 NVL": 835e12, "NVIDIA L40S": None, "NVIDIA L4": 121e12}


def test_a_gpu_job_process_ends_with_gpu_py_even_while_stopped():
    """gpu.py stops its memory processes (SIGSTOP) while a speed run is timed: killed then, it must not leave them
    stopped for ever, holding their GPU memory."""
    job = ("import os, sys, time; sys.path.insert(0, {here!r}); import gpu; gpu.die_with_parent(os.getppid()); "
           "print('alive', flush=True); time.sleep(300)").format(here=BENCHMARKS)
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, signal, time\n"
         f"child = subprocess.Popen([sys.executable, '-c', {job!r}], stdout=subprocess.PIPE, text=True)\n"
         "assert child.stdout.readline() == 'alive\\n'\n"
         "child.send_signal(signal.SIGSTOP)\n"
         "print(child.pid, flush=True)\n"
         "time.sleep(300)\n"], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert _wait_for_state(child, ("T",)) == "T"  # stopped
    finally:
        parent.kill()  # SIGKILL: no handler of gpu.py's own could send SIGCONT
        parent.wait()
    assert _wait_for_state(child, ("gone", "Z")) in ("gone", "Z")  # ended (a zombie until init reaps it)


def _wait_for_state(pid: int, states: tuple[str, ...], seconds: float = 30) -> str:
    deadline = time.time() + seconds
    while _state(pid) not in states and time.time() < deadline:
        time.sleep(0.05)
    return _state(pid)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_the_gpu_tables_in_the_docs_are_the_ones_the_gpu_run_wrote():
    """README's "what fits where" and docs/training.md's device-peak table are what `benchmarks/gpu.py` builds from
    the JSON of the H200 run, and every tf_gpt2 cell fits its GPU with the CUDA context's 1 GB."""
    import gpu

    root = os.path.join(BENCHMARKS, "..")
    with open(os.path.join(BENCHMARKS, "results", "gpu-h200-2026-12-04.json")) as f:
        results = json.load(f)
    with open(os.path.join(root, "README.md")) as f:
        assert gpu.fit_table(results) in f.read()
    with open(os.path.join(root, "docs", "training.md")) as f:
        assert gpu.memory_table(results) in f.read()
    assert "full (13.1 GB)" in gpu.fit_table(results).splitlines()[2]  # gpt2-large in full on a T4: 13.1 + 1 <= 16


def test_every_mutant_still_names_one_line_of_its_file_and_existing_tests():
    """`benchmarks/mutants.py` applies each mutant to one line; a line the code no longer has would stop that mutant
    from running at all (two had, unnoticed), so each is checked here without running it."""
    from mutants import MUTANTS, ROOT

    for name, path, line, mutation, tests in MUTANTS:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            assert f.read().count(line) == 1, f"mutant {name!r}: its line is not once in {path}"
        assert mutation != line and all(os.path.isfile(os.path.join(ROOT, test)) for test in tests), name


def test_a_mutant_is_killed_only_by_a_failing_test_in_a_whole_copy(tmp_path):
    """The copy holds what the tests read (docs too: without them a serving test failed unmutated, and its three
    mutants counted as killed); a pytest that ends otherwise than with a failed test (here: no tests) is no kill."""
    from mutants import copy_tree, run_mutant

    copy_tree(str(tmp_path))
    assert (tmp_path / "docs" / "serving.md").is_file() and (tmp_path / "tests" / "conftest.py").is_file()
    with pytest.raises(RuntimeError, match=r"pytest ended with status [2-5], which says nothing of the mutant"):
        run_mutant("a no-op", "tf_gpt2/layers.py", "import keras", "import keras  # ", ["tests/no_such_test.py"],
                   sys.executable)


def test_the_per_device_memory_in_the_docs_is_what_the_shardings_give():
    """docs/distribution.md's table (and the README's 2.2 GiB) are what `memory_per_device.py` computes from the
    shardings JAX gives GPT-2 XL's weights and AdamW moments on 8 devices, for both meshes the table names."""
    import re
    root = os.path.join(BENCHMARKS, "..")
    with open(os.path.join(root, "docs", "distribution.md")) as f:
        page = f.read()
    with open(os.path.join(root, "README.md")) as f:
        readme = f.read()
    for batch_axis in ("1", "2"):  # mesh 1x8 and 2x4
        out = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "memory_per_device.py"), "--batch-axis",
                              batch_axis], capture_output=True, text=True, check=True,
                             env={**os.environ, "KERAS_BACKEND": "jax"}).stdout
        sizes = dict(re.findall(r"(replicated|model parallel)\s+([\d.]+) GiB per device", out))
        replicated, split = (f"{float(sizes[k]):.1f}" for k in ("replicated", "model parallel"))
        assert f"| replicated (`--strategy mirrored`, `DataParallel`) | {replicated} GiB |" in page, out
        assert f"| `ModelParallel`, mesh 1x8 (or 2x4: `--batch-axis 2`) | {split} GiB |" in page, out
        assert f"AdamW state: {split} GiB per device on 8" in readme, out


def test_the_benchmarks_measure_the_package_of_their_own_checkout(tmp_path, monkeypatch):
    """Run from another worktree, or with another tf_gpt2 on the path, a benchmark and its processes measure the
    tf_gpt2 beside them (two worktrees of an A/B measured the one installed, twice)."""
    from harness import ROOT, in_own_process

    (tmp_path / "other" / "tf_gpt2").mkdir(parents=True)
    (tmp_path / "other" / "tf_gpt2" / "__init__.py").write_text("raise ImportError('another tf_gpt2')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "other"))
    monkeypatch.chdir(tmp_path)  # (`python -c` puts the folder it runs in first: not the checkout here)
    found = "import importlib.util; print(json.dumps(os.path.realpath(importlib.util.find_spec('tf_gpt2').origin)))"
    ours = os.path.join(os.path.realpath(ROOT), "tf_gpt2", "__init__.py")
    assert in_own_process(f"import os; {found}") == ours
    script = f"import json, os, sys; sys.path.insert(0, {BENCHMARKS!r}); import harness; {found}"  # as bench.py
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == ours, run.stdout


def test_gpu_waves_run_the_rows_the_docs_quote_before_the_levers():
    """A run cut short by its --budget loses the levers' rows, not the table's: every wave of the issue's rows (and
    decode) comes before the first wave with a lever."""
    import gpu

    timed = [job for job in gpu.jobs(smoke=False) if job["kind"] in gpu.TIMED]
    groups = gpu.waves(timed, limit=4, budget=69 * gpu.GB)  # an H100's share
    has_lever = [any(job["lever"] for job in group if job["kind"] == "train") for group in groups]
    assert sorted(has_lever) == has_lever and True in has_lever and False in has_lever
    assert sum(map(len, groups)) == len(timed)
    assert all(sum(map(gpu.estimated_bytes, group)) <= 69 * gpu.GB or len(group) == 1 for group in groups)


def test_a_gpu_job_out_of_memory_is_seen_wherever_its_message_says_so(tmp_path):
    """torch's out-of-memory message is one line of 600 characters whose end names no memory: the job is still
    taken as out of memory (and run again alone), not as failed."""
    import tempfile
    import threading

    import gpu

    said = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 6.00 GiB. " + "x" * 600
    child = gpu.Child.__new__(gpu.Child)
    child.job, child.errors, child.lines, child.seconds, child.started = {}, tempfile.TemporaryFile("w+"), [], {}, 0
    child.reader = threading.Thread(target=lambda: None)
    child.process = subprocess.Popen([sys.executable, "-c", f"import sys; sys.stderr.write({said!r}); sys.exit(1)"],
                                     stdout=subprocess.PIPE, stderr=child.errors, text=True)
    child.finish()
    error = child.job["result"]["error"]
    assert gpu.OUT_OF_MEMORY.search(error) and error.endswith("x" * 100) and len(error) < 320


def test_gpu_py_leaves_nothing_running_past_its_budget_and_writes_its_tables_when_ended(tmp_path, monkeypatch):
    """Past --budget the memory and parity processes still running are ended and their rows say "not run"; a
    SIGTERM (what `timeout` sends) writes results.md and the chart from the rows so far before gpu.py exits."""
    import signal

    import gpu

    started = []

    class Sleeper(gpu.Child):  # a job that would outlast any budget
        def __init__(self, job, smoke, timed=False):
            super().__init__(job, smoke, timed)
            self.process.kill()
            self.process.wait()
            self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors,
                                            text=True)
            started.append(self.process)

    monkeypatch.setattr(gpu, "Child", Sleeper)
    reported, began = [], time.time()

    def late(jobs, ahead=0.0):
        if time.time() - began < 2:
            return False
        for job in jobs:
            job["result"] = {"error": "not run: past the --budget of 2 s"}
        return True

    pool = gpu.Pool([{"name": "memory", "smoke": True, "kind": "memory"}], True, reported.append, 0.0, late)
    pool.drain()
    assert time.time() - began < 30 and [job["result"]["error"] for job in reported] == [
        "not run: past the --budget of 2 s"]
    assert started and all(process.poll() is not None for process in started)

    class Compiling(Sleeper):  # a speed run that would compile past any budget (never says READY)
        def __init__(self, job, smoke, timed=False):
            super().__init__(job, smoke)
            if timed:
                self.reader.start()  # (reading the sleeper's output)

    monkeypatch.setattr(gpu, "Child", Compiling)
    reported, began = [], time.time()  # a wave started in time is ended at the budget, not run on past it
    gpu.run_timed([{"name": "train", "smoke": True, "kind": "train"}], True, reported.append,
                  gpu.Pool([], True, reported.append, 0.0), late)
    assert time.time() - began < 30 and [job["result"]["error"] for job in reported] == [
        "not run: past the --budget of 2 s"]
    assert all(process.poll() is not None for process in started)

    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, os.path.join(BENCHMARKS, "gpu.py"), "--smoke", "--only", "parity",
                            "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "a --budget of 480 s" in run.stdout.readline()
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 128 + signal.SIGTERM, run.stderr.read()[-2000:]
    assert "not run" in (out / "results.md").read_text() and (out / "ratios.png").stat().st_size > 0
