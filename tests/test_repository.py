"""The repository's promises: README commands and CI agree, the quickstart runs, ruff is clean."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fresh_interpreter import run_code

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    ci_lines = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert len(ci_lines) == 1
    assert f"```bash\n{ci_lines[0]}\n```" in README


def python_blocks(path: Path) -> list[tuple[str, str]]:
    text = path.read_text()
    return [
        (f"{path.relative_to(ROOT)}#{i}", block)
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", text, re.S))
    ]


EXAMPLES = [
    example
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for example in python_blocks(path)
]


@pytest.mark.parametrize("block", [b for _, b in EXAMPLES], ids=[name for name, _ in EXAMPLES])
def test_documented_examples_run(block):
    # As in a fresh interpreter, as a user runs it: nothing imported by other tests helps.
    result = run_code(block)
    assert result.returncode == 0, result.stderr


def test_docs_build_without_warnings(tmp_path):
    """The docs site (mkdocs, mkdocstrings) builds in strict mode: any warning fails."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-5000:]
    for page in ("index.html", "api/index.html", "mappings/sparsehourglass/index.html"):
        assert (tmp_path / page).exists()
    assert "sparsegen_lin" in (tmp_path / "api" / "index.html").read_text()
    # formulas are MathML written at build time: they render offline, no script or CDN
    pages = [page.read_text() for page in tmp_path.rglob("*.html")]
    assert sum(page.count("<math ") for page in pages) > 50
    assert not any('class="arithmatex"' in page or "mathjax" in page.lower() for page in pages)


def test_quickstart_output_is_as_shown():
    block = re.search(r"## Quickstart\n\n```python\n(.*?)```", README, re.S).group(1)
    check = block + "\nassert info.support_size.tolist() == [2]\n"
    subprocess.run([sys.executable, "-c", check], check=True, capture_output=True)


def test_demo_command_prints_every_mapping():
    from sparsegen.cli import main
    from sparsegen.demo import DEMO_MAPPINGS

    assert main(["demo"]) == 0
    result = subprocess.run(
        [sys.executable, "-m", "sparsegen", "demo"], capture_output=True, text=True, check=True
    )
    for name in DEMO_MAPPINGS:
        assert name in result.stdout
    assert "support 2/4" in result.stdout


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
    reason="ruff not installed",
)
def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# The layers, bottom up; a module may import its own layer and those below, never above.
LAYERS = {
    "kernels": ["_kernels", "_loss_kernels", "_transform_kernels", "_layout_kernels",
                "_numba_cache", "_fork",
                "_triton_projection", "_triton_attention", "_triton_transform", "_triton_math",
                "_projection", "_ops",
                "_fused_attention", "_validation", "_extras"],
    "functional": ["functional", "jacobian", "losses", "attention", "metrics", "text",
                   "datasets"],
    "nn": ["nn", "__init__", "integrations"],
    "models": ["models", "linear_model"],
    "experiments": ["experiments", "benchmark", "plots", "properties", "demo"],
    "report": ["report"],
    "command": ["cli", "__main__"],
}  # fmt: skip


def _imports() -> dict[str, set[str]]:
    """Each sparsegen module's sparsegen imports, those inside functions included."""
    import ast

    src = ROOT / "src"
    modules = {}
    for path in (src / "sparsegen").rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{up}.{base}" if base else up
                for alias in node.names:  # `from package import module` imports the module
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    first = parts[1] if len(parts) > 1 else "__init__"
    layers = [i for i, names in enumerate(LAYERS.values()) if first in names]
    assert layers, f"{module} is in no layer: add it to LAYERS and README's layout"
    return layers[0]


def test_lower_layers_never_import_higher_ones():
    import graphlib

    graph = _imports()
    assert len(graph) > 30 and graph["sparsegen.cli"]  # the walk found the package
    upward = sorted(
        f"{module} ({list(LAYERS)[_layer(module)]}) imports {dep} ({list(LAYERS)[_layer(dep)]})"
        for module, deps in graph.items()
        for dep in deps
        if _layer(dep) > _layer(module)
    )
    assert not upward, "\n".join(upward)
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError on a circle of imports


