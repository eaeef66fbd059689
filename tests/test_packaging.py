"""The wheel a user installs: licence, typing marker, shipped data, metadata, dependencies."""

from __future__ import annotations

import email
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sparsegen

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


@pytest.mark.parametrize(
    "module", ["numpy", "scipy", "torch", "numba", "sklearn", "arff", "matplotlib", "tqdm",
               "joblib", "sentencepiece", "sacrebleu"],
)  # fmt: skip
def test_every_imported_library_is_a_declared_dependency(wheel, module):
    distributions = {"sklearn": "scikit-learn", "arff": "liac-arff"}
    required = [r.split(">")[0].split("=")[0].split(";")[0].strip()
                for r in _metadata(wheel).get_all("Requires-Dist")]  # fmt: skip
    assert distributions.get(module, module) in required
    used = any(
        f"import {module}" in p.read_text() or f"from {module}" in p.read_text()
        for p in (ROOT / "src" / "sparsegen").rglob("*.py")
    )
    assert used, f"{module} is declared but not imported: drop it"
