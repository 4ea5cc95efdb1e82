"""The examples in the package's docstrings run and show what they say; the docs site builds and its pages are
current."""

import doctest
import importlib
import os
import pkgutil
import sys

import pytest

import tf_gpt2

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODULES = sorted(m.name for m in pkgutil.iter_modules(tf_gpt2.__path__, "tf_gpt2."))


# Modules without a runnable example, and why; every other module must run at least one.
WITHOUT_EXAMPLES = {
    "tf_gpt2.distribute": "patches for a multi-worker cluster: tests/test_distributed.py runs two workers",
    "tf_gpt2.export": "writes a SavedModel (seconds): tests/test_tf_serving.py serves it",
    "tf_gpt2.formats": "two constants",
    "tf_gpt2.litert": "converts to LiteRT (seconds): its examples are shown, tests/test_litert.py runs them",
    "tf_gpt2.training": "trains a model: tests/test_training.py",
}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
    assert (result.attempted == 0) == (name in WITHOUT_EXAMPLES), (name, result.attempted)


def test_ci_runs_the_test_command_the_readme_gives():
    import re

    root = ROOT
    readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    section = readme[readme.index("Run the tests"):]
    command = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()
    assert "pytest" in command
    ci = [line.strip() for line in open(os.path.join(root, ".ci", "run"), encoding="utf-8")]
    assert command in ci  # the same line, verbatim


def test_the_docs_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page left out of the navigation, or an API object the
    reference names that no longer exists (or whose docstring names parameters it does not have) fails it."""
    import subprocess
    import sys

    pytest.importorskip("mkdocstrings")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8").count("GPT2Config") > 3


def test_the_cli_page_is_the_commands_own_help():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from write_cli_docs import PAGE, markdown

    with open(PAGE, encoding="utf-8") as f:
        assert f.read() == markdown(), "docs/cli.md is out of date: run python scripts/write_cli_docs.py"


def test_the_architecture_file_table_names_each_module_of_the_package_once():
    """docs/architecture.md's table of files: every module of tf_gpt2/ in it once, and nothing that does not exist.
    A bare name in a row (`training.py` after `tf_gpt2/data.py`) is in tf_gpt2/ unless it is a file of the root."""
    import glob
    import re

    with open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8") as f:
        first_cells = [line.split("|")[1] for line in f if line.startswith("| `")]
    named = [name if "/" in name or os.path.exists(os.path.join(ROOT, name)) else f"tf_gpt2/{name}"
             for cell in first_cells for name in re.findall(r"`([^`]+\.py)`", cell)]
    modules = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tf_gpt2", "*.py")))
    assert len(named) == len(set(named)), named
    assert sorted(n for n in named if n.startswith("tf_gpt2/")) == modules
    assert all(os.path.exists(os.path.join(ROOT, n)) for n in named), named


def test_the_readme_is_short_and_its_links_lead_somewhere():
    import re

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert readme.count("\n") <= 250
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert any(t.startswith("docs/") for t in targets)
    assert not [t for t in targets if not t.startswith("http") and not os.path.exists(os.path.join(ROOT, t))]


def test_the_cpu_benchmark_tables_are_their_result_files():
    """docs/benchmarks.md's training and decode tables, the Intel host's then the AMD host's: each row's two tokens/s
    figures and ratios are those of the two runs it cites (benchmarks/results/bench-2026-12-06-*.json), rounded as
    shown, in the order bench.py ran."""
    import json
    import re

    page = open(os.path.join(ROOT, "docs", "benchmarks.md"), encoding="utf-8").read()
    tables = [block for block in re.split(r"\n\n", page) if block.startswith("| system | tokens/s |")]
    assert len(tables) == 4
    for host, (train, decode) in (("", tables[:2]), ("amd-", tables[2:])):
        name = f"bench-2026-12-06-{host}" + "{}.json"
        assert name.format(1) in page
        runs = [json.load(open(os.path.join(ROOT, "benchmarks", "results", name.format(i)))) for i in (1, 2)]
        assert ("AMD EPYC" in runs[0]["machine"]) == (host == "amd-")
        _check_bench_tables(runs, train, decode)


def _check_bench_tables(runs, *tables):
    def shown(value):  # as the page writes a rate: thousands whole, tens with one decimal
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"

    for part, table in zip(("train", "decode"), tables):
        rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
        assert len(rows) == len(runs[0][part])
        for row, system in zip(rows, runs[0][part]):
            values = [run[part][system] for run in runs]
            assert row[1] == " / ".join(shown(v) for v in values), (system, row)
            ratios = [f"{run[part][system] / run[part]['hf']:.2f}x" for run in runs]
            assert row[2].strip("*") == ("1.00x" if system == "hf" else " / ".join(ratios)), (system, row, ratios)
            if part == "train":  # GFLOP/s and the share of the measured matmul roof
                flops = [run["train"][system] * run["train_flops_per_token"] for run in runs]
                assert row[3] == " / ".join(f"{f / 1e9:.0f}" for f in flops), (system, row)
                assert row[4] == " / ".join(f"{f / run['matmul_roof_flops']:.0%}" for f, run in zip(flops, runs))
