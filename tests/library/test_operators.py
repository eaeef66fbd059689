"""The torch.library operators behind every mapping: torch's own operator checks (schema,
fake kernel, autograd registration, AOT dispatch), their outputs against the float64
reference, and clear errors for what they cannot take."""

import functools
import math

import pytest
import torch
from conftest import HAVE_TRITON
from reference import sparsemax_bisect

import sparsegen as sg
from sparsegen.jacobian import sparsemax_jacobian

project = torch.ops.sparsegen.project.default
project_backward = torch.ops.sparsegen.project_backward.default


def _z(requires_grad=False, positive=False, seed=0):
    z = torch.randn(3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    z = z.abs() + 0.1 if positive else z
    return z.requires_grad_(requires_grad)


CASES = {
    "plain": lambda g: (_z(g), None, "given", None, "compiled"),
    "scale": lambda g: (
        _z(g),
        torch.rand(3, 4, 1, dtype=torch.float64) + 0.5,
        "given",
        None,
        "sort",
    ),
    "broadcast scale": lambda g: (
        _z(g),
        torch.tensor([[[0.5]], [[2.0]], [[1.0]]], dtype=torch.float64, requires_grad=g),
        "given",
        None,
        "michelot",
    ),
    "hourglass": lambda g: (_z(g), None, "hourglass", 0.5, "compiled"),
    "cone": lambda g: (_z(g, positive=True), None, "cone", 0.5, "sort"),
    "per-slice q": lambda g: (
        _z(g, positive=True),
        torch.rand(3, 4, 1, dtype=torch.float64) + 0.5,
        "cone",
        None,
        "compiled",
    ),
}


def _along_dim_1(requires_grad, seed=0):
    """Scores along dim 1 of a contiguous (3, 4, 5): a dense view whose last dim is not
    the innermost, as the mappings pass ``dim=1``."""
    return _z(seed=seed).movedim(1, -1).requires_grad_(requires_grad)


for _algorithm in ("sort", "compiled", *(["triton"] if HAVE_TRITON else [])):
    CASES[f"along dim 1, {_algorithm}"] = functools.partial(
        lambda g, algorithm: (_along_dim_1(g), None, "given", None, algorithm),
        algorithm=_algorithm,
    )


@pytest.mark.parametrize("requires_grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("case", list(CASES))
def test_opcheck_project(case, requires_grad):
    result = torch.library.opcheck(project, CASES[case](requires_grad))
    assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("layout", ["contiguous", "along dim 1"])
@pytest.mark.parametrize("scaled", [False, True])
def test_opcheck_project_backward(scaled, layout):
    z = _z() if layout == "contiguous" else _along_dim_1(False)
    scale = torch.rand(*z.shape[:-1], 1, dtype=torch.float64, requires_grad=True) + 0.5
    scale = scale if scaled else None
    output, _, support, _ = project(z, None, "given", None, "compiled")
    grad = torch.randn(z.shape, dtype=z.dtype, requires_grad=True)
    result = torch.library.opcheck(project_backward, (output, support, grad, scale))
    assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("algorithm", ["sort", "michelot", "compiled"])
def test_operator_outputs_against_the_reference(algorithm):
    z = torch.randn(40, 30, dtype=torch.float64) * 3
    scale = torch.rand(40, 1, dtype=torch.float64) + 0.5
    output, tau, support, computed = project(z, scale, "given", None, algorithm)
    expected = torch.from_numpy(sparsemax_bisect((z * scale).numpy()))
    torch.testing.assert_close(output, expected, atol=1e-10, rtol=0)
    assert torch.equal(support, (output > 0).sum(-1)) and computed.numel() == 0
    torch.testing.assert_close(
        (z * scale - tau[:, None]).clamp(min=0).sum(-1), torch.ones(40).double()
    )
    output, _, _, alpha = project(z, None, "hourglass", 0.5, algorithm)
    expected_alpha = (1 + 30 * 0.5) / (z.sum(-1, keepdim=True).abs() + 30 * 0.5)
    torch.testing.assert_close(alpha, expected_alpha)
    expected = torch.from_numpy(sparsemax_bisect((z * expected_alpha).numpy()))
    torch.testing.assert_close(output, expected, atol=1e-10, rtol=0)


def test_backward_operator_is_the_vjp():
    z = torch.randn(6, 9, dtype=torch.float64)
    output, _, support, _ = project(z, None, "given", None, "compiled")
    grad = torch.randn_like(z)
    jacobian = sparsemax_jacobian(z)
    expected = (jacobian @ grad.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(project_backward(output, support, grad, None), expected)
    scale = torch.full((6, 1), 2.0, dtype=torch.float64)
    torch.testing.assert_close(project_backward(output, support, grad, scale), 2 * expected)


def test_empty_inputs_keep_their_shapes():
    output, tau, support, alpha = project(torch.empty(3, 0), None, "hourglass", 0.5, "compiled")
    assert output.shape == (3, 0) and tau.shape == (3,) and support.shape == (3,)
    assert alpha.shape == (3, 1)
    assert project(torch.empty(0, 4), None, "given", None, "sort")[0].shape == (0, 4)


def test_errors_name_the_operator_and_what_it_got():
    with pytest.raises(TypeError, match=r"sparsegen::project: z must be a floating-point.*int64"):
        project(torch.arange(6).reshape(2, 3), None, "given", None, "sort")
    with pytest.raises(ValueError, match="sparsegen::project: algorithm"):
        project(torch.randn(2, 3), None, "given", None, "auto")
    with pytest.raises(ValueError, match=r"sparsegen::project: algorithm 'compiled'.*bfloat16"):
        project(torch.randn(2, 3, dtype=torch.bfloat16), None, "given", None, "compiled")
    with pytest.raises(ValueError, match=r"sparsegen::project: scale_from must be one of"):
        project(torch.randn(2, 3), None, "cone_scale", 0.5, "sort")
    with pytest.raises(ValueError, match=r"scale_from='hourglass' takes q .*exactly one"):
        project(torch.randn(2, 3), None, "hourglass", None, "sort")
    with pytest.raises(TypeError, match=r"sparsegen::project_backward: grad .*int64"):
        project_backward(
            torch.rand(2, 3), torch.ones(2, dtype=torch.int64), torch.ones(2, 3).long(), None
        )


def test_half_precision_on_the_torch_kernel():
    # What another device would run on float16/bfloat16 scores: exact to their precision.
    z = torch.randn(5, 12)
    for dtype in (torch.float16, torch.bfloat16):
        output = project(z.to(dtype), None, "given", None, "sort")[0]
        assert output.dtype == dtype
        torch.testing.assert_close(output.float(), sg.sparsemax(z), atol=2e-2, rtol=0)


def test_special_rows_through_the_operator():
    z = torch.tensor([[1.0, math.nan, 0.0], [-math.inf] * 3, [math.inf, 0.0, math.inf]])
    for algorithm in ("sort", "michelot", "compiled"):
        output, _, support, _ = project(z, None, "given", None, algorithm)
        assert torch.isnan(output[0]).all()
        assert torch.equal(output[1:], torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.5]]))
        assert support.tolist() == [0, 0, 2]
