"""What a type checker sees of the public API (the package ships ``py.typed``): ordinary
calls type-check, and misuse of what they return is caught. mypy runs on two snippets."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("mypy")

# one worker runs this module, so that its fixture runs once, not once on each
pytestmark = pytest.mark.xdist_group("typing")

ORDINARY = """
import numpy as np
import torch

import sparsegen as sg
from sparsegen.attention import scaled_dot_product_attention
from sparsegen.losses import sparsemax_loss

x = torch.randn(3, 4)
total: torch.Tensor = sg.sparsemax(x).sum()
tau: torch.Tensor = sg.sparsemax(x, return_info=True).threshold
array: np.ndarray = sg.sparsegen_lin(np.array([1.0, 2.0]), lam=np.array([0.5]))
support = sg.sparsehourglass(x, q=[[1.0]] * 3, return_info=True).support_size
dense: torch.Tensor = sg.softmax(x, 0, torch.float64) + sg.hardmax(x) + sg.sparsecone(x)
exp: torch.Tensor = sg.sparsegen(x, torch.exp, lam=0.5) + sg.sum_normalization_pp(x)
module = sg.nn.SparsegenLin(lam=[[0.1], [0.2], [0.3]], dim=-1)
loss = sg.nn.SparsegenLinHingeLoss(lam=np.array([[0.5]]))
out: torch.Tensor = scaled_dot_product_attention(x[None], x[None], x[None]).mean()
weights = scaled_dot_product_attention(x[None], x[None], x[None], need_weights=True).weights
value: torch.Tensor = sparsemax_loss(x, torch.tensor([0, 1, 2]))
flag = bool(x.sum() > 0)  # known only at run time: either type
either = sg.sparsemax(x, return_info=flag)
weights_or_not = scaled_dot_product_attention(x[None], x[None], x[None], need_weights=flag)
name: str = sg.sparsemax.__name__ + sg.sparsegen_lin.__qualname__
per_head = sg.nn.MultiheadAttention(8, 2, mapping=sg.nn.SparsegenLin, lam=np.float32(0.5))
from sparsegen.jacobian import sparsehourglass_jacobian
hourglass_jacobian: torch.Tensor = sparsehourglass_jacobian(x, q=torch.tensor(0.5))
from sparsegen.linear_model import LinearMultilabelClassifier
from sparsegen.metrics import jensen_shannon_divergence, micro_f1
classifier = LinearMultilabelClassifier().fit(np.eye(4), [[0, 1]] * 4)
f1: float = micro_f1([[0, 1]], classifier.predict([[1.0, 0.0, 0.0, 0.0]]))
js: float = jensen_shannon_divergence(np.eye(2), [[0.5, 0.5], [0.5, 0.5]])
"""

# each line's error, as mypy words it
MISUSED = {
    "sg.sparsemax(x, return_info=True).sum()": '"ProjectionResult" has no attribute "sum"',
    "sg.sparsegen_lin(x, lam=0.5).threshold": '"Tensor" has no attribute "threshold"',
    "sg.sparsemax(x, 0, None)": "No overload variant",  # (mask is keyword-only)
    "scaled_dot_product_attention(x, x, x).weights": '"Tensor" has no attribute "weights"',
}


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory):
    folder = tmp_path_factory.mktemp("typing")
    (folder / "ordinary.py").write_text(textwrap.dedent(ORDINARY))
    misused = "\n".join(
        ["import torch", "import sparsegen as sg",
         "from sparsegen.attention import scaled_dot_product_attention", "x = torch.randn(3, 4)",
         *MISUSED]
    )  # fmt: skip
    (folder / "misused.py").write_text(misused + "\n")
    command = [sys.executable, "-m", "mypy", "--python-executable", sys.executable,
               "--cache-dir", str(folder / "cache"), "--no-error-summary", "--show-error-codes",
               "ordinary.py", "misused.py"]  # fmt: skip
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)
    assert result.returncode in (0, 1), result.stderr  # (1: errors found, 2: mypy failed)
    return result.stdout


def test_ordinary_calls_type_check(mypy_output):
    # every mapping returned Tensor | ProjectionResult (so x.sum() was an error), and the
    # hints refused the NumPy arrays and lists that the functions take
    assert not [line for line in mypy_output.splitlines() if line.startswith("ordinary.py")]


def test_misuse_of_what_they_return_is_caught(mypy_output):
    errors = [line for line in mypy_output.splitlines() if line.startswith("misused.py")]
    for number, (line, message) in enumerate(MISUSED.items(), start=5):
        found = [e for e in errors if re.match(rf"misused\.py:{number}: error", e)]
        assert found and message in found[0], (line, errors)
