"""The wheel a user installs: licence, typing marker, shipped data, metadata, core and extras."""

from __future__ import annotations

import ast
import email
import re
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

import sparsegen
from sparsegen._extras import OPTIONAL as OPTIONAL_LIBRARIES

# one worker runs this module, so that its fixture runs once, not once on each
pytestmark = pytest.mark.xdist_group("packaging")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
         "-w", str(out), "-q"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = out.glob("sparsegen-*.whl")
    return zipfile.ZipFile(path)


def test_the_sdist_ships_the_package_and_its_data_but_no_test_it_cannot_run(tmp_path):
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with tarfile.open(tmp_path / result.stdout.split()[-1]) as sdist:
        names = [name.split("/", 1)[1] for name in sdist.getnames() if "/" in name]
    assert "src/sparsegen/functional.py" in names
    assert "src/sparsegen/data/multilabel/scene/scene-train.arff.gz" in names
    assert not [name for name in names if name.startswith("tests/")]


def _metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    return email.message_from_bytes(wheel.read(name))


def test_the_wheel_carries_the_licence_the_typing_marker_and_the_data_notes(wheel):
    names = wheel.namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "sparsegen/py.typed" in names
    for readme in (
        "data/text/README.md",
        "data/text/snli/README.md",
        "data/text/multi30k-fr-en/README.md",
        "data/multilabel/SHA256SUMS",
        "data/multilabel/README.md",
    ):
        assert f"sparsegen/{readme}" in names, readme  # fmt: skip
    assert "sparsegen/data/text/multi30k-fr-en/train.fr.gz" in names


def test_the_metadata_says_licence_version_and_classifiers(wheel):
    metadata = _metadata(wheel)
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Version"] == sparsegen.__version__  # one source for the version
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    # The project has no public address yet: the metadata and the docs site invent none.
    assert metadata.get_all("Project-URL") is None
    assert "repo_url" not in (ROOT / "mkdocs.yml").read_text()
    assert (ROOT / "CHANGELOG.md").is_file()
    citation = (ROOT / "CITATION.cff").read_text()
    assert f"\nversion: {sparsegen.__version__}\n" in citation  # the citation's version agrees


# Each third-party library the package imports -> where pyproject.toml declares it: the
# core, or every extra whose parts import it.
CORE = "core"
DECLARED = {
    "numpy": {CORE},
    "torch": {CORE},
    "numba": {CORE},
    "scipy": {"sklearn", "experiments"},
    "sklearn": {"sklearn", "experiments"},
    "arff": {"experiments"},
    "matplotlib": {"experiments"},
    "tqdm": {"experiments"},
    "joblib": {"experiments"},
    "sentencepiece": {"experiments"},
    "sacrebleu": {"experiments"},
    "rouge_score": {"rouge"},
    "triton": {"triton"},
    "transformers": {"transformers"},
    "entmax": {"test"},  # the benchmark's optional comparison
}
DISTRIBUTIONS = {"sklearn": "scikit-learn", "arff": "liac-arff", "rouge_score": "rouge-score"}
OPTIONAL = [module for module, where in DECLARED.items() if CORE not in where]


def _requirements(wheel: zipfile.ZipFile) -> dict[str, set[str]]:
    """``Requires-Dist`` by extra (``"core"`` for the unconditional ones): distribution names,
    ``sparsegen[a,b]`` kept whole."""
    found: dict[str, set[str]] = {}
    for line in _metadata(wheel).get_all("Requires-Dist"):
        requirement, _, marker = line.partition(";")
        extra = re.search(r"""extra\s*==\s*["']([\w-]+)["']""", marker)
        name = re.split(r"[<>=!~ (]", requirement.strip())[0]
        found.setdefault(extra.group(1) if extra else CORE, set()).add(name)
    return found


def test_the_core_needs_only_torch_numpy_and_numba(wheel):
    assert _requirements(wheel)[CORE] == {"torch", "numpy", "numba"}


def test_the_extras_bring_what_their_parts_need(wheel):
    extras = _requirements(wheel)
    assert extras["sklearn"] == {"scikit-learn", "scipy"}
    assert extras["experiments"] == {
        "scikit-learn", "scipy", "liac-arff", "matplotlib", "tqdm", "joblib", "sentencepiece",
        "sacrebleu", "psutil",
    }  # fmt: skip
    assert extras["rouge"] == {"rouge-score"}
    assert {"mkdocs", "mkdocs-material", "mkdocstrings[python]"} <= extras["docs"]
    (itself,) = [name for name in extras["test"] if name.startswith("sparsegen[")]
    used = {"experiments", "docs", "rouge", "triton", "transformers"}
    assert set(itself[10:-1].split(",")) == used  # the suite uses every extra
    assert extras["triton"] == {"triton"}
    assert extras["transformers"] == {"transformers"}
    assert {"pytest", "entmax"} <= extras["test"]


