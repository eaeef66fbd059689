"""Explicit Jacobians where the naive chain rule overflows: against torch.func.jacrev of the
mapping and central differences (tests/library/test_gradients.py has the ordinary inputs)."""

import math

import pytest
import torch
from torch.func import jacrev

import sparsegen as sg
from sparsegen.jacobian import sparsegen_jacobian, sparsehourglass_jacobian, sparsemax_jacobian

inf = math.inf


def central_differences(f, z, relative_step=1e-6):
    """``∂f_i/∂z_j`` by central differences, each step relative to its ``|z_j|``."""
    columns = []
    for j in range(z.shape[-1]):
        step = relative_step * abs(z[j].item())
        e = torch.zeros_like(z)
        e[j] = step
        columns.append((f(z + e) - f(z - e)) / (2 * step))
    return torch.stack(columns, -1)


@pytest.mark.parametrize(
    ("g", "mapping", "z"),
    [
        (torch.square, sg.sparsegen_sq, [3e19, 2.9e19, 1.0]),  # z² overflows float32
        (torch.exp, sg.sparsegen_exp, [100.0, 99.5, 0.0]),  # exp overflows above 88.7
        (torch.exp, sg.sparsegen_exp, [100.0, 1.0, 0.5]),
    ],
    ids=["sq", "exp", "exp-one-overflow"],
)
def test_sparsegen_jacobian_where_g_overflows_is_the_mappings(g, mapping, z):
    # The entries whose g overflowed tied at inf (a wrong support) and met an infinite slope:
    # a finite wrong matrix, or inf/NaN, where the mapping is locally constant.
    z = torch.tensor([z, [0.3, -0.2, 0.1]])  # and an ordinary row beside it
    ours = sparsegen_jacobian(z, g, lam=0.2)
    for row in range(2):
        expected = jacrev(lambda v: mapping(v, lam=0.2))(z[row])
        assert torch.isfinite(ours[row]).all()
        torch.testing.assert_close(ours[row], expected)
    assert torch.equal(ours[0], torch.zeros(3, 3))


def test_the_jacobians_refuse_a_per_row_parameter_by_name():
    z = torch.randn(2, 3)
    with pytest.raises(TypeError, match="sparsegen_jacobian: lam must be a number"):
        sparsegen_jacobian(z, torch.exp, lam=torch.tensor([[0.2], [0.3]]))
    with pytest.raises(TypeError, match="sparsehourglass_jacobian: q must be a number"):
        sparsehourglass_jacobian(z, q=torch.tensor([[0.2], [0.3]]))
    torch.testing.assert_close(  # one value in a tensor is one λ
        sparsegen_jacobian(z, torch.exp, lam=torch.tensor(0.2)),
        sparsegen_jacobian(z, torch.exp, lam=0.2),
    )
    torch.testing.assert_close(
        sparsehourglass_jacobian(z, q=torch.tensor(0.2)), sparsehourglass_jacobian(z, q=0.2)
    )


def test_the_jacobians_refuse_a_dim_that_is_no_int_by_name():
    z = torch.randn(2, 3)
    calls = {
        "sparsemax_jacobian": lambda dim: sparsemax_jacobian(z, dim=dim),
        "sparsegen_jacobian": lambda dim: sparsegen_jacobian(z, torch.exp, dim=dim),
        "sparsehourglass_jacobian": lambda dim: sparsehourglass_jacobian(z, dim=dim),
    }
    for name, call in calls.items():
        for dim in (None, 1.0, True):
            with pytest.raises(TypeError, match=rf"{name}: dim must be an int"):
                call(dim)
        torch.testing.assert_close(call(torch.tensor(0)), call(0))  # (0-d integer: an index)


def hourglass(q):
    return lambda v: sg.sparsehourglass(v, q=q)


def test_sparsehourglass_jacobian_at_tiny_sums():
    # d α̂/dΣz = −(1 + Kq)/(|Σz| + Kq)² overflowed where the square underflowed: inf − inf,
    # NaN, where the mapping is exact and its Jacobian finite.
    z = torch.tensor([1e-170, 3e-170, 2e-170], dtype=torch.float64)
    for q in (0.0, 1e-200):  # (at q = 1e-200 the mapping's own backward overflows α̂²)
        ours = sparsehourglass_jacobian(z, q=q)
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, central_differences(hourglass(q), z), rtol=1e-6, atol=0)
    small = torch.tensor([1e-20, 3e-20, 2e-20])  # float32: the square underflows too
    for v in (z, small):
        ours = sparsehourglass_jacobian(v, q=0.0)
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, jacrev(hourglass(0.0))(v))


@pytest.mark.parametrize(
    "z",
    [[1.0, 2.0, -inf], [1.0, 5.0, -inf, 0.3], [-inf, 1.0, -inf], [-inf, -inf, -inf]],
    ids=str,
)
@pytest.mark.parametrize("q", [0.5, 0.0])
def test_sparsehourglass_jacobian_at_minus_inf_scores_is_the_mappings(z, q):
    # Compared with jacrev of the mapping, whatever the mapping makes of a -inf score (its
    # scale's K and Σz): the explicit Jacobian was NaN everywhere where the mapping is finite.
    z = torch.tensor(z, dtype=torch.float64)
    ours = sparsehourglass_jacobian(z, q=q)
    assert torch.isfinite(sg.sparsehourglass(z, q=q)).all()
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, jacrev(hourglass(q))(z))


def test_jacobians_keep_the_input_s_dtype():
    # as the mappings and jacrev do: half input gave float32 matrices
    x = torch.tensor([[1.0, 0.5, -0.3]], dtype=torch.float64)
    jacobians = (
        sparsemax_jacobian,
        lambda z: sparsegen_jacobian(z, torch.exp, lam=0.2),
        lambda z: sparsehourglass_jacobian(z, q=0.5),
        lambda z: sparsehourglass_jacobian(z, q=math.inf),
    )
    for jacobian in jacobians:
        expected = jacobian(x)
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            got = jacobian(x.to(dtype))
            assert got.dtype == dtype
            torch.testing.assert_close(got.double(), expected, atol=1e-2, rtol=1e-2)


def test_jacobians_of_slices_the_mapping_holds_at_its_limit_are_zero():
    # +inf scores share the mass (and +inf beside -inf gives one of them all of it): the
    # output is finite and locally constant, and the Jacobian was all NaN (inf/inf)
    inf = math.inf
    for row in ([inf, inf, 0.3, -1.0], [inf, -inf, 0.3, -1.0]):
        z = torch.tensor([row], dtype=torch.float64)
        assert torch.isfinite(sg.sparsehourglass(z, q=0.5)).all()
        assert torch.equal(sparsehourglass_jacobian(z, q=0.5), torch.zeros(1, 4, 4, dtype=z.dtype))
    # a constant g (no autograd history) has g' = 0: autograd.grad raised
    z = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    jacobian = sparsegen_jacobian(z, torch.zeros_like, lam=0.2)
    assert torch.equal(jacobian, torch.zeros(3, 3, dtype=z.dtype))
