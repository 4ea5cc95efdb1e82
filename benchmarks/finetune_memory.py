"""Peak memory and step time of one fine-tuning step (T=1024, batch 1 unless `--time`, `--batch` say otherwise):
tf_gpt2 on TensorFlow and on JAX, full and LoRA (rank 8), with and without recomputation (`remat`), next to
transformers' GPT2LMHeadModel with and without `gradient_checkpointing_enable()`. Each configuration runs in its
own process; memory is that process's peak RSS (CPU: weights, gradients, optimizer state and activations all live
there), with the framework's own share (its RSS after the imports) and, for the XLA paths, XLA's account of the
step's buffers (`xla_bytes`: what an accelerator would hold). Random weights of the preset's shape.

    python benchmarks/finetune_memory.py --presets gpt2 gpt2-medium --json memory.json
    python benchmarks/finetune_memory.py --presets gpt2-large --modes lora --remat on --base-dtype bfloat16 \
        --merge memory.json --json large.json                        # add rows; the rest computed from them
    python benchmarks/finetune_memory.py --smoke                      # tiny shapes: checks the harness

A step is `model.fit` on one [batch, T] batch with AdamW (torch: loss.backward + AdamW.step), bfloat16 mixed precision
where the path has it (`mixed_bfloat16`; torch: CPU autocast to bfloat16). Step time: the best of `--repeats` steps
after a first one (which compiles). transformers' LoRA rows use peft (`pip install peft`); a configuration that
fails (no peft, out of memory) is reported as such and the others go on. Presets in `--compute` are not run: their
peak is computed from the same configuration measured on two or more presets (`computed`) and marked so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time

from harness import (
    _hf_model,
    best_seconds,
    conditions,
    in_own_process,
    machine,
    peak_rss_bytes,
    refuse_earlier_results,
    tensorflow_free,
    write_results,
)

SYSTEMS = {"tf": "tf_gpt2, TensorFlow (XLA)", "jax": "tf_gpt2, JAX (XLA)", "hf": "HF transformers (torch)"}
GiB = 2**30


def parameters(preset: str) -> int:
    from tf_gpt2 import GPT2Config

    return GPT2Config.from_preset(preset).num_params()


def state_bytes_per_parameter(mode: str, base_dtype: str | None) -> int:
    """Bytes held per parameter for the whole run: float32 weights, gradients and AdamW's two moments (full), or
    the frozen base alone (LoRA: its adapters are a fraction of a percent)."""
    from tf_gpt2.train_config import BASE_DTYPES

    return 16 if mode == "full" else 2 if base_dtype in BASE_DTYPES else 4


def computed(rows: list[dict], presets: list[str]) -> list[dict]:
    """Peak memory of presets not measured, from the same configuration measured on two or more presets.

    peak = fixed + state_bytes_per_parameter · parameters + per_layer_width · n_layer · n_embd, with `fixed` (the
    runtime, the logits) and `per_layer_width` (activations: at a fixed T every GPT-2 has head_dim 64, so the
    attention scores also grow with n_layer · n_embd) fitted by least squares on the measured rows.
    """
    import numpy as np

    from tf_gpt2 import GPT2Config

    def width(preset):
        c = GPT2Config.from_preset(preset)
        return c.n_layer * c.n_embd

    out = []
    for key in sorted({(r["mode"], r["system"], r["remat"], r["base_dtype"]) for r in rows}, key=str):
        mode, system, remat, base = key
        measured = [r for r in rows if (r["mode"], r["system"], r["remat"], r["base_dtype"]) == key
                    and "peak_rss_bytes" in r and not r.get("computed")]
        if len({r["preset"] for r in measured}) < 2:
            continue
        state = state_bytes_per_parameter(mode, base)
        a = np.array([[1.0, width(r["preset"])] for r in measured])
        b = np.array([r["peak_rss_bytes"] - state * parameters(r["preset"]) for r in measured])
        (fixed, per_width), *_ = np.linalg.lstsq(a, b, rcond=None)
        for preset in presets:
            if preset not in {r["preset"] for r in measured}:
                peak = fixed + state * parameters(preset) + per_width * width(preset)
                out.append({"preset": preset, "mode": mode, "system": system, "remat": remat, "base_dtype": base,
                            "peak_rss_bytes": int(peak), "computed": True})
    return out


def step(system: str, preset: str, mode: str, remat: bool, time_steps: int, repeats: int, base_dtype: str | None,
         loss_chunk: int = 0, batch: int = 1) -> dict:
    """Run one configuration in this process; its peak RSS and best step time."""
    if system == "hf":
        return _torch_step(preset, mode, remat, time_steps, repeats, batch)
    os.environ["KERAS_BACKEND"] = "tensorflow" if system == "tf" else "jax"
    dump = tempfile.mkdtemp()
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump} --xla_dump_hlo_as_text"
    import keras
    import numpy as np

    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.training import enable_lora

    framework = _rss()
    config = GPT2Config.from_preset(preset, remat=remat, loss_chunk=loss_chunk)
    model = GPT2(config, dtype=base_dtype or "mixed_bfloat16")
    if mode == "lora":
        enable_lora(model, 8)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=True,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ids = np.random.RandomState(0).randint(0, config.vocab_size, (batch, time_steps + 1))
    x, y = ids[:, :-1], ids[:, 1:]
    seconds = best_seconds(lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0), repeats)
    return {"peak_rss_bytes": peak_rss_bytes(), "step_seconds": seconds, "framework_rss_bytes": framework,
            "xla_bytes": xla_bytes(dump)}


def xla_bytes(dump: str) -> int:
    """XLA's own account of the largest program it compiled (the training step): every buffer it holds, weights,
    optimizer state, gradients and activations, at its peak (`Total bytes used` of its memory-usage report). It is
    what the step needs on an accelerator, without the framework's runtime and the compiler's working memory."""
    totals = []
    for name in os.listdir(dump):
        if name.endswith("memory-usage-report.txt"):
            with open(os.path.join(dump, name)) as f:  # "Total bytes used: N (...)"; newer XLA: "Total bytes: N"
                totals.append(int(re.search(r"^Total bytes(?: used)?: (\d+)", f.read(), re.MULTILINE).group(1)))
    shutil.rmtree(dump, ignore_errors=True)
    return max(totals)


def _torch_step(preset: str, mode: str, remat: bool, time_steps: int, repeats: int, batch: int = 1) -> dict:
    import torch

    framework = _rss()
    ours = tensorflow_free("config").GPT2Config.from_preset(preset)  # TensorFlow's 0.7 GB would count here
    model = _hf_model(ours).train()
    if remat:
        model.gradient_checkpointing_enable()
    if mode == "lora":
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=["c_attn", "c_proj", "c_fc"],
                                                           fan_in_fan_out=True))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, ours.vocab_size, (batch, time_steps), generator=torch.Generator().manual_seed(0))

    def one_step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = best_seconds(one_step, repeats)
    return {"peak_rss_bytes": peak_rss_bytes(), "step_seconds": seconds, "framework_rss_bytes": framework}


def _rss() -> int:
    """This process's resident memory now: after the imports, the framework's own share of the peak."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


