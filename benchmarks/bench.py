"""Training and decode throughput of tf_gpt2 next to keras-hub, Hugging Face torch and a nanoGPT-style torch
model, in one run; the same as `tf-gpt2 bench` (see tf_gpt2/benchmark.py):

    python benchmarks/bench.py [--only train|decode] [--systems tf_gpt2,hf,...] [--steps 10] [--json out.json]
"""

import sys

from tf_gpt2.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
