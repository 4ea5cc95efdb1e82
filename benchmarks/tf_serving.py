"""tensorflow_model_server's request path, reproduced in one Python process (the server binary does not
install from PyPI). What the stock server does, from tensorflow/serving's source:

- `model_servers/main.cc`: unless `--xla_cpu_compilation_enabled` (or the GPU flag) is given, it calls
  `tensorflow::DisableXlaCompilation()` before loading anything: an op that only XLA runs then fails.
- It loads a version with the TF1 SavedModel loader into a Session (tag "serve"), with TF Text's ops linked
  (`workspace.bzl`: tensorflow-text 2.20.0).
- `servables/tensorflow/predict_util.cc`: every signature input must be sent and no other; dtypes and shapes
  are not checked before `Session::Run`, which fails on a wrong dtype and feeds a tensor of any shape.
- `util/json_tensor.cc` (REST): a body has exactly one of "inputs" (columnar: each input as a nested list, a
  JSON scalar becomes a rank-0 tensor, extra keys are ignored) or "instances" (rows: each an object with
  exactly the signature's inputs, stacked on a new dimension 0). The dtype is the signature's; a float input
  takes any JSON number, an int input only integers. The answer mirrors the request: "predictions" (one row
  per instance; every output needs the same dimension 0) or "outputs". A string output is written raw into
  a JSON string (no UTF-8 check) unless its name ends in `_bytes` ({"b64": ...}).
- `batching/batching_session.cc`, `batching_util.cc` (`--enable_batching`): each request's inputs must share
  dimension 0; requests are concatenated on it; with `pad_variable_length_inputs` every other dimension is
  padded at its end, to the largest in the batch, with the first element of that request's own tensor; the
  batch is padded to the next allowed batch size with copies of the last request's first row; outputs are
  split back on dimension 0. Nothing else is checked before the merge (`batching_util.h`,
  `ComputeTensorBatchSize`): a request's tensor with no elements that needs padding ("Got empty tensor in batch of
  non-empty tensors", `PadTensor`), another dtype than the same input of the other requests ("Tensor concat operation
  failed") or another rank (the server indexes past an array in `CalculateMaxDimSizes`: here an error) fails the
  merge, and a failed merge or run fails every request of the batch (`ProcessBatch`). Its settings come from a
  text BatchingParameters proto (`servables/tensorflow/session_bundle_config.proto`) given by
  `--batching_parameters_file`.
- A request of more rows than `max_batch_size` (the queue's `input_batch_size_limit`,
  `servables/tensorflow/bundle_factory_util.h`) is refused on its own: TensorFlow's
  `core/kernels/batching_util/shared_batch_scheduler.h` (`ValidateBatchTaskQueueCapacity`) answers "Task size N is
  larger than maximum input batch size M". `enable_large_batch_splitting` would cut such a request into parts of
  `max_execution_batch_size` rows, run them in separate batches and join the parts' outputs with `tensor::Concat`
  (`batching/batching_session.cc`, `SplitInputTask`), which takes every part to have the first part's shape beyond
  dimension 0 and copies bytes: outputs whose width depends on the batch (padded prompts, the longest answer) come
  back joined wrong. It is not reproduced here, nor are deadlines (REST calls end after `--rest_api_timeout_in_ms`,
  30 s by default, `model_servers/server.h`; gRPC calls at the client's deadline).

Run as a script, it is a server of the models it is sent, the way one tensorflow_model_server serves every model of
its config (XLA stays off for the process's whole life unless `--xla`):
    python benchmarks/tf_serving.py [--xla]
It reads pickled (MODEL_DIR, BATCHING_PARAMETERS_FILE or None, CALLS) one after another from stdin until stdin
closes, and writes each one's RESULTS, pickled, to stdout. Each model version, with its batching parameters, loads
on its first use into a Session of its own and stays loaded. CALLS is a list of calls; a call is a list of requests
answered as one merged batch (a list of one: on its own; a merged batch needs the batching parameters, as the server
needs --enable_batching, which the file stands for). A request is a serialized
`tensorflow_serving.apis.predict_pb2.PredictRequest` (gRPC) or a REST body as a dict (with "signature_name").
RESULTS holds, for each call, a list: a serialized PredictResponse, the REST answer's JSON text, or
{"error": message}.
"""

from __future__ import annotations

import base64
import ctypes
import importlib.util
import json
import os
import pickle
import sys
from typing import Any

import numpy as np