# README's Layout: the two products. The library installs without the harness's extras,
# so no library module may import a harness one (lazily either).
HARNESS = {"datasets", "text", "models", "experiments", "benchmark", "plots", "properties",
           "demo", "report", "cli", "__main__"}  # fmt: skip


def test_the_library_never_imports_the_harness():
    def product(module: str) -> str:
        first = module.split(".")[1] if "." in module else "__init__"
        return "harness" if first in HARNESS else "library"

    graph = _imports()
    crossing = sorted(
        f"{module} imports {dep}"
        for module, deps in graph.items()
        for dep in deps
        if product(module) == "library" and product(dep) == "harness"
    )
    assert not crossing, "\n".join(crossing)
    assert {product(m) for m in graph} == {"library", "harness"}


# The compiled kernels are written as flat loops (numba and Triton inline nothing across a
# function boundary as cheaply as a loop body), so they are held to no length.
KERNEL_MODULES = {"_kernels", "_loss_kernels", "_transform_kernels", "_layout_kernels"}
LONGEST_FUNCTION = 60


def _is_triton_kernel(node) -> bool:
    import ast

    decorators = [d.func if isinstance(d, ast.Call) else d for d in node.decorator_list]
    return any(isinstance(d, ast.Attribute) and d.attr in ("jit", "autotune") for d in decorators)


def test_functions_are_short_enough_to_read_at_once():
    import ast

    long = []
    for path in (ROOT / "src" / "sparsegen").rglob("*.py"):
        if path.stem in KERNEL_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if ast.get_docstring(node) is not None:  # a docstring is read apart
                    lines -= node.body[0].end_lineno - node.body[0].lineno + 1
                if lines > LONGEST_FUNCTION and not _is_triton_kernel(node):
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long, "split into named steps: " + ", ".join(long)


def test_readme_quotes_the_committed_quick_translation_run():
    # the README's figures went stale once when the committed report was rerun
    quoted = re.search(
        r"sparsemax ([\d.]+)\s+vs ([\d.]+) BLEU on z/16, softmax ([\d.]+) vs ([\d.]+); "
        r"(\d+) min (\d+) s",
        README,
    )
    report = (ROOT / "docs" / "reproduction" / "report.md").read_text()
    section = report[report.index("#### FR→EN", report.index("Sparse attention in translation")) :]

    def bleu(setting):  # the first test set's column of the FR→EN table
        return float(
            re.search(rf"\n\| {re.escape(setting)} \| [^|]+ \| [^|]+ \| ([\d.]+) \|", section)[1]
        )

    settings = ("sparsemax", "sparsegen-lin", "softmax", "softmax (temperature)")
    assert [float(x) for x in quoted.groups()[:4]] == [round(bleu(s), 1) for s in settings]
    seconds = int(
        re.search(r"\| Sparse attention in translation \(quick run\) \| (\d+) \|", report)[1]
    )
    assert 60 * int(quoted[5]) + int(quoted[6]) == seconds


def test_no_output_is_built_from_a_docstring_that_python_OO_strips():
    # under -OO every __doc__ is None: a report or a parser built from one crashes
    readers = []
    for path in (ROOT / "src" / "sparsegen").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "__doc__." in line or "__doc__[" in line:
                readers.append(f"{path.relative_to(ROOT)}:{number}")
    assert not readers
    result = subprocess.run(
        [sys.executable, "-OO", "-c", "from sparsegen.benchmark import main; main(['--help'])"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_module_scoped_fixture_runs_on_one_worker():
    # pytest-xdist splits a module's tests between the workers, each of which would run
    # the fixture (a two-minute compile twice); conftest.py puts the modules marked
    # xdist_group first, in one piece, which keeps each on one worker
    ungrouped = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("test_*.py")
        if 'scope="module"' in (text := path.read_text()) and "xdist_group(" not in text
    ]
    assert not ungrouped
