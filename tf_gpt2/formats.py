"""The names of the export formats, on-device quantizations and model files: one list for the exporters and the CLI
(this module imports nothing, so the CLI can offer them without loading TensorFlow)."""

FORMATS = ("saved_model", "tflite", "litertlm")  # TF Serving; the LiteRT model alone; its LiteRT-LM package
ON_DEVICE_SUFFIXES = {".tflite": "tflite", ".litertlm": "litertlm"}  # the file kind each names
QUANTIZATIONS = ("fp32", "fp16", "int8")  # int8: dynamic range (int8 weights and matmuls), LiteRT's CPU recipe
# Names of model files (not folders): a path ending so is never a Hugging Face repo name, nor a folder to write
MODEL_FILE_SUFFIXES = (".keras", ".safetensors", ".bin", ".h5", ".pt", ".pth", ".ckpt", ".onnx", ".gguf", ".npz",
                       ".msgpack", ".tflite", ".litertlm")
# A PEFT adapter's files (LoRA): transformers, with peft installed, loads the adapter where its config is
PEFT_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
# A keras-hub GPT-2 preset's config.json, by its registered name (keras-hub still reads keras-nlp's presets)
KERAS_HUB_GPT2 = ("keras_hub>GPT2Backbone", "keras_nlp>GPT2Backbone")
