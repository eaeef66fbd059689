"""Laha et al.'s Table 1, tested as mathematics: each ✓ on random inputs, a counterexample per ✗.

Where the extracted table and the math disagree, these tests follow the math
(see the README's "Properties" section): softmax is not idempotent;
sparsegen-lin is idempotent only at λ = 0; sparsecone is translation and
scale invariant only in the limits q → ∞ and q = 0 (like sparsehourglass, ✓*).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import sparsegen as sg
from sparsegen.jacobian import sparsehourglass_jacobian

K = 5


def vectors(k=K, low=-5.0, high=5.0):
    return arrays(np.float64, (k,), elements=st.floats(low, high, allow_subnormal=False))


def simplex_points():
    return (
        arrays(np.float64, (K,), elements=st.floats(0, 1))
        .filter(lambda p: p.sum() > 0.1)
        .map(lambda p: p / p.sum())
    )


def t(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


MAPPINGS = {
    "softmax": sg.softmax,
    "sparsemax": sg.sparsemax,
    "sparsegen_lin(0.5)": lambda x: sg.sparsegen_lin(x, lam=0.5),
    "sparsegen_lin(-1)": lambda x: sg.sparsegen_lin(x, lam=-1.0),
    "sparsegen_exp(0.3)": lambda x: sg.sparsegen_exp(x, lam=0.3),
    "sparsegen_sq(0.3)": lambda x: sg.sparsegen_sq(x, lam=0.3),
    "sparsecone(2)": lambda x: sg.sparsecone(x, q=2.0),
    "sparsehourglass(0.5)": lambda x: sg.sparsehourglass(x, q=0.5),
    "sum_normalization_pp": sg.sum_normalization_pp,
    "spherical_softmax": sg.spherical_softmax,
    "hardmax": sg.hardmax,
}


# ---- invariants of every mapping ----


@pytest.mark.parametrize("name", list(MAPPINGS))
@given(z=vectors(), perm=st.permutations(range(K)))
def test_output_on_simplex_and_permutation_equivariant(name, z, perm):
    f = MAPPINGS[name]
    assume(name != "sparsecone(2)" or z.sum() + K * 2.0 > 0)
    assume(name not in {"spherical_softmax", "sum_normalization_pp"} or abs(z.sum()) > 1e-3)
    assume(name != "spherical_softmax" or np.abs(z).max() > 1e-3)
    p = f(t(z)).numpy()
    assert (p >= 0).all() and abs(p.sum() - 1) < 1e-9
    np.testing.assert_allclose(f(t(z[list(perm)])).numpy(), p[list(perm)], atol=1e-9)


# ---- idempotence: ρ(p) = p on the simplex ----

IDEMPOTENT = ["sparsemax", "sparsecone(2)", "sparsehourglass(0.5)", "sum_normalization_pp"]


@pytest.mark.parametrize("name", IDEMPOTENT)
@given(p=simplex_points())
def test_idempotent(name, p):
    np.testing.assert_allclose(MAPPINGS[name](t(p)).numpy(), p, atol=1e-12)


@given(p=simplex_points())
def test_sum_normalization_idempotent(p):
    np.testing.assert_allclose(sg.sum_normalization(t(p)).numpy(), p, atol=1e-12)


@pytest.mark.parametrize(
    "name",
    [
        "softmax",
        "sparsegen_lin(0.5)",
        "sparsegen_lin(-1)",
        "sparsegen_exp(0.3)",
        "sparsegen_sq(0.3)",
        "spherical_softmax",
    ],
)
def test_not_idempotent(name):
    p = t([0.6, 0.3, 0.1, 0.0, 0.0])
    assert not torch.allclose(MAPPINGS[name](p), p, atol=1e-3)


# ---- monotonicity: z_i >= z_j implies ρ_i >= ρ_j ----

MONOTONIC = [
    "softmax",
    "sparsemax",
    "sparsegen_lin(0.5)",
    "sparsegen_lin(-1)",
    "sparsegen_exp(0.3)",
    "sparsehourglass(0.5)",
    "sum_normalization_pp",
    "hardmax",
]


@pytest.mark.parametrize("name", MONOTONIC)
@given(z=vectors())
def test_monotonic(name, z):
    p = MAPPINGS[name](t(z)).numpy()
    order = np.argsort(z, kind="stable")
    assert (np.diff(p[order]) >= -1e-12).all()


def test_not_monotonic_counterexamples():
    z = t([-3.0, 1.0, 0.5])  # z_0 < z_1 but the squares rank them the other way
    for f in (sg.spherical_softmax, lambda x: sg.sparsegen_sq(x, lam=0.3)):
        p = f(z)
        assert p[0] > p[1]
    # sum-normalization of signed scores (its formula, outside its domain):
    z = t([-1.0, 2.0, 0.5])
    p = z / z.sum()
    assert p[0] < 0  # not even a distribution
    z = t([1.0, -2.0, -3.0])
    p = z / z.sum()
    assert z[0] > z[1] and p[0] < p[1]
    # sparsecone's α(z) < 0 below Σz = −Kq reverses the order (the library returns NaN there)
    q = 0.5
    z = t([-3.0, -1.0, 0.0])
    alpha = (1 + 3 * q) / (z.sum() + 3 * q)
    p = sg.sparsegen(z, lambda x: alpha * x)
    assert z[2] > z[0] and p[2] < p[0]
    assert torch.isnan(sg.sparsecone(z, q=q)).all()


# ---- translation invariance: ρ(z + c1) = ρ(z) ----

TRANSLATION = ["softmax", "sparsemax", "sparsegen_lin(0.5)", "sparsegen_lin(-1)"]


@pytest.mark.parametrize("name", TRANSLATION)
@given(z=vectors(), c=st.floats(-50, 50))
def test_translation_invariant(name, z, c):
    f = MAPPINGS[name]
    np.testing.assert_allclose(f(t(z + c)).numpy(), f(t(z)).numpy(), atol=1e-8)


@pytest.mark.parametrize(
    "name",
    [
        "sparsegen_exp(0.3)",
        "sparsegen_sq(0.3)",
        "sparsecone(2)",
        "sparsehourglass(0.5)",
        "sum_normalization_pp",
        "spherical_softmax",
    ],
)
def test_not_translation_invariant(name):
    f = MAPPINGS[name]
    z = t([0.2, 0.5, 0.1, 0.3, 0.4])
    assert not torch.allclose(f(z + 2.0), f(z), atol=1e-3)


def test_sum_normalization_not_translation_invariant():
    z = t([1.0, 2.0, 3.0])
    assert not torch.allclose(sg.sum_normalization(z + 1), sg.sum_normalization(z))


@given(z=vectors(), c=st.floats(-5, 5))
def test_hourglass_and_cone_translation_invariant_as_q_grows(z, c):
    # ✓*: at a q chosen independently of z; exact only in the limit q → ∞.
    for f in (sg.sparsehourglass, sg.sparsecone):
        np.testing.assert_allclose(f(t(z + c), q=1e9).numpy(), f(t(z), q=1e9).numpy(), atol=1e-6)


# ---- scale invariance: ρ(cz) = ρ(z), c > 0 ----


@pytest.mark.parametrize("name", ["spherical_softmax", "sum_normalization_pp", "hardmax"])
@given(z=vectors(), c=st.floats(0.01, 100))
def test_scale_invariant(name, z, c):
    f = MAPPINGS[name]
    assume(abs(z.sum()) > 1e-3 and np.abs(z).max() > 1e-3)
    np.testing.assert_allclose(f(t(c * z)).numpy(), f(t(z)).numpy(), atol=1e-8)


@given(z=arrays(np.float64, (K,), elements=st.floats(0.01, 5)), c=st.floats(0.01, 100))
def test_sum_normalization_and_cone_at_q0_scale_invariant(z, c):
    np.testing.assert_allclose(
        sg.sum_normalization(t(c * z)), sg.sum_normalization(t(z)), atol=1e-10
    )
    np.testing.assert_allclose(
        sg.sparsecone(t(c * z), q=0.0), sg.sparsecone(t(z), q=0.0), atol=1e-10
    )
    np.testing.assert_allclose(
        sg.sparsehourglass(t(c * z), q=0.0), sg.sparsehourglass(t(z), q=0.0), atol=1e-10
    )


@pytest.mark.parametrize(
    "name",
    [
        "softmax",
        "sparsemax",
        "sparsegen_lin(0.5)",
        "sparsegen_exp(0.3)",
        "sparsegen_sq(0.3)",
        "sparsecone(2)",
        "sparsehourglass(0.5)",
    ],
)
def test_not_scale_invariant(name):
    f = MAPPINGS[name]
    z = t([0.2, 0.5, 0.1, 0.3, 0.4])
    assert not torch.allclose(f(3.0 * z), f(z), atol=1e-3)


# ---- full domain: finite output for every finite z ----

FULL_DOMAIN = [
    "softmax",
    "sparsemax",
    "sparsegen_lin(0.5)",
    "sparsegen_exp(0.3)",
    "sparsegen_sq(0.3)",
    "sparsehourglass(0.5)",
    "sum_normalization_pp",
]


@pytest.mark.parametrize("name", FULL_DOMAIN)
@given(z=vectors(low=-1e3, high=1e3))
def test_full_domain(name, z):
    assert torch.isfinite(MAPPINGS[name](t(z))).all()


@pytest.mark.parametrize("name", FULL_DOMAIN)
def test_full_domain_at_zero(name):
    torch.testing.assert_close(
        MAPPINGS[name](torch.zeros(K, dtype=torch.float64)),
        torch.full((K,), 1 / K, dtype=torch.float64),
    )


def test_not_full_domain():
    assert torch.isnan(sg.spherical_softmax(torch.zeros(K))).all()
    with pytest.raises(ValueError):
        sg.sum_normalization(t([1.0, -2.0, 3.0]))
    assert torch.isnan(sg.sparsecone(t([-4.0, -3.0, 1.0]), q=1.0)).all()


# ---- Lipschitz constants, estimated from nearby pairs (2-norm) ----


def max_ratio(f, center, radius, n=400, seed=0):
    rng = np.random.default_rng(seed)
    a = center + radius * rng.normal(size=(n, center.size))
    b = a + 1e-4 * rng.normal(size=a.shape)
    num = np.linalg.norm(f(t(a)).numpy() - f(t(b)).numpy(), axis=-1)
    return (num / np.linalg.norm(a - b, axis=-1)).max()


@pytest.mark.parametrize(
    ("name", "bound"),
    [("softmax", 1.0), ("sparsemax", 1.0), ("sparsegen_lin(0.5)", 2.0), ("sparsegen_lin(-1)", 0.5)],
)
def test_lipschitz_bound_holds(name, bound):
    f = MAPPINGS[name]
    for radius in (0.1, 1.0, 5.0):
        ratio = max_ratio(f, np.zeros(K), radius)
        assert ratio <= bound * (1 + 1e-3), (radius, ratio)
    # sparsegen-lin's bound is attained (on a support of size 1 < |S| the slope is 1/(1-λ))
    if name.startswith("sparsegen_lin"):
        assert max_ratio(f, np.zeros(K), 0.05) > 0.5 * bound


@pytest.mark.parametrize(
    ("name", "center"),
    [
        ("spherical_softmax", np.full(K, 1e-3)),
        ("sum_normalization_pp", np.array([1e-3, -1e-3, 2e-3, -2e-3, 1e-4])),
        ("sparsecone(2)", np.full(K, -1.999)),  # Σz + Kq = 0.005: α(z) = 2200
        ("sparsegen_exp(0.3)", np.array([8.0, 8.0, 0.0, 0.0, 0.0])),
        ("sparsegen_sq(0.3)", np.array([40.0, 40.0, 0.0, 0.0, 0.0])),
    ],
)
def test_not_lipschitz(name, center):
    ratio = max_ratio(
        MAPPINGS[name], center, 1e-4 if "sq" not in name and "exp" not in name else 1e-3
    )
    assert ratio > 50, ratio


@pytest.mark.parametrize("q", [0.1, 0.5, 1.0])
def test_sparsehourglass_lipschitz_but_above_the_papers_constant(q):
    # Bounded slopes at every scale, near the kink Σz = 0 included ...
    f = lambda x: sg.sparsehourglass(x, q=q)  # noqa: E731
    ratios = [max_ratio(f, np.zeros(K), r, n=2000) for r in (0.03, 0.3, 3.0, 30.0)]
    claimed = 1 + 1 / (K * q)
    assert max(ratios) < 2 * claimed
    # ... but the paper's constant 1 + 1/(Kq) does not hold in the 2-norm: the
    # data-dependent scale α̂(z) adds a rank-one term z ∇α̂ᵀ to the Jacobian.
    # Find the steepest direction from the Jacobian, then measure it by differences.
    x = torch.randn(5000, K, dtype=torch.float64) * 0.5
    jac = sparsehourglass_jacobian(x, q=q)
    i = torch.linalg.matrix_norm(jac, ord=2).argmax()
    direction = torch.linalg.svd(jac[i]).Vh[0]
    h = 1e-6
    slope = (f(x[i] + h * direction) - f(x[i] - h * direction)).norm() / (2 * h)
    assert slope > claimed * 1.02, (slope, claimed)


def test_sum_normalization_not_lipschitz():
    a = t([1e-6, 1e-6, 0.0])
    b = t([1e-6, 2e-6, 0.0])
    ratio = (sg.sum_normalization(a) - sg.sum_normalization(b)).norm() / (a - b).norm()
    assert ratio > 1e4


def test_table_is_not_silent_about_its_slips():
    # softmax: Table 1 says idempotent; it is not (also covered above).
    p = t([0.5, 0.5, 0.0])
    assert not torch.allclose(sg.softmax(p), p)
    # sparsegen-lin idempotent only at λ = 0 (property 8 of the paper):
    assert torch.allclose(sg.sparsegen_lin(p, lam=0.0), p)
    assert not torch.allclose(sg.sparsegen_lin(t([0.6, 0.4, 0.0]), lam=0.5), t([0.6, 0.4, 0.0]))
    assert math.isfinite(sg.sparsecone(p, q=2.0).sum().item())
