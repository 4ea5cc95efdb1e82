from setuptools import find_packages, setup

setup(
    name="tf_gpt2",
    version="0.1.0",
    description="A real GPT-2 in Keras 3 custom layers: train with model.fit, serve with TF Serving, ship as LiteRT.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tf_gpt2", "tf_gpt2.*"]),
    py_modules=["tf_gpt2_launcher"],  # the console script: parses the command line before TensorFlow loads
    package_data={"tf_gpt2": ["corpora/*.gz", "vocab/*.gz", "vocab/LICENSE"]},
    install_requires=[
        "tensorflow>=2.21",
        "keras>=3.15",
        "keras-hub>=0.32",
        "tensorflow-text>=2.21",  # the SavedModel's in-graph tokenizer (tf_gpt2.graph_tokenizer): RE2 splits
        "tensorboard>=2.21",
        "numpy>=2.0",
        "ml-dtypes>=0.7",  # bfloat16 arrays in training checkpoints (np.savez keeps them as raw bytes)
        "tiktoken>=0.14",
        "safetensors>=0.8",
        "huggingface_hub>=2.4",  # GPT2.from_pretrained("gpt2"): the Hub's cache, offline mode, tokens
    ],
    extras_require={
        "torch": ["torch>=2.13", "transformers>=5.0"],
        # On-device: the LiteRT interpreter, LiteRT-LM (runtime, `litert-lm` CLI, .litertlm builder), tokenizer.json
        "litert": ["ai-edge-litert>=2.3", "litert-lm>=0.18.1", "tokenizers>=0.23"],
        "docs": ["mkdocs>=1.6", "mkdocstrings[python]>=1.0"],  # the site in docs/ (mkdocs.yml)
        "dev": ["pytest>=9.0", "pytest-xdist>=3.8", "filelock>=4.3",  # three test processes, a shared fixture
                "jax>=0.10", "ai-edge-litert>=2.3", "litert-lm>=0.18.1", "tokenizers>=0.23",
                "mkdocs>=1.6", "mkdocstrings[python]>=1.0",  # tests/test_docs.py builds the site
                "ctranslate2>=4.8",
                "matplotlib>=3.10", "peft>=0.21",  # benchmarks/gpu.py: transformers' LoRA peer
                "torch>=2.13", "transformers>=5.0", "nbclient>=0.11", "nbformat>=5.11", "ipykernel>=7.4",
                "tensorflow-serving-api>=2.21",  # PredictRequest protos for the TF Serving tests
                "ruff>=0.17"],  # the lint CI runs (ruff.toml)
    },
    entry_points={"console_scripts": ["tf-gpt2=tf_gpt2_launcher:main"]},
)