def start(xla: bool = False) -> None:
    """Load TensorFlow as the server does: XLA compilation off (its default) and TF Text's ops registered."""
    tf_dir = importlib.util.find_spec("tensorflow").submodule_search_locations[0]
    import tensorflow as tf  # noqa: F401  (loads libtensorflow_cc once; the CDLL below is the same library)
    import tensorflow_text  # noqa: F401  (the server links TF Text's ops)

    if not xla:
        ctypes.CDLL(os.path.join(tf_dir, "libtensorflow_cc.so.2"))._ZN10tensorflow21DisableXlaCompilationEv()


# BatchingParameters' fields (session_bundle_config.proto); the server refuses a file with any other.
BATCHING_FIELDS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                   "thread_pool_name", "allowed_batch_sizes", "pad_variable_length_inputs",
                   "enable_large_batch_splitting", "max_execution_batch_size")


def read_batching_parameters(path: str) -> dict[str, Any]:
    """A batching parameters file (text proto: `name { value: N }` wrappers, `name: V` plain fields)."""
    import re

    text = re.sub(r"#[^\n]*", "", open(path, encoding="utf-8").read())
    parameters: dict[str, Any] = {"allowed_batch_sizes": []}
    for name, wrapped, plain in re.findall(r"(\w+)\s*(?:\{\s*value\s*:\s*([^}\s]+)\s*\}|:\s*(\S+))", text):
        if name not in BATCHING_FIELDS:
            raise ValueError(f"{path}: BatchingParameters has no field {name!r}")
        value = json.loads(wrapped or plain)
        if name == "allowed_batch_sizes":
            parameters[name].append(value)
        else:
            parameters[name] = value
    sizes, largest = parameters["allowed_batch_sizes"], parameters.get("max_batch_size", 1000)
    if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != largest):
        raise ValueError(f"{path}: allowed_batch_sizes must increase and its last entry must match max_batch_size")
    return parameters