GPUS = {"T4 16 GB": 16, "L4 24 GB": 24, "A100 40 GB": 40, "A100 80 GB": 80}
HEADROOM = 1  # GB kept free on the GPU (its runtime's own buffers)
PRESETS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# The settings tried on each GPU, fastest first: the first whose peak fits is the table's answer.
CHOICES = (("full", False, "full"), ("full", True, "full `--remat`"), ("lora", False, "LoRA `--base-dtype bfloat16`"),
           ("lora", True, "LoRA `--base-dtype bfloat16 --remat`"))


def fits(rows: list[dict], system: str = "tf") -> str:
    """A Markdown table: for each GPU and preset, the fastest setting whose peak (measured or computed) leaves
    `HEADROOM` GB of the GPU's memory free, with that peak."""
    peaks = {(r["preset"], r["mode"], r["remat"]): r for r in rows if r["system"] == system and "peak_rss_bytes" in r
             and (r["mode"] == "full" or r["base_dtype"])}
    lines = ["| GPU | " + " | ".join(PRESETS) + " |", "|---|" + "---|" * len(PRESETS)]
    for gpu, gb in GPUS.items():
        cells = []
        for preset in PRESETS:
            known = [(label, peaks.get((preset, mode, remat))) for mode, remat, label in CHOICES]
            fitting = [(label, row) for label, row in known if row and row["peak_rss_bytes"] <= (gb - HEADROOM) * 1e9]
            if fitting:
                label, row = fitting[0]
                computed_mark = " (computed)" if row.get("computed") else ""
                cells.append(f"{label}: {row['peak_rss_bytes'] / 1e9:.1f} GB{computed_mark}")
            else:
                cells.append("does not fit" if all(row for _, row in known) else "not measured")
        lines.append(f"| {gpu} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    """A Markdown table of every configuration: peak memory and step time without / with recomputation."""
    def cell(row, key, unit, scale):
        if row is None or key not in row:
            return "-" if row is None or key == "step_seconds" else "failed"
        xla = f" (XLA {row['xla_bytes'] / 1e9:.1f})" if key == "peak_rss_bytes" and "xla_bytes" in row else ""
        return f"{row[key] / scale:.1f}{unit}{xla}" + (" (computed)" if row.get("computed") else "")

    lines = ["| model | mode | system | peak, remat off | peak, remat on | step, remat off | step, remat on |",
             "|---|---|---|---:|---:|---:|---:|"]
    order = {preset: i for i, preset in enumerate(PRESETS)}
    keys = dict.fromkeys(sorted(((r["preset"], r["mode"], r["system"], r["base_dtype"]) for r in rows),
                                key=lambda k: (order.get(k[0], -1), k[1] != "full", k[2] != "tf")))
    for preset, mode, system, base in keys:
        by_remat = {r["remat"]: r for r in rows if (r["preset"], r["mode"], r["system"], r["base_dtype"])
                    == (preset, mode, system, base)}
        off, on = by_remat.get(False), by_remat.get(True)
        base = base or ("float32" if mode == "lora" else None)  # (--base-dtype is tf_gpt2's alone)
        lines.append(f"| {preset} | {mode}{f' ({base} base)' if base else ''} | {SYSTEMS[system]} | "
                     f"{cell(off, 'peak_rss_bytes', ' GB', 1e9)} | {cell(on, 'peak_rss_bytes', ' GB', 1e9)} | "
                     f"{cell(off, 'step_seconds', ' s', 1)} | {cell(on, 'step_seconds', ' s', 1)} |")
    return "\n".join(lines)


def _label(row: dict) -> str:
    return f"{row['preset']:12s} {row['mode']:4s} {SYSTEMS[row['system']]:28s} remat {'on ' if row['remat'] else 'off'}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["gpt2", "gpt2-medium"])
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ", ".join(SYSTEMS))
    parser.add_argument("--modes", default="full,lora", help="full, lora or both (full,lora)")
    parser.add_argument("--time", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--base-dtype", help="tf_gpt2 LoRA: the frozen base in this dtype (bfloat16)")
    parser.add_argument("--smoke", action="store_true", help="gpt2-tiny, T=32, one repeat")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--compute", nargs="*", default=["gpt2-large", "gpt2-xl"],
                        help="presets whose peak is computed from the measured ones (not run)")
    parser.add_argument("--remat", default="off,on", help="off, on or both (off,on)")
    parser.add_argument("--batch", type=int, default=1, help="sequences per step")
    parser.add_argument("--loss-chunk", type=int, default=0, help="tf_gpt2: the LM head and loss over this many "
                        "positions at a time (GPT2Config.loss_chunk)")
    parser.add_argument("--merge", nargs="*", default=[], help="rows measured earlier (--json files) to add")
    args = parser.parse_args(argv)
    refuse_earlier_results(parser, args.json)
    for flag, given, known in (("--modes", args.modes, ("full", "lora")), ("--remat", args.remat, ("off", "on")),
                               ("--systems", args.systems, tuple(SYSTEMS))):
        unknown = [value for value in given.split(",") if value not in known]
        if unknown:  # ("--remat yes" ran without it, "--modes LoRA" a full fine-tune labelled LoRA)
            parser.error(f"{flag}: unknown {', '.join(map(repr, unknown))}; choose among {', '.join(known)}")
    if args.smoke:
        args.presets, args.time, args.repeats, args.compute = ["gpt2-tiny"], 32, 1, []
    start_load, started = conditions()
    print(f"{started}; T={args.time}, batch {args.batch}; peak RSS and best step time", flush=True)
    settings = {"time": args.time, "batch": args.batch, "loss_chunk": args.loss_chunk}  # each row's own
    merged = []  # read first: a file of other settings is refused before anything is measured
    for earlier in args.merge:
        try:
            with open(earlier) as f:
                record = json.load(f)
        except (OSError, ValueError) as e:
            parser.error(f"--merge {earlier}: {e}")
        if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
            parser.error(f"--merge {earlier} is no results file of this benchmark (it has no list of rows)")
        if any(not set(settings) <= set(row) for row in record["rows"] if not row.get("computed")):
            print(f"note: {earlier} is of an older harness whose rows say no batch or loss chunk: taken as batch 1 "
                  "and no loss chunk, its defaults", file=sys.stderr)
        for row in (r for r in record["rows"] if not r.get("computed")):
            measured = {"time": record.get("time"), "batch": 1, "loss_chunk": 0, **{k: row[k] for k in settings
                                                                                    if k in row}}
            if measured != settings:  # (a T=4096 row was tabled, and extrapolated from, as T=1024's)
                parser.error(f"{earlier} holds rows measured with {measured}, and this run's are {settings}: "
                             "merge rows of one setting")
            merged.append({**row, **measured})
    rows = []
    for preset in args.presets:
        for mode in args.modes.split(","):
            for system in args.systems.split(","):
                for remat in [setting == "on" for setting in args.remat.split(",")]:
                    base = args.base_dtype if mode == "lora" and system != "hf" else None
                    result = in_own_process(
                        f"print(json.dumps(m.step({system!r}, {preset!r}, {mode!r}, {remat}, {args.time}, "
                        f"{args.repeats}, {base!r}, {args.loss_chunk}, {args.batch})))", "finetune_memory",
                        keep_going=True)
                    rows.append({"preset": preset, "mode": mode, "system": system, "remat": remat,
                                 "base_dtype": base, **settings, **result})
                    shown = (f"{result['peak_rss_bytes'] / GiB:.2f} GiB, {result['step_seconds']:.2f} s/step, "
                             f"of which the framework's own {result['framework_rss_bytes'] / GiB:.2f} GiB"
                             + (f", XLA's account {result['xla_bytes'] / GiB:.2f} GiB" if "xla_bytes" in result
                                else "") if "error" not in result else f"failed: {result['error']}")
                    print(f"{_label(rows[-1])}: {shown}", flush=True)
    rows += merged
    rows += computed(rows, args.compute)
    for row in (r for r in rows if r.get("computed")):
        print(f"{_label(row)}: {row['peak_rss_bytes'] / GiB:.2f} GiB (computed from the measured presets)")
    print("\n" + table(rows))
    print(f"\nWhat fits where (tf_gpt2 on TensorFlow, T={args.time}, batch {args.batch}, peak memory as measured "
          "here):\n")
    print(fits(rows))
    if args.json:
        write_results(args.json, {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "time": args.time,
                                  "threads": os.cpu_count(), "load_average_at_start": start_load, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
