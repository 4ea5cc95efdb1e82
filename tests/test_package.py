"""The package's shape: modules import each other without cycles, and the product needs no peer code."""

import ast
import os
import subprocess
import sys

import tf_gpt2

PACKAGE = os.path.dirname(tf_gpt2.__file__)


def _imports_of(path):
    """The tf_gpt2 modules a file imports, anywhere in it (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tf_gpt2"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if node.module == "tf_gpt2")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tf_gpt2"))
    return found


def test_no_module_of_the_package_imports_itself_through_another():
    modules = {f"tf_gpt2.{name[:-3]}" for name in os.listdir(PACKAGE) if name.endswith(".py") and name != "__init__.py"}
    graph = {m: _imports_of(os.path.join(PACKAGE, m.split(".")[1] + ".py")) & modules for m in modules}

    def cycle_from(start, node, path):
        for nxt in graph[node]:
            if nxt == start:
                return path + [nxt]
            if nxt not in path:
                found = cycle_from(start, nxt, path + [nxt])
                if found:
                    return found
        return None

    cycles = [cycle_from(m, m, [m]) for m in sorted(modules)]
    assert not any(cycles), " -> ".join(next(c for c in cycles if c))


def test_the_product_imports_no_torch_and_no_benchmark_code():
    script = (
        "import sys, numpy as np\n"
        "from tf_gpt2 import GPT2, GPT2Config\n"
        "import tf_gpt2.cli, tf_gpt2.training, tf_gpt2.export, tf_gpt2.evaluation, tf_gpt2.checkpoints\n"
        "model = GPT2(GPT2Config.from_preset('gpt2-tiny', vocab_size=50))\n"
        "model(np.array([[1, 2, 3]]))\n"
        "model.generate([1, 2], max_new_tokens=2)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "      ('torch', 'transformers', 'harness', 'bench', 'torch_nanogpt', 'benchmarks', 'ctranslate2')))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_tests_cannot_reach_the_network(tmp_path, monkeypatch):
    """The README's "none reaches the network": a socket connects to this machine only, in the test process and in
    the Python processes tests start, and each refusal is written down (it fails the session: a caller that catches
    the error cannot hide it). 192.0.2.1 is TEST-NET-1, an address for documentation: unguarded, it fails otherwise,
    or times out."""
    import errno
    import socket

    import pytest

    record = tmp_path / "refused"  # this test's own (the session's would fail the session)
    monkeypatch.setenv("TF_GPT2_REFUSED_CONNECTIONS", str(record))
    with pytest.raises(ConnectionRefusedError, match="tests never reach the network"):
        socket.create_connection(("192.0.2.1", 80), timeout=2)
    with socket.socket() as s:
        assert s.connect_ex(("192.0.2.1", 80)) == errno.ECONNREFUSED  # (an error number, as connect_ex returns)
    child = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 80), 2)"],
                           capture_output=True, text=True)
    assert "tests never reach the network: a connection to ('192.0.2.1', 80)" in child.stderr
    refused = record.read_text().splitlines()
    assert len(refused) == 3 and all(line.endswith(": ('192.0.2.1', 80)") for line in refused), refused
    assert refused[0].startswith("tests/test_package.py::test_tests_cannot_reach_the_network")
    # A name is not even looked up (a DNS query leaves the machine; offline, the lookup's own error hid the attempt).
    with pytest.raises(socket.gaierror, match="tests never reach the network: a lookup of 'example.com' was refused"):
        socket.create_connection(("example.com", 80), timeout=2)
    assert record.read_text().splitlines()[3].endswith(": ('example.com', 80)")
    with pytest.raises(socket.gaierror, match="a lookup of 'example.org' was refused"):  # (as asyncio hands it)
        socket.getaddrinfo(b"example.org", 443)
    assert record.read_text().splitlines()[4].endswith(": ('example.org', 443)")
    with socket.socket() as server:  # this machine stays reachable (the local Hub, the distributed tests)
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(60)
        for host in ("127.0.0.1", "localhost"):
            socket.create_connection((host, server.getsockname()[1]), timeout=2).close()
            server.accept()[0].close()
    assert len(record.read_text().splitlines()) == 5
