"""The SavedModel served as the stock tensorflow_model_server serves it: a process of its own with XLA compilation
disabled (or enabled, as the server's flag does) serving each model it is sent, TF Text's ops linked, the TF1 loader
and a Session per model version, requests as gRPC PredictRequest protos and as
REST bodies in both formats, and merged batches built by the batcher's rules (benchmarks/tf_serving.py cites
the server's source for each rule)."""

import json
import os
import pickle
import select
import subprocess
import sys

import numpy as np
import pytest
from conftest import spread_tiny_model

from tf_gpt2 import GPT2, GPT2Tokenizer
from tf_gpt2.export import export_saved_model

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)

from tf_serving import xla_only_ops  # noqa: E402

KNOBS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")


@pytest.fixture(scope="module")
def model():
    return spread_tiny_model()


@pytest.fixture(scope="module")
def served(served_tiny):
    return served_tiny


SERVERS: dict[bool, subprocess.Popen] = {}  # this test process's servers, by their XLA setting


def serve(path, calls, tmp_path, batching=None, xla=False):
    """Answer `calls` as tensorflow_model_server answers them: in a process of its own, started as the server starts
    (with `--xla_cpu_compilation_enabled` when `xla`), that serves every model this test process sends it with that
    setting, each version loaded once (and again with other `--enable_batching --batching_parameters_file=batching`
    parameters), as one server serves every model of its config. A server that ended fails the call that finds it
    so, with its log."""
    server = SERVERS.get(xla)
    if server is None:
        log = open(tmp_path / "server.log", "w+")
        server = SERVERS[xla] = subprocess.Popen(
            [sys.executable, os.path.join(BENCHMARKS, "tf_serving.py")] + (["--xla"] if xla else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        server.log = log
    try:
        pickle.dump((str(path), str(batching) if batching else None, calls), server.stdin)
        server.stdin.flush()
        if select.select([server.stdout], [], [], 600)[0]:
            return pickle.load(server.stdout)
    except (EOFError, BrokenPipeError):  # it ended: its log says why
        pass
    server.kill()
    del SERVERS[xla]
    server.log.seek(0)
    said = server.log.read()[-3000:]
    server.log.close()
    pytest.fail(f"the server ended or did not answer:\n{said}")


@pytest.fixture(autouse=True, scope="module")
def _stop_servers():
    """Each test file's servers end with it: stdin closed, they return (an exception in one would be its stderr)."""
    yield
    while SERVERS:
        server = SERVERS.popitem()[1]
        try:
            server.stdin.close()
            assert server.wait(timeout=60) == 0, open(server.log.name).read()[-3000:]
        finally:
            server.kill()  # (a no-op once it ended)
            server.log.close()


def grpc(signature, **inputs):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "gpt2", signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request.SerializeToString()


def outputs(response):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    assert not isinstance(response, dict), response  # {"error": ...}
    return {k: tf.make_ndarray(v) for k, v in predict_pb2.PredictResponse.FromString(response).outputs.items()}


def settings(rows, max_new_tokens=6, temperature=0.0, top_k=0, top_p=1.0, seed=0):
    """Sampling settings, one value per row."""
    values = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    dtypes = dict(max_new_tokens=np.int32, temperature=np.float32, top_k=np.int32, top_p=np.float32, seed=np.int32)
    return {k: np.broadcast_to(np.asarray(v, dtypes[k]), (rows,)).copy() for k, v in values.items()}


def right_padded(prompts, pad=0):
    width = max(len(p) for p in prompts)
    return (np.array([p + [pad] * (width - len(p)) for p in prompts], np.int32),
            np.array([len(p) for p in prompts], np.int32))


# A request of no rows, for each signature: (it failed in generate with "Dimension -2147483648 must be >= 0").
NO_ROWS = {"serving_default": dict(token_ids=np.zeros((0, 3), np.int32), length=np.zeros(0, np.int32)),
           "tokenize": dict(text=np.zeros(0, bytes)),
           "generate": dict(token_ids=np.zeros((0, 3), np.int32), length=np.zeros(0, np.int32), **settings(0)),
           "generate_text": dict(text=np.zeros(0, bytes), **settings(0))}


def no_rows_calls():
    return [[grpc(name, **no_rows)] for name, no_rows in NO_ROWS.items()]


def assert_no_rows_answer_no_rows(results):
    for name, (result,) in zip(NO_ROWS, results, strict=True):
        answer = outputs(result)
        assert answer and all(len(value) == 0 for value in answer.values()), (name, answer)


def test_the_served_graphs_hold_no_op_that_only_xla_runs(served):
    assert xla_only_ops(served) == []


def test_every_signature_answers_with_xla_compilation_disabled(model, served, tmp_path):
    prompts = [[464, 3290, 318], [40, 1101]]
    ids, length = right_padded(prompts, pad=7)
    sampled = dict(temperature=0.9, top_k=40, top_p=0.9, seed=[3, 4])
    twice = np.array([[464, 3290, 318]] * 2, np.int32)
    text = "Hello world"
    calls = [
        [grpc("serving_default", token_ids=ids, length=length)],
        [grpc("generate", token_ids=ids, length=length, **settings(2))],
        [grpc("generate", token_ids=ids, length=length, **settings(2, **sampled))],
        [grpc("generate", token_ids=twice, length=np.array([3, 3], np.int32),  # one seed for the request
              **{**settings(2, temperature=1.0), "seed": np.array([7], np.int32)})],
        [grpc("generate_text", text=np.array([text.encode()]), **settings(1))],
        [{"signature_name": "generate_text", "inputs": {"text": [text], **{k: [v] for k, v in dict(
            max_new_tokens=6, temperature=0.0, top_k=0, top_p=1.0, seed=0).items()}}}],
        [{"signature_name": "generate", "instances": [
            {"token_ids": p, "length": 2, "max_new_tokens": 6, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
             "seed": 0} for p in ([464, 3290], [40, 1101])]}],
    ] + no_rows_calls()
    logits, greedy, sampled_out, one_seed, text_out, rest_columnar, rest_rows, *empty = serve(served, calls, tmp_path)
    assert_no_rows_answer_no_rows(empty)
    logits = outputs(logits[0])["logits"]
    for row, prompt in enumerate(prompts):
        np.testing.assert_allclose(logits[row, :len(prompt)], np.asarray(model(np.array([prompt])))[0], atol=1e-4)
        assert not logits[row, len(prompt):].any()  # past a row's prompt: zeros, not the padding's logits

    def answers(out):
        return [row[:n].tolist() for row, n in zip(out["token_ids"], out["length"])]

    assert answers(outputs(greedy[0])) == model.generate(prompts, max_new_tokens=6)
    expected = [model.generate(p, max_new_tokens=6, temperature=0.9, top_k=40, top_p=0.9, seed=s)
                for p, s in zip(prompts, (3, 4))]
    assert answers(outputs(sampled_out[0])) == expected
    same_prompt = model.generate([[464, 3290, 318]] * 2, max_new_tokens=6, temperature=1.0, seed=7)  # seeds 7, 8
    assert answers(outputs(one_seed[0])) == same_prompt and same_prompt[0] != same_prompt[1]
    assert outputs(text_out[0])["text"][0].decode() == model.generate(text, max_new_tokens=6)
    assert json.loads(rest_columnar[0])["outputs"]["text"] == [model.generate(text, max_new_tokens=6)]
    rows = json.loads(rest_rows[0])["predictions"]
    assert [r["token_ids"][:r["length"]] for r in rows] == model.generate([[464, 3290], [40, 1101]], max_new_tokens=6)


def test_an_xla_export_answers_as_model_generate_on_a_server_that_compiles_with_xla(model, tmp_path):
    """`xla=True` decodes in one XLA program per bucket of prompt length and budget: on a server started with
    --xla_cpu_compilation_enabled it answers as model.generate (greedy and sampled, bad rows merged in, text);
    on one without, every generation fails by name, and the logits still answer."""
    from tf_gpt2.export import export_saved_model

    path = export_saved_model(model, str(tmp_path / "xla"), max_new_tokens_limit=16, xla=True)
    prompts = [[464, 3290, 318], [40, 1101], [3, 4]]
    ids, length = right_padded(prompts, pad=7)
    sampled = dict(temperature=0.9, top_k=40, top_p=0.9, seed=[3, 4, 5])
    calls = [[grpc("generate", token_ids=ids, length=length, **settings(3, max_new_tokens=[6, 11, 17]))],
             [grpc("generate", token_ids=ids, length=length, **settings(3, **sampled))],
             [grpc("generate_text", text=np.array([b"Hello world"]), **settings(1))],
             [grpc("serving_default", token_ids=ids, length=length)]]
    greedy, sampled_out, text, logits, *empty = serve(path, calls + no_rows_calls(), tmp_path, xla=True)
    assert_no_rows_answer_no_rows(empty)

    def answers(out):
        return [row[:n].tolist() for row, n in zip(out["token_ids"], out["length"])]

    greedy = outputs(greedy[0])
    assert answers(greedy)[:2] == [model.generate(prompts[0], max_new_tokens=6),
                                   model.generate(prompts[1], max_new_tokens=11)]
    assert greedy["error"].tolist() == [b"", b"", b"max_new_tokens must be <= 16"] and greedy["length"][2] == 0
    assert answers(outputs(sampled_out[0])) == [
        model.generate(p, max_new_tokens=6, temperature=0.9, top_k=40, top_p=0.9, seed=s)
        for p, s in zip(prompts, (3, 4, 5))]
    assert outputs(text[0])["text"][0].decode() == model.generate("Hello world", max_new_tokens=6)
    assert any(x.startswith("function ") for x in xla_only_ops(path))  # what a server without XLA cannot run
    without = serve(path, calls[:1] + calls[3:], tmp_path)
    assert "XLA compilation disabled" in without[0]["error"]
    np.testing.assert_array_equal(outputs(without[1][0])["logits"], outputs(logits[0])["logits"])


def test_a_merged_batch_answers_each_request_as_it_answers_it_alone(served, tmp_path):
    """The batcher concatenates requests on dimension 0, pads other dimensions with each request's first
    element and the batch with copies of a row: no request's answer may change. Served with the batching
    parameters the export ships, then with allowed batch sizes that pad the batch."""
    requests = [  # different prompt widths, greedy and sampled rows, different budgets, one request of two rows
        dict(token_ids=np.array([[464, 3290, 318, 2068, 7586]], np.int32), length=np.array([5], np.int32),
             **settings(1, max_new_tokens=3)),
        dict(token_ids=np.array([[40, 1101], [818, 0]], np.int32), length=np.array([2, 1], np.int32),
             **settings(2, max_new_tokens=[16, 5], temperature=[1.0, 0.0], top_k=[50, 0], seed=[11, 0])),
        # Ends at the last position of the context (60 + 4 = 64) while the batch goes on for 16 steps.
        dict(token_ids=np.arange(100, 160, dtype=np.int32)[None], length=np.array([60], np.int32),
             **settings(1, max_new_tokens=4)),
        dict(token_ids=np.array([[1, 2, 3]], np.int32), length=np.array([3], np.int32),
             **settings(1, temperature=0.7, top_p=0.8, seed=5)),
    ]
    alone = [[grpc("generate", **r)] for r in requests]
    texts = [dict(text=np.array([t.encode()]), **settings(1, max_new_tokens=4, temperature=1.0, seed=s))
             for t, s in (("The meaning of life is", 1), ("Hi", 2))]
    calls = alone + [[grpc("generate", **r) for r in requests]]
    calls += [[grpc("generate_text", **t)] for t in texts] + [[grpc("generate_text", **t) for t in texts]]
    calls += [[grpc("serving_default", token_ids=r["token_ids"], length=r["length"]) for r in requests]]
    calls += [[grpc("serving_default", token_ids=r["token_ids"], length=r["length"])] for r in requests]
    shipped = os.path.join(os.path.dirname(served), "batching_parameters.txt")
    results = serve(served, calls, tmp_path, batching=shipped)
    with open(tmp_path / "padded.txt", "w") as f:
        f.write(open(shipped).read().replace("max_batch_size { value: 32 }", "max_batch_size { value: 8 }")
                + "allowed_batch_sizes: 2\nallowed_batch_sizes: 8\n")
    (padded,) = serve(served, [calls[len(requests)]], tmp_path, batching=tmp_path / "padded.txt")
    merged = results[len(requests)]
    assert [outputs(r)["token_ids"].tolist() for r in padded] == [outputs(r)["token_ids"].tolist() for r in merged]
    for one, in_batch in zip(results[:len(requests)], merged):
        one, in_batch = outputs(one[0]), outputs(in_batch)
        np.testing.assert_array_equal(one["length"], in_batch["length"])
        assert one["length"].min() > 0
        for a, b, n in zip(one["token_ids"], in_batch["token_ids"], one["length"]):
            assert a[:n].tolist() == b[:n].tolist()
    text_alone, text_merged = results[len(requests) + 1:len(requests) + 3], results[len(requests) + 3]
    assert [outputs(r[0])["text"][0] for r in text_alone] == [outputs(r)["text"][0] for r in text_merged]
    logits_merged, logits_alone = results[len(requests) + 4], results[len(requests) + 5:]
    for one, in_batch, r in zip(logits_alone, logits_merged, requests):
        width = r["token_ids"].shape[1]
        np.testing.assert_allclose(outputs(in_batch)["logits"][:, :width], outputs(one[0])["logits"], atol=1e-5)


def test_served_text_is_valid_utf8_when_generation_stops_inside_a_character(model, served, tmp_path):
    """A budget that ends inside a multi-byte character leaves an incomplete one: it becomes U+FFFD."""
    tokenizer = GPT2Tokenizer()
    prompt = "Hello"
    # Nearly uniform sampling: 344 of GPT-2's 50257 tokens are not whole UTF-8 characters.
    batch = model.generate([tokenizer.encode(prompt)] * 256, max_new_tokens=2, temperature=100.0, seed=0,
                           stop_ids=[])
    cut = [row for row, ids in enumerate(batch) if not _is_utf8(tokenizer._enc.decode_bytes(ids))]
    assert cut, "no sampled answer ends inside a character: pick another prompt or seed"
    seed = cut[0]  # row i of that batch sampled with seed i
    raw = tokenizer._enc.decode_bytes(batch[seed])
    request = dict(text=np.array([prompt.encode()]), **settings(1, max_new_tokens=2, temperature=100.0, seed=seed))
    body = {"signature_name": "generate_text", "instances": [
        {"text": prompt, "max_new_tokens": 2, "temperature": 100.0, "top_k": 0, "top_p": 1.0, "seed": seed}]}
    (grpc_answer,), (rest_answer,) = serve(served, [[grpc("generate_text", **request)], [body]], tmp_path)
    answer = outputs(grpc_answer)
    assert answer["token_ids"][0].tolist() == batch[seed]  # the same tokens: only their text is mended
    assert answer["text"][0].decode("utf-8") == raw.decode("utf-8", errors="replace")
    assert isinstance(rest_answer, str), rest_answer
    assert json.loads(rest_answer)["predictions"][0]["text"] == raw.decode("utf-8", errors="replace")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# Rows that break a rule: what is changed in a good request [[464, 3290, 0]] (length 2), and the error named.
BAD_PROMPTS = [
    (dict(token_ids=np.array([[464, 50257, 0]], np.int32)), "token ids must be in [0, 50257)"),
    (dict(token_ids=np.array([[-1, 3290, 0]], np.int32)), "token ids must be in [0, 50257)"),
    (dict(length=np.array([0], np.int32)), "length must be in [1, number of columns of token_ids]"),
    (dict(length=np.array([4], np.int32)), "length must be in [1, number of columns of token_ids]"),
    (dict(token_ids=np.zeros((1, 0), np.int32), length=np.array([1], np.int32)), "length must be in [1,"),
    (dict(token_ids=np.zeros((1, 65), np.int32), length=np.array([65], np.int32)),
     "the prompt is longer than the context of 64 tokens"),
]
BAD_SETTINGS = [
    (dict(top_k=np.array([-1], np.int32)), "top_k must be >= 0"),
    (dict(temperature=np.array([np.nan], np.float32)), "temperature must be a finite number >= 0"),
    (dict(temperature=np.array([np.inf], np.float32)), "temperature must be a finite number >= 0"),
    (dict(top_p=np.array([0.0], np.float32)), "top_p must be in (0, 1]"),
    (dict(top_p=np.array([np.nan], np.float32)), "top_p must be in (0, 1]"),
    (dict(top_p=np.array([1e-40], np.float32)), "top_p must be at least 1.2e-38 (smaller computes as 0)"),
    (dict(temperature=np.array([1e-40], np.float32)), "temperature must be 0 or at least 1.2e-38"),  # (greedy)
    (dict(seed=np.array([-1], np.int32)), "seed must be >= 0"),  # (it sampled as 2**31 - 1 did)
    (dict(top_k=np.array([40], np.int32)), "top_k and top_p filter what is sampled, and temperature 0"),  # (ignored)
    (dict(top_p=np.array([0.9], np.float32)), "top_k and top_p filter what is sampled, and temperature 0"),
    (dict(max_new_tokens=np.array([0], np.int32)), "max_new_tokens must be > 0"),
    (dict(max_new_tokens=np.array([17], np.int32)), "max_new_tokens must be <= 16"),
    (dict(length=np.array([60], np.int32), token_ids=np.zeros((1, 60), np.int32)),
     "prompt of 60 tokens + max_new_tokens 6 exceeds the context of 64 positions: crop the prompt"),  # (how far over)
]


def test_a_row_that_breaks_a_rule_is_answered_with_the_rule_it_broke(served, tmp_path):
    ids, length = np.array([[464, 3290, 0]], np.int32), np.array([2], np.int32)
    calls = [[grpc("serving_default", **{"token_ids": ids, "length": length, **c})] for c, _ in BAD_PROMPTS]
    calls += [[grpc("generate", **{"token_ids": ids, "length": length, **settings(1), **c})]
              for c, _ in BAD_PROMPTS + BAD_SETTINGS]
    calls += [[grpc("generate", token_ids=ids, length=length, **{**settings(1), "seed": np.array([1, 2], np.int32)})],
              [grpc("serving_default", token_ids=ids, length=np.array([1, 1], np.int32))],
              [grpc("generate", token_ids=ids, length=length)]]  # settings missing
    results = serve(served, calls, tmp_path)
    logits, generated = results[:len(BAD_PROMPTS)], results[len(BAD_PROMPTS):-3]
    for (result,), (change, message) in zip(logits, BAD_PROMPTS):
        answer = outputs(result)
        assert answer["error"][0].decode() .startswith(message), (change, answer["error"])
        assert answer["logits"].shape[1] == (change.get("token_ids", ids)).shape[1] and not answer["logits"].any()
    for (result,), (change, message) in zip(generated, BAD_PROMPTS + BAD_SETTINGS):
        answer = outputs(result)
        assert answer["error"][0].decode().startswith(message), (change, answer["error"])
        assert answer["length"].tolist() == [0]
    # What cannot be told row by row fails the request (the batcher refuses such a request on its own).
    assert "seed must have one value per row, or a single value" in results[-3]["error"]
    assert "length must have one value per row" in results[-2]["error"]
    assert "Missing but required" in results[-1]["error"]


def test_a_request_of_tensors_of_another_rank_is_refused_naming_the_input(served, tmp_path):
    """The server feeds a request's tensors in whatever shape they came (predict_util.cc checks none; REST reads a
    JSON scalar as rank 0): `"length": 2` passed the check of one length per row (its shape [] broadcast), and
    other ranks failed inside the graph naming no input. A setting is one value or one per row, in any nesting."""
    import re

    ids, length = np.array([[464, 3290, 0]], np.int32), np.array([2], np.int32)
    text = np.array([b"Hello there"], object)
    calls = [[grpc("generate", token_ids=ids, length=np.int32(2), **settings(1))],
             [grpc("serving_default", token_ids=ids[0], length=length)],
             [grpc("serving_default", token_ids=ids, length=length[None])],
             [grpc("generate_text", text=text[None], **settings(1))],
             [grpc("tokenize", text=text[0])],
             [grpc("generate", token_ids=ids, length=length, **{**settings(1), "max_new_tokens": np.int32([[4]])})],
             [grpc("generate", token_ids=ids, length=length, **{**settings(1), "max_new_tokens": np.int32(3)})]]
    results = serve(served, calls, tmp_path)
    refused = [("length", "[]", "[?]"), ("token_ids", "[3]", "[?,?]"), ("length", "[1,1]", "[?]"),
               ("text", "[1,1]", "[?]"), ("text", "[]", "[?]")]
    for result, (name, sent, expected) in zip(results, refused, strict=False):  # a failed request: {"error": ...}
        assert re.search(rf"Shape of tensor \w*_{name}_\w* {re.escape(sent)} is not compatible with expected shape "
                         rf"{re.escape(expected)}", result["error"]), result
    assert [outputs(r[0])["length"].tolist() for r in results[-2:]] == [[4], [3]]


def test_a_bad_row_never_fails_the_rows_merged_with_it(model, served, tmp_path):
    """A merged batch holding bad rows: each good row answers as alone, each bad row gets its own error."""
    good = [dict(token_ids=np.array([[464, 3290, 318]], np.int32), length=np.array([3], np.int32),
                 **settings(1, max_new_tokens=5)),
            dict(token_ids=np.array([[40, 1101], [818, 0]], np.int32), length=np.array([2, 1], np.int32),
                 **settings(2, max_new_tokens=[3, 16], temperature=[1.0, 0.0], seed=[4, 0]))]
    bad = [dict(token_ids=np.array([[1, 2]], np.int32), length=np.array([2], np.int32),
                **settings(1, max_new_tokens=17)),
           dict(token_ids=np.array([[1, 50257, 3, 4]], np.int32), length=np.array([4], np.int32), **settings(1)),
           # A prompt of the whole context: refused (no room for a token), and it ran as it was, so that the batch's
           # cache had no slot for it and the whole merged batch failed in a gather.
           dict(token_ids=np.full((1, 64), 464, np.int32), length=np.array([64], np.int32),
                **settings(1, max_new_tokens=1))]
    merged = [bad[0], good[0], bad[1], good[1], bad[2]]
    texts = [dict(text=np.array(["Hello world".encode()]), **settings(1, max_new_tokens=4)),
             dict(text=np.array([("a" * 300).encode()]), **settings(1)),
             dict(text=np.array(["".encode()]), **settings(1)),
             dict(text=np.array([("a" + " a" * 63).encode()]), **settings(1, max_new_tokens=1))]  # 64 tokens
    calls = [[grpc("generate", **r) for r in merged], [grpc("generate_text", **t) for t in texts],
             [grpc("serving_default", token_ids=r["token_ids"], length=r["length"]) for r in merged]]
    shipped = os.path.join(os.path.dirname(served), "batching_parameters.txt")
    generated, text, logits = [[outputs(r) for r in call] for call in serve(served, calls, tmp_path, batching=shipped)]
    for answer, message in ((generated[0], "max_new_tokens must be <= 16"), (generated[2], "token ids must be in"),
                            (logits[2], "token ids must be in"),
                            (generated[4], "prompt of 64 tokens + max_new_tokens 1 exceeds the context of 64")):
        assert answer["error"][0].decode().startswith(message)
    assert logits[4]["error"].tolist() == [b""]  # the whole context is a prompt to score
    assert logits[0]["error"].tolist() == [b""] and not logits[2]["logits"].any()
    for answer, request in ((generated[1], good[0]), (generated[3], good[1])):
        assert answer["error"].tolist() == [b""] * len(request["length"])
        rows = [ids[:n].tolist() for ids, n in zip(answer["token_ids"], answer["length"])]
        alone = [model.generate(ids[:n].tolist(), max_new_tokens=int(new), temperature=float(t), seed=int(s))
                 for ids, n, new, t, s in zip(request["token_ids"], request["length"], request["max_new_tokens"],
                                              request["temperature"], request["seed"])]
        assert rows == alone
    for answer, request in ((logits[1], good[0]), (logits[3], good[1])):
        for row, (ids, n) in enumerate(zip(request["token_ids"], request["length"])):
            np.testing.assert_allclose(answer["logits"][row, :n], np.asarray(model(ids[None, :n]))[0], atol=1e-4)
    assert text[0]["text"][0].decode() == model.generate("Hello world", max_new_tokens=4)
    assert [t["error"][0].decode() for t in text] == [
        "", "text has a word of more than 256 bytes (a run of letters, digits, other symbols or whitespace, which "
        "GPT-2's pre-tokenizer keeps whole)", "text is empty",
        "prompt of 64 tokens + max_new_tokens 1 exceeds the context of 64 positions: crop the prompt"]


def test_a_malformed_request_fails_the_requests_merged_with_it_as_docs_serving_says(served, tmp_path):
    """What is not a row's value fails the request, and under --enable_batching every request merged with it: the
    batcher concatenates before the model runs (batching_session.cc). A request of no rows that needs no padding
    merges; a REST integer past int32's range fails its request (rapidjson's IsInt)."""
    good = dict(token_ids=np.array([[464, 3290, 318]], np.int32), length=np.array([3], np.int32))
    int64_ids = dict(token_ids=np.array([[40, 1101]]).astype(np.int64), length=np.array([2], np.int32))
    no_columns = dict(token_ids=np.zeros((1, 0), np.int32), length=np.array([1], np.int32))
    no_rows = dict(token_ids=np.zeros((0, 3), np.int32), length=np.zeros(0, np.int32))
    calls = [[grpc("serving_default", **good), grpc("serving_default", **int64_ids)],
             [grpc("serving_default", **good), grpc("serving_default", **no_columns)],
             [grpc("serving_default", **good), grpc("serving_default", **no_rows)],
             [{"signature_name": "generate", "instances": [
                 {"token_ids": [464, 3290], "length": 2, "max_new_tokens": 6, "temperature": 0.0, "top_k": 0,
                  "top_p": 1.0, "seed": 2 ** 32 + 1}]}]]
    shipped = os.path.join(os.path.dirname(served), "batching_parameters.txt")
    with_int64, with_no_columns, with_no_rows, past_int32 = serve(served, calls, tmp_path, batching=shipped)
    assert "Tensor concat operation failed" in with_int64["error"]
    assert "Got empty tensor in batch of non-empty tensors" in with_no_columns["error"]
    assert outputs(with_no_rows[0])["error"].tolist() == [b""] and outputs(with_no_rows[1])["logits"].shape[0] == 0
    assert "is not of expected type: int32" in past_int32["error"]
    docs = " ".join(open(os.path.join(os.path.dirname(__file__), "..", "docs", "serving.md")).read().split())
    assert "such a request also fails every request the batcher merged with it" in docs
    assert '("Tensor concat operation failed")' in docs and '("Got empty tensor in batch of non-empty tensors")' in docs


def test_an_answer_that_stops_keeps_the_stop_token_in_its_ids_not_in_its_text(model, tmp_path):
    """A model whose every next token is <|endoftext|>: the answer is that one token (length 1), its text empty."""
    from tf_gpt2.tokenizer import EOT_ID

    stops = GPT2(model.config)
    stops.set_weights(model.get_weights())
    direction = np.random.RandomState(0).randn(model.config.n_embd).astype(np.float32)
    direction /= np.linalg.norm(direction)
    stops.ln_f.gamma.assign(np.zeros_like(direction))
    stops.ln_f.beta.assign(direction)  # every position's final hidden state is `direction`...
    table = np.asarray(stops.wte.embeddings).copy()
    table[EOT_ID] = 100 * direction  # ...whose largest logit is <|endoftext|>'s
    stops.wte.embeddings.assign(table)
    assert stops.generate("Hello", max_new_tokens=4) == "" and stops.generate([15496], max_new_tokens=4) == [EOT_ID]
    path = export_saved_model(stops, str(tmp_path / "stops"), max_new_tokens_limit=4)
    (answer,), = serve(path, [[grpc("generate_text", text=np.array([b"Hello"]), **settings(1, max_new_tokens=4))]],
                       tmp_path)
    answer = outputs(answer)
    assert answer["length"].tolist() == [1] and answer["token_ids"][0, 0] == EOT_ID and answer["text"][0] == b""


def test_a_request_of_more_rows_than_the_batch_limit_is_refused_as_docs_serving_says(served, tmp_path):
    """The shipped batching parameters take at most 32 rows a request (no large-batch splitting: see
    benchmarks/tf_serving.py); one more is refused with the server's message, which docs/serving.md gives. The refusal
    is the in-process server's, written from tensorflow/serving's shared_batch_scheduler.h: this keeps it, the shipped
    file and the docs in step; the real server's wording was read from its source, not run here."""
    shipped = os.path.join(os.path.dirname(served), "batching_parameters.txt")
    limit = int(open(shipped).read().split("max_batch_size { value: ")[1].split(" }")[0])
    rows = [[464, 3290]] * limit
    calls = [[grpc("serving_default", token_ids=np.array(rows + [[40, 0]] * n, np.int32),
                   length=np.array([2] * limit + [1] * n, np.int32))] for n in (0, 1)]
    at_limit, over = serve(served, calls, tmp_path, batching=shipped)
    assert outputs(at_limit[0])["error"].tolist() == [b""] * limit
    message = f"Task size {limit + 1} is larger than maximum input batch size {limit}"
    assert over == {"error": f"ValueError: {message}"}
    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "serving.md")).read()
    assert f"more than {limit} rows is refused" in docs and message.replace(str(limit + 1), "N") in docs