@pytest.mark.parametrize("module", DECLARED)
def test_every_imported_library_is_a_declared_dependency(wheel, module):
    extras = _requirements(wheel)
    distribution = DISTRIBUTIONS.get(module, module)
    for where in DECLARED[module]:
        assert distribution in extras[where], f"{distribution} is not in {where}"
    if CORE not in DECLARED[module]:
        assert distribution not in extras[CORE], f"{distribution} belongs in an extra"
    used = any(
        f"import {module}" in p.read_text() or f"from {module}" in p.read_text()
        for p in (ROOT / "src" / "sparsegen").rglob("*.py")
    )
    assert used, f"{module} is declared but not imported: drop it"


def test_every_library_the_package_imports_is_in_the_table():
    imported = set()
    for path in (ROOT / "src" / "sparsegen").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                imported.add(node.module.partition(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"sparsegen"}
    assert third_party == set(DECLARED)
    # the helper turns exactly the extras' libraries into a one-line error
    assert set(OPTIONAL_LIBRARIES) == set(OPTIONAL) - {"entmax"}
    assert all(OPTIONAL_LIBRARIES[m] == DISTRIBUTIONS.get(m, m) for m in OPTIONAL_LIBRARIES)


def _run_without(missing: list[str], code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter where importing any of ``missing`` fails, as it does
    when the library is not installed."""
    block = f"import sys\nsys.modules.update(dict.fromkeys({missing!r}))\n"
    return subprocess.run(
        [sys.executable, "-c", block + code], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_the_core_works_without_any_extra():
    code = """
import numpy as np
import torch
import sparsegen as sg
import sparsegen.attention, sparsegen.jacobian, sparsegen.losses

z = torch.randn(3, 5, requires_grad=True)
assert torch.allclose(sg.sparsemax(z).sum(-1), torch.ones(3))
sg.nn.SparsemaxLoss()(z, torch.tensor([0, 1, 2])).backward()
q = torch.randn(2, 4, 8)
assert sparsegen.attention.scaled_dot_product_attention(q, q, q).shape == (2, 4, 8)
value, grad = sparsegen.losses.loss_and_gradient(
    sparsegen.losses.sparsegen_lin_hinge_loss, np.random.randn(4, 3), np.eye(3)[[0, 1, 2, 0]]
)
assert grad.shape == (4, 3)
"""
    result = _run_without(OPTIONAL, code)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_datasets_import_without_liac_arff_and_reading_arff_names_the_extra():
    code = """
import sparsegen.datasets
try:
    sparsegen.datasets.load_mulan("emotions")
except ImportError as error:
    print(error)
    assert isinstance(error.__cause__, ModuleNotFoundError)
"""
    result = _run_without(["arff"], code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == (
        "sparsegen.datasets.load_arff needs liac-arff: pip install 'sparsegen[experiments]'\n"
    )


def _needs(module: str, library: str, extra: str) -> str:
    return f"{module} needs {library}: pip install 'sparsegen[{extra}]'"


@pytest.mark.parametrize(
    ("module", "missing", "message"),
    [
        ("sparsegen.linear_model", ["sklearn"],
         _needs("sparsegen.linear_model", "scikit-learn", "sklearn")),
        # scipy's import comes first
        ("sparsegen.linear_model", OPTIONAL, _needs("sparsegen.linear_model", "scipy", "sklearn")),
        ("sparsegen.datasets", OPTIONAL, _needs("sparsegen.datasets", "scipy", "experiments")),
        ("sparsegen.models", OPTIONAL, _needs("sparsegen.models.training", "tqdm", "experiments")),
        ("sparsegen.experiments.multilabel", OPTIONAL,
         _needs("sparsegen.experiments.multilabel", "scipy", "experiments")),
    ],
)  # fmt: skip
def test_a_missing_extra_is_a_one_line_error_naming_it(module, missing, message):
    code = f"""
try:
    import {module}
except ImportError as error:
    print(error)
    assert isinstance(error.__cause__, ModuleNotFoundError)  # the original, chained
"""
    result = _run_without(missing, code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == message + "\n"


def test_the_command_without_the_experiments_extra_says_so_in_one_line(tmp_path):
    commands = ["multilabel", "attention", "translate", "nli", "bench", "plot", "reproduce"]
    code = f"""
from sparsegen.cli import main
assert main(["demo"]) == 0  # the core's command
for command in {commands!r}:
    assert main([command, "--out", "out"]) == 2, command
"""
    result = _run_without(OPTIONAL, code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == len(commands), result.stderr  # one line each, no traceback
    assert all(
        line.startswith("sparsegen: ") and line.endswith("pip install 'sparsegen[experiments]'")
        for line in lines
    ), result.stderr


@pytest.mark.parametrize(
    ("call", "missing", "message"),
    [
        ("from sparsegen.text import SubwordTokenizer\nSubwordTokenizer.train(['a b'])",
         ["sentencepiece"],
         _needs("sparsegen.text.SubwordTokenizer", "sentencepiece", "experiments")),
        ("from sparsegen.experiments.tables import pyplot\npyplot()", ["matplotlib"],
         _needs("sparsegen's figures", "matplotlib", "experiments")),
    ],
)  # fmt: skip
def test_a_library_call_that_needs_an_extra_names_it_in_one_line(call, missing, message):
    code = f"""
try:
{textwrap.indent(call, "    ")}
except ImportError as error:
    print(error)
"""
    result = _run_without(missing, code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == message + "\n"
