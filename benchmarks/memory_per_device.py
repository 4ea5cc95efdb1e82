"""Bytes of weights + AdamW state per device for a GPT-2 preset under `keras.distribution`: every weight replicated
(DataParallel, or tf.distribute's mirrored strategies) against ModelParallel with `GPT2.get_layout_map`, from the
shardings JAX gives each array (abstract arrays: nothing of that size is allocated).

    python benchmarks/memory_per_device.py --preset gpt2-xl --devices 8      # mesh 1 x 8 (batch x model)
"""

from __future__ import annotations

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # this checkout's tf_gpt2, not another one installed in the environment
    sys.path.insert(1, ROOT)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2-xl")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--batch-axis", type=int, default=1, help="devices on the data axis of the mesh")
    args = parser.parse_args(argv)
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"  # before JAX loads
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import keras
    import numpy as np

    from tf_gpt2 import GPT2, GPT2Config
    from tf_gpt2.checkpoints import expected_shapes

    # The token embedding's rows are split over the model axis: a vocabulary padded to a multiple of 64 divides.
    cfg = GPT2Config.from_preset(args.preset, vocab_multiple=64)
    mesh = keras.distribution.DeviceMesh((args.batch_axis, args.devices // args.batch_axis), ("batch", "model"),
                                         keras.distribution.list_devices())
    layout = GPT2.get_layout_map(mesh)
    jax_mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(mesh.shape), mesh.axis_names)

    def keras_path(name: str) -> str:  # "h.0.attn.c_attn.weight" -> "gpt2/h_0/attn/c_attn/kernel"
        layer, kind = name.rsplit(".", 1)
        layer = re.sub(r"^h\.(\d+)\.", r"h_\1.", layer).replace(".", "/")
        if layer in ("wte", "wpe"):
            leaf = "embeddings"
        elif layer.split("/")[-1].startswith("ln_"):
            leaf = "gamma" if kind == "weight" else "beta"
        else:
            leaf = "kernel" if kind == "weight" else "bias"
        return f"gpt2/{layer}/{leaf}"

    tiny = GPT2Config(vocab_size=8, n_positions=4, n_embd=4, n_layer=2, n_head=1)  # the mapping, checked
    assert {keras_path(n) for n in expected_shapes(tiny)} == {v.path for v in GPT2(tiny).weights}
    total = {"replicated": 0, "model parallel": 0}
    for name, shape in expected_shapes(cfg).items():
        path = keras_path(name)
        shape = (cfg.padded_vocab_size, cfg.n_embd) if name == "wte.weight" else shape  # the variable: padded
        spec = layout[path]
        axes = spec.axes if spec is not None else (None,) * len(shape)
        sharding = jax.sharding.NamedSharding(jax_mesh, jax.sharding.PartitionSpec(*axes))
        array = jax.ShapeDtypeStruct(shape, np.float32, sharding=sharding)
        per_device = int(np.prod(array.sharding.shard_shape(shape))) * 4
        full = int(np.prod(shape)) * 4
        # weight + AdamW's two moments (they follow their variable's layout)
        total["replicated"] += 3 * full
        total["model parallel"] += 3 * per_device
    print(f"{args.preset} ({cfg.num_params() / 1e9:.2f}B parameters), float32 weights + AdamW moments, "
          f"mesh {mesh.shape} (batch x model):")
    for kind, size in total.items():
        print(f"  {kind:15s} {size / 2**30:6.2f} GiB per device")
    return 0


if __name__ == "__main__":
    sys.exit(main())