class Server:
    """One model version loaded as the server loads it, answering Predict calls; `batching`, the parameters
    of `--enable_batching` (read_batching_parameters), lets a call merge several requests."""

    def __init__(self, model_dir: str, batching: dict[str, Any] | None = None):
        import tensorflow as tf

        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], model_dir)
        self.signatures = dict(meta_graph.signature_def)
        self.callables = {}  # (signature, its inputs' names) -> a Session::Run of them
        if batching and batching.get("enable_large_batch_splitting"):
            raise ValueError("enable_large_batch_splitting is not reproduced (see the module's docstring)")
        self.batching = batching

    # -- one Session::Run, as predict_util.cc feeds it --------------------------------------------
    def run(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        signature = self.signatures[name]
        extra, missing = set(inputs) - set(signature.inputs), set(signature.inputs) - set(inputs)
        if extra or missing:
            raise ValueError(f"input size does not match signature: Sent extra: {sorted(extra)}. "
                             f"Missing but required: {sorted(missing)}.")
        for key, value in inputs.items():
            expected = tf.dtypes.as_dtype(signature.inputs[key].dtype).as_numpy_dtype
            if value.dtype != expected and not (value.dtype.kind in "SUO" and expected is object):
                raise ValueError(f"{key}: expected {np.dtype(expected).name}, got {value.dtype.name}")
        # Session::Run through the C API, as the server calls it: no shape is checked against the signature's
        # (Python's session.run refuses a feed of another shape itself; the server passes it on).
        keys, outputs = sorted(inputs), sorted(signature.outputs)
        if (name, tuple(keys)) not in self.callables:
            from tensorflow.core.protobuf import config_pb2

            options = config_pb2.CallableOptions(feed=[signature.inputs[k].name for k in keys],
                                                 fetch=[signature.outputs[k].name for k in outputs])
            self.callables[name, tuple(keys)] = self.session._make_callable_from_options(options)
        return dict(zip(outputs, self.callables[name, tuple(keys)](*(inputs[k] for k in keys))))

    # -- the batcher: several requests as one Session::Run ------------------------------------------
    def run_batch(self, name: str, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        if self.batching is None:
            if len(requests) > 1:
                raise ValueError("batching is off: start the server with --enable_batching to merge requests")
            return [self.run(name, requests[0])]
        sizes = []
        for inputs in requests:
            rows = {value.shape[0] if value.ndim else None for value in inputs.values()}
            if None in rows:
                raise ValueError("Batching session Run() input tensors must have at least one dimension")
            if len(rows) != 1:
                raise ValueError("Batching Run() input tensors must have equal 0th-dimension size")
            sizes.append(rows.pop())
        total, largest = sum(sizes), self.batching.get("max_batch_size", 1000)
        for size in sizes:  # each request is a task, refused on its own
            if size > largest:
                raise ValueError(f"Task size {size} is larger than maximum input batch size {largest}")
        if total > largest:
            raise ValueError(f"requests of {total} rows in all do not fit one batch of {largest}: the server runs "
                             "them in several batches, not as this call")
        target = min([s for s in self.batching["allowed_batch_sizes"] if s >= total], default=total)
        merged = {}
        for key in requests[0]:
            parts = [inputs[key] for inputs in requests]
            if len({p.ndim for p in parts}) != 1:
                raise ValueError(f"Tensors with name '{key}' from different tasks have different ranks (undefined "
                                 "in the server's CalculateMaxDimSizes)")
            if not self.batching.get("pad_variable_length_inputs"):
                if any(p.shape[1:] != parts[0].shape[1:] for p in parts):
                    raise ValueError(f"Tensors with name '{key}' from different tasks have different shapes and "
                                     "padding is turned off")
            else:
                widest = np.max([p.shape for p in parts], axis=0)
                parts = [_padded(p, widest) for p in parts]
            if len({p.dtype for p in parts}) != 1:
                raise ValueError("Tensor concat operation failed: Cannot concatenate tensors that have different "
                                 "data types")
            parts += [parts[-1][:1]] * (target - total)  # batch padding: the last request's first row
            merged[key] = np.concatenate(parts)
        outputs = self.run(name, merged)
        answers, start = [], 0
        for size in sizes:
            answers.append({key: value[start:start + size] for key, value in outputs.items()})
            start += size
        return answers

    # -- the two front ends ---------------------------------------------------------------------------
    def grpc(self, requests: list[bytes]) -> list[bytes]:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        parsed = [predict_pb2.PredictRequest.FromString(r) for r in requests]
        name = parsed[0].model_spec.signature_name or "serving_default"
        inputs = [{key: tf.make_ndarray(proto) for key, proto in r.inputs.items()} for r in parsed]
        responses = []
        for request, outputs in zip(parsed, self.run_batch(name, inputs)):
            response = predict_pb2.PredictResponse()
            for key, value in outputs.items():
                if not request.output_filter or key in request.output_filter:
                    response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            responses.append(response.SerializeToString())
        return responses

    def rest(self, bodies: list[dict]) -> list[str]:
        name = bodies[0].get("signature_name", "serving_default")
        signature = self.signatures[name]
        parsed = [tensors_from_json(body, signature) for body in bodies]
        outputs = self.run_batch(name, [inputs for inputs, _ in parsed])
        return [json_from_tensors(out, rows) for out, (_, rows) in zip(outputs, parsed)]


def _padded(tensor: np.ndarray, widest) -> np.ndarray:
    """`tensor` padded at the end of each dimension but the first to `widest`, with its own first element
    (`batching_util.cc` `PadTensor`: a tensor that needs no padding is copied, an empty one that needs some fails)."""
    widths = [(0, 0)] + [(0, w - n) for w, n in zip(widest[1:], tensor.shape[1:])]
    if not any(after for _, after in widths):
        return tensor
    if not tensor.size:
        raise ValueError("Got empty tensor in batch of non-empty tensors.")
    return np.pad(tensor, widths, constant_values=tensor.flat[0])


def _tensor(value: Any, dtype) -> np.ndarray:
    """A JSON value as a tensor of the signature's dtype (json_tensor.cc's type rules)."""
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(dtype)
    if dtype == tf.string:
        unpack = lambda v: base64.b64decode(v["b64"]) if isinstance(v, dict) else v.encode()  # noqa: E731
        return np.vectorize(unpack, otypes=[object])(np.array(value, dtype=object))
    array = np.array(value)
    if array.dtype == object and dtype.is_integer and all(isinstance(v, int) for v in array.flat):  # (past 2**64)
        raise ValueError(f"JSON Value: {value!r:.60} is not of expected type: {dtype.name}")
    if array.dtype == object:
        raise ValueError("Encountered list at unexpected size (ragged lists are not a tensor)")
    # rapidjson's IsInt / IsInt64: an int input takes integers of int32's range (int64's for an int64 input)
    limits = np.iinfo(np.int64 if dtype == tf.int64 else np.int32)
    if dtype.is_integer and array.size and (array.dtype.kind not in "iu" or array.min() < limits.min
                                            or array.max() > limits.max):
        raise ValueError(f"JSON Value: {value!r:.60} is not of expected type: {dtype.name}")
    if not dtype.is_integer and array.size and array.dtype.kind not in "iuf":
        raise ValueError(f"JSON Value: {value!r:.60} is not of expected type: {dtype.name}")
    return array.astype(dtype.as_numpy_dtype)


def tensors_from_json(body: dict, signature) -> tuple[dict[str, np.ndarray], bool]:
    """A REST predict body as input tensors, and whether it was in row ("instances") format."""
    if ("inputs" in body) == ("instances" in body):
        raise ValueError("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    names = sorted(signature.inputs)
    if "inputs" in body:
        # an object is a map of inputs, unless it is one base64 value ({"b64": ...}) of a signature of one input
        by_name = isinstance(body["inputs"], dict) and not (set(body["inputs"]) == {"b64"} and len(names) == 1)
        inputs = body["inputs"] if by_name else {names[0]: body["inputs"]}
        for name in names:
            if name not in inputs:
                raise ValueError(f"Missing named input: {name} in 'inputs' object.")
        return {name: _tensor(inputs[name], signature.inputs[name].dtype) for name in names}, False
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise ValueError("'instances' must be a non-empty list")
    if not all(isinstance(i, dict) and "b64" not in i for i in instances):
        if len(names) != 1:
            raise ValueError("instances is a plain list, but expecting list of objects as multiple input tensors")
        instances = [{names[0]: i} for i in instances]
    tensors = {}
    for name in names:
        if any(sorted(i) != names for i in instances):
            raise ValueError(f"Expecting object with keys equal to: {','.join(names)}")
        rows = [_tensor(i[name], signature.inputs[name].dtype) for i in instances]
        if len({r.shape for r in rows}) != 1:
            raise ValueError(f"Expecting shape {list(rows[0].shape)} for every instance of '{name}'")
        tensors[name] = np.stack(rows)
    return tensors, True


def _json_value(name: str, value: np.ndarray) -> Any:
    if value.dtype != object:
        return value.tolist()
    if name.endswith("_bytes"):
        return np.vectorize(lambda b: {"b64": base64.b64encode(b).decode()}, otypes=[object])(value).tolist()
    # The server copies the bytes into the JSON string as they are: they must be UTF-8 for the body to be JSON.
    return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(value).tolist()


def json_from_tensors(outputs: dict[str, np.ndarray], rows: bool) -> str:
    """The REST answer: "predictions" for a row-format request, "outputs" for a columnar one."""
    if not rows:
        values = {k: _json_value(k, v) for k, v in outputs.items()}
        return json.dumps({"outputs": values if len(values) > 1 else next(iter(values.values()))})
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in outputs.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(f"outputs have inconsistent batch sizes: {sizes}")
    values = {k: _json_value(k, v) for k, v in outputs.items()}
    n = next(iter(sizes.values()))
    if len(values) == 1:
        return json.dumps({"predictions": next(iter(values.values()))})
    return json.dumps({"predictions": [{k: v[i] for k, v in values.items()} for i in range(n)]})


def xla_only_ops(model_dir: str) -> list[str]:
    """What in a SavedModel's graphs only XLA runs: the op types of tf2xla's `Xla*` ops, and each function that
    must be compiled (`_XlaMustCompile`, as `jit_compile=True` marks it), as "function NAME"."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString(open(os.path.join(model_dir, "saved_model.pb"), "rb").read())
    types, compiled = set(), set()
    for meta_graph in saved.meta_graphs:
        nodes = list(meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            nodes += function.node_def
            if function.attr["_XlaMustCompile"].b:
                compiled.add(f"function {function.signature.name}")
        types |= {node.op for node in nodes}
        compiled |= {f"function {node.attr['f'].func.name}" for node in nodes if node.attr["_XlaMustCompile"].b}
    return sorted(t for t in types if t.startswith("Xla")) + sorted(compiled)


def answer(server: Server, calls: list[list]) -> list:
    """Each call's answers (a list), or {"error": message} for a call the server fails whole."""
    results = []
    for requests in calls:
        try:
            front = server.rest if isinstance(requests[0], dict) else server.grpc
            results.append(front(requests))
        except Exception as error:  # the server answers the call with the error; the next call goes on
            results.append({"error": f"{type(error).__name__}: {error}"})
    return results


def main(argv: list[str]) -> None:
    """Answer (model_dir, batching_parameters_file, calls) read from stdin until it closes (the module's docstring)."""
    sys.modules["tf_gpt2"] = None  # the server has no Python package: the SavedModel must not need it
    results_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else written to stdout goes to stderr, not between the pickled results
    start(xla="--xla" in argv)
    servers = {}
    while True:
        try:
            model_dir, parameters, calls = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        if (model_dir, parameters) not in servers:
            servers[model_dir, parameters] = Server(model_dir,
                                                    read_batching_parameters(parameters) if parameters else None)
        pickle.dump(answer(servers[model_dir, parameters], calls), results_out)
        results_out.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
