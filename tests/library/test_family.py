"""The sparsegen family: closed forms, reductions between members, masks, dtypes, bad input."""

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from reference import sparsemax_bisect

import sparsegen as sg

# (name, function of (x, **kw)) for every mapping that takes a mask and dim
MAPPINGS = {
    "softmax": sg.softmax,
    "hardmax": sg.hardmax,
    "sparsemax": sg.sparsemax,
    "sparsegen_lin": lambda x, **kw: sg.sparsegen_lin(x, lam=0.4, **kw),
    "sparsegen_exp": lambda x, **kw: sg.sparsegen_exp(x, lam=0.2, **kw),
    "sparsegen_sq": lambda x, **kw: sg.sparsegen_sq(x, lam=0.3, **kw),
    "sparsegen": lambda x, **kw: sg.sparsegen(x, torch.tanh, lam=0.5, **kw),
    "sparsecone": lambda x, **kw: sg.sparsecone(x, q=2.0, **kw),
    "sparsehourglass": lambda x, **kw: sg.sparsehourglass(x, q=0.5, **kw),
    "sum_normalization_pp": sg.sum_normalization_pp,
    "spherical_softmax": sg.spherical_softmax,
    "sum_normalization": sg.sum_normalization,
}


# the layouts of a (4, 5, 3, 6) tensor, the dim the mappings run along and whether a
# (contiguous) mask goes with it: a dense map along its classes (dim 1, not last), the
# same stored channels last, a transposed batch along its last dim (entries 90 apart),
# and every other slice (not dense)
LAYOUTS = {
    "contiguous, dim 1": (lambda s: s, 1, False),
    "channels last, dim 1": (lambda s: s.contiguous(memory_format=torch.channels_last), 1, False),
    "transposed, dim -1": (lambda s: s.transpose(0, 3), -1, False),
    "transposed, dim 1": (lambda s: s.transpose(0, 3), 1, False),
    "transposed, dim 1, masked": (lambda s: s.transpose(0, 3), 1, True),
    "every other slice, dim 1": (lambda s: s[::2], 1, False),
}
# softmax and hardmax return the layout torch's own ops give
IN_INPUT_LAYOUT = {name: f for name, f in MAPPINGS.items() if name not in ("softmax", "hardmax")}
IN_INPUT_LAYOUT |= {  # (parameters that record a gradient take torch code for the scale)
    "sparsehourglass, learnt q": lambda x, **kw: sg.sparsehourglass(
        x, q=torch.tensor(0.5, requires_grad=True), **kw
    ),
    "sparsegen_lin, learnt lam": lambda x, **kw: sg.sparsegen_lin(
        x, lam=torch.tensor(0.3, requires_grad=True), **kw
    ),
}


def positive_scores(shape, dtype=torch.float64):
    return torch.rand(shape, dtype=dtype) + 0.1


# ---- closed forms and reductions (Laha et al. 2018, Eqs. 2 and 5; docs/math.md) ----


def test_sparsegen_lin_is_sparsemax_of_scaled_scores():
    x = torch.randn(6, 9, dtype=torch.float64)
    for lam in (-2.0, 0.0, 0.5, 0.9):
        np.testing.assert_allclose(
            sg.sparsegen_lin(x, lam=lam), sparsemax_bisect(x, lam), atol=1e-12
        )


def test_sparsegen_lin_limits():
    x = torch.randn(5, 7, dtype=torch.float64)
    torch.testing.assert_close(sg.sparsegen_lin(x, lam=0.0), sg.sparsemax(x))
    torch.testing.assert_close(sg.sparsegen_lin(x, lam=1 - 1e-9), sg.hardmax(x))
    torch.testing.assert_close(sg.sparsegen_lin(x, lam=-1e9), torch.full_like(x, 1 / 7))


def test_sparsegen_exp_reduces_to_softmax():
    x = torch.randn(5, 8, dtype=torch.float64)
    lam = 1 - x.exp().sum(-1, keepdim=True)
    torch.testing.assert_close(sg.sparsegen_exp(x, lam=lam), torch.softmax(x, -1))


def test_sparsegen_sq_reduces_to_spherical_softmax():
    x = torch.randn(5, 8, dtype=torch.float64)
    lam = 1 - (x**2).sum(-1, keepdim=True)
    expected = x**2 / (x**2).sum(-1, keepdim=True)
    torch.testing.assert_close(sg.sparsegen_sq(x, lam=lam), expected)
    torch.testing.assert_close(sg.spherical_softmax(x), expected)


def test_specific_members_equal_the_generic_sparsegen():
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(sg.sparsegen_exp(x, lam=0.3), sg.sparsegen(x, torch.exp, lam=0.3))
    torch.testing.assert_close(sg.sparsegen_sq(x, lam=0.3), sg.sparsegen(x, torch.square, lam=0.3))
    torch.testing.assert_close(sg.sparsegen_lin(x, lam=0.3), sg.sparsegen(x, lambda z: z, lam=0.3))
    np.testing.assert_allclose(
        sg.sparsegen_exp(x, lam=0.3), sparsemax_bisect(x.exp().numpy(), 0.3), atol=1e-12
    )


def test_sparsehourglass_formula_and_limits():
    x = torch.randn(5, 6, dtype=torch.float64)
    for q in (0.1, 1.0, 10.0):
        alpha = (1 + 6 * q) / (x.sum(-1, keepdim=True).abs() + 6 * q)
        np.testing.assert_allclose(
            sg.sparsehourglass(x, q=q), sparsemax_bisect(alpha * x), atol=1e-12
        )
    torch.testing.assert_close(sg.sparsehourglass(x, q=1e12), sg.sparsemax(x))
    torch.testing.assert_close(sg.sparsehourglass(x, q=math.inf), sg.sparsemax(x))
    torch.testing.assert_close(sg.sparsehourglass(x, q=0.0), sg.sum_normalization_pp(x))
    np.testing.assert_allclose(
        sg.sum_normalization_pp(x), sparsemax_bisect(x / x.sum(-1, keepdim=True).abs()), atol=1e-12
    )


def test_sparsecone_formula_domain_and_limits():
    x = torch.randn(5, 6, dtype=torch.float64)
    q = 3.0
    alpha = (1 + 6 * q) / (x.sum(-1, keepdim=True) + 6 * q)
    np.testing.assert_allclose(sg.sparsecone(x, q=q), sparsemax_bisect(alpha * x), atol=1e-12)
    positive = positive_scores((4, 5))
    torch.testing.assert_close(sg.sparsecone(positive, q=0.0), sg.sum_normalization(positive))
    torch.testing.assert_close(sg.sparsecone(x, q=math.inf), sg.sparsemax(x))
    outside = torch.tensor([[-5.0, -4.0, 1.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    out = sg.sparsecone(outside, q=1.0)  # Σz + Kq = -5 < 0 in the first row
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()


def test_sum_normalization_and_spherical_softmax_formulas():
    x = positive_scores((4, 5))
    torch.testing.assert_close(sg.sum_normalization(x), x / x.sum(-1, keepdim=True))
    y = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(sg.spherical_softmax(y), y**2 / (y**2).sum(-1, keepdim=True))


def test_hardmax_shares_ties():
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 1.0, 0.0, -1.0]])
    torch.testing.assert_close(sg.hardmax(x), torch.tensor([[0, 0.5, 0.5, 0], [1.0, 0, 0, 0]]))


def test_softmax_matches_torch_on_finite_input():
    x = torch.randn(3, 4, 5)
    for dim in range(3):
        torch.testing.assert_close(sg.softmax(x, dim=dim), torch.softmax(x, dim=dim))
    # dtype= as in torch.nn.functional.softmax: the input cast first
    half = x.half()
    for dtype in (torch.float32, torch.float64):
        got = sg.softmax(half, dtype=dtype)
        assert got.dtype == dtype
        torch.testing.assert_close(got, torch.nn.functional.softmax(half, -1, dtype=dtype))
        # and third, as torch.softmax(x, dim, dtype) takes it
        torch.testing.assert_close(sg.softmax(half, 0, dtype), torch.softmax(half, 0, dtype))
    with pytest.raises(TypeError, match=r"dtype must be a floating-point torch\.dtype"):
        sg.softmax(x, -1, torch.int64)


def _softmax_by_the_rules(row: list[float], kept: list[bool]) -> list[float]:
    """One slice of sg.softmax, rule by rule in Python floats (the README's bad-input table)."""
    scores = [v if k else -math.inf for v, k in zip(row, kept, strict=True)]
    if any(math.isnan(v) for v in scores):
        return [math.nan if k else 0.0 for k in kept]
    if math.inf in scores:
        winners = scores.count(math.inf)
        return [1.0 / winners if v == math.inf else 0.0 for v in scores]
    top = max(scores)
    if top == -math.inf:
        return [0.0] * len(scores)
    weights = [math.exp(v - top) for v in scores]
    return [w / sum(weights) for w in weights]


@pytest.mark.parametrize("masked", [False, True])
def test_softmax_follows_the_rules_in_a_batch_of_every_kind_of_slice(masked):
    # Finite slices take torch's softmax and the rest their rules: the choice is made
    # per batch, so each kind of slice, special at its first entry or further on, sits
    # beside finite ones.
    inf, nan = math.inf, math.nan
    rows = [
        [0.5, -1.0, 2.0, 0.0],
        [-inf, 1.0, 2.0, 3.0],
        [inf, 1.0, inf, 0.0],
        [1.0, 2.0, inf, 0.0],
        [-inf, -inf, -inf, -inf],
        [nan, 1.0, 2.0, 3.0],
        [1.0, 2.0, nan, 3.0],
        [1e30, -1e30, 3.0, 3.0],
    ]
    kept = [[True, True, True, True] for _ in rows]
    if masked:
        kept[0] = [True, False, True, True]
        kept[5] = [False, True, True, True]  # the NaN masked: a finite slice
        kept[7] = [False, False, False, False]
    x = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor(kept) if masked else None
    got = sg.softmax(x, mask=mask)
    by_rules = [_softmax_by_the_rules(r, k) for r, k in zip(rows, kept, strict=True)]
    expected = torch.tensor(by_rules, dtype=torch.float64)
    torch.testing.assert_close(got, expected, equal_nan=True)
    for batch in ([0, 7], [0, 1, 7]):  # finite slices only: torch's softmax and its gradient
        y = x.detach()[batch].requires_grad_()
        g = torch.randn(len(batch), 4, dtype=torch.float64)
        grad = torch.autograd.grad((sg.softmax(y) * g).sum(), y)[0]
        z = y.detach().requires_grad_()
        expected_grad = torch.autograd.grad((torch.softmax(z, -1) * g).sum(), z)[0]
        torch.testing.assert_close(grad, expected_grad)
    (got.nan_to_num() * torch.randn_like(got)).sum().backward()
    assert torch.isfinite(x.grad[[0, 1, 2, 3, 4, 7]]).all()
    assert torch.equal(x.grad[[2, 3, 4]], torch.zeros(3, 4, dtype=torch.float64))


# ---- every mapping: masks, dims, dtypes, NumPy ----


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_output_is_a_distribution_along_any_dim(name):
    f = MAPPINGS[name]
    x = positive_scores((3, 4, 5)) if name == "sum_normalization" else torch.randn(3, 4, 5)
    for dim in (0, 1, -1):
        out = f(x, dim=dim)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert (out >= 0).all()
        torch.testing.assert_close(out.sum(dim), torch.ones_like(out.sum(dim)))


def _significant_strides(t):
    return [stride for size, stride in zip(t.shape, t.stride(), strict=True) if size > 1]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(IN_INPUT_LAYOUT))
def test_outputs_come_back_in_the_input_layout(name, layout, algorithm):
    # as torch's elementwise ops do: torch.empty_like's strides, so a contiguous input along
    # any dim gives a contiguous output (torch.softmax's), and one that .view() can reshape
    view, dim, masked = LAYOUTS[layout]
    storage = (
        torch.rand(4, 5, 3, 6) + 0.1 if name == "sum_normalization" else torch.randn(4, 5, 3, 6)
    )
    x = view(storage).requires_grad_()
    projects = name not in ("spherical_softmax", "sum_normalization")
    kw = dict(dim=dim, algorithm=algorithm) if projects else dict(dim=dim)
    if masked:  # (a broadcast op of a mask and scores of two layouts may pick a third)
        kw["mask"] = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) > 0.3
    out = IN_INPUT_LAYOUT[name](x, **kw)
    assert _significant_strides(out) == _significant_strides(torch.empty_like(x))
    weights = torch.randn(out.shape)
    (out * weights).sum().backward()
    # values and gradients as a contiguous float64 copy's
    x64 = x.detach().double().contiguous().requires_grad_()
    expected = IN_INPUT_LAYOUT[name](x64, **kw)
    (expected * weights).sum().backward()
    torch.testing.assert_close(out.detach().double(), expected.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # (the kernels' own route, nothing recorded)
        assert _significant_strides(IN_INPUT_LAYOUT[name](x, **kw)) == _significant_strides(out)


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_mask_zeroes_entries_and_renormalises(name):
    f = MAPPINGS[name]
    x = positive_scores((4, 6)) if name == "sum_normalization" else torch.randn(4, 6).double()
    mask = torch.tensor([True, False, True, True, False, True])
    out = f(x, mask=mask)
    assert (out[:, ~mask] == 0).all()
    torch.testing.assert_close(out[:, mask], f(x[:, mask]))
    row_mask = torch.ones(4, 6, dtype=torch.bool)
    row_mask[2] = False
    out = f(x, mask=row_mask)
    assert (out[2] == 0).all(), "a fully masked slice gives zeros"
    torch.testing.assert_close(out[[0, 1, 3]], f(x[[0, 1, 3]]))


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_mask_errors(name):
    f = MAPPINGS[name]
    x = torch.rand(4, 6) + 0.1
    with pytest.raises(ValueError, match="does not broadcast"):
        f(x, mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        f(x, mask=torch.ones(6))


@pytest.mark.parametrize("name", list(MAPPINGS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_dtype(name, dtype):
    f = MAPPINGS[name]
    x = torch.rand(3, 7) + 0.1
    out = f(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), f(x.to(dtype).float()), atol=1e-2, rtol=0)


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_numpy_in_numpy_out_and_integer_error(name):
    f = MAPPINGS[name]
    x = np.random.default_rng(0).random((3, 5)) + 0.1
    out = f(x)
    assert isinstance(out, np.ndarray) and out.dtype == x.dtype
    np.testing.assert_allclose(out, f(torch.from_numpy(x)).numpy())
    with pytest.raises(TypeError, match="floating-point"):
        f(np.arange(6).reshape(2, 3))
    # a read-only array (pandas' to_numpy(), a memmap) is read without torch's warning that
    # writing to it would be undefined: nothing writes to it
    x.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(f(x), out)


READ_ONLY_ARRAYS = """
import sys
import warnings
import numpy as np, torch
import sparsegen as sg

entered = 0
class Counted(warnings.catch_warnings):
    def __enter__(self):
        global entered
        entered += sys._getframe(1).f_globals["__name__"] == "sparsegen._validation"
        return super().__enter__()
warnings.catch_warnings = Counted
warnings.simplefilter("error")
swapped = np.arange(4.0).astype(">f8")  # copied by the library: torch has not warned
for x in (swapped, np.arange(4.0), np.arange(4.0)):
    x.setflags(write=False)
    assert sg.sparsemax(x).tolist() == [0, 0, 0, 1]
torch.from_numpy(x)  # torch's warning is spent for the process
print(entered)
"""


def test_read_only_arrays_silence_torch_once_per_process():
    # a fresh interpreter: in this one another test may have spent torch's warning
    result = subprocess.run(
        [sys.executable, "-c", READ_ONLY_ARRAYS], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2"]  # the byte-swapped array's, the first shared one's


@pytest.mark.parametrize("name", list(MAPPINGS))
@pytest.mark.filterwarnings("ignore:.*(beta|prototype) state")
def test_sparse_and_nested_inputs_are_named(name):
    # (a RuntimeError "unsupported memory format option Contiguous" from deep inside)
    x = torch.rand(3, 4) + 0.1
    nested = torch.nested.nested_tensor([x[:2], x])
    for layout, tensor in (("sparse_coo", x.to_sparse()), ("sparse_csr", x.to_sparse_csr()),
                           ("nested", nested)):  # fmt: skip
        with pytest.raises(TypeError, match=f"dense \\(strided\\) tensors; got a {layout}"):
            MAPPINGS[name](tensor)


@pytest.mark.filterwarnings("ignore:.*(beta|prototype) state")
def test_sparse_and_nested_inputs_are_named_by_the_losses_and_attention():
    from sparsegen.attention import scaled_dot_product_attention
    from sparsegen.losses import logistic_loss, softmax_loss, sparsemax_loss

    x, sparse = torch.rand(3, 4), torch.rand(3, 4).to_sparse()
    for loss, target in ((sparsemax_loss, torch.tensor([0, 1, 2])),
                         (softmax_loss, torch.tensor([0, 1, 2])), (logistic_loss, x)):  # fmt: skip
        with pytest.raises(TypeError, match=f"{loss.__name__} takes dense"):
            loss(sparse, target)
    q = torch.rand(1, 3, 4)
    with pytest.raises(TypeError, match="scaled_dot_product_attention takes dense"):
        scaled_dot_product_attention(q, q.to_sparse(), q)


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_a_dim_out_of_range_is_torchs_index_error(name):
    with pytest.raises(IndexError, match="Dimension out of range"):
        MAPPINGS[name](torch.rand(2, 3) + 0.1, dim=5)


@pytest.mark.parametrize(
    ("f", "parameter", "value"),
    [(sg.sparsegen_lin, "lam", 0), (sg.sparsegen_exp, "lam", 0.5), (sg.sparsecone, "q", 2),
     (sg.sparsehourglass, "q", 2), (sg.sparsehourglass, "q", math.inf)],
)  # fmt: skip
def test_a_zero_dimensional_array_is_a_number(f, parameter, value):
    # a NumPy scalar array used to become an integer (or infinite) tensor and be refused
    x = np.random.default_rng(1).random((3, 5)) + 0.1
    got = f(x, **{parameter: np.array(value)})
    np.testing.assert_array_equal(got, f(x, **{parameter: float(value)}))


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_nan_stays_in_its_slice(name):
    f = MAPPINGS[name]
    x = torch.rand(3, 5, dtype=torch.float64) + 0.1
    x[1, 3] = math.nan
    out = f(x)
    assert torch.isnan(out[1]).all()
    torch.testing.assert_close(out[[0, 2]], f(x[[0, 2]]))
    # masked entries are exactly 0 in a NaN slice too (softmax and hardmax spread the NaN)
    keep = torch.ones(3, 5, dtype=torch.bool)
    keep[1, 0] = False
    masked = f(x, mask=keep)
    assert masked[1, 0] == 0 and torch.isnan(masked[1, 1:]).all()


@pytest.mark.parametrize("name", list(MAPPINGS))
def test_size_one_and_empty(name):
    f = MAPPINGS[name]
    torch.testing.assert_close(f(torch.tensor([[0.7], [2.0]])), torch.ones(2, 1))
    assert f(torch.empty(0, 4)).shape == (0, 4)


def test_float16_scaled_scores_do_not_overflow():
    # 60000 / (1 - 0.999) is far beyond float16's 65504, fine in the float32 compute.
    x = torch.tensor([[60000.0, 59000.0, 0.0]], dtype=torch.float16)
    out = sg.sparsegen_lin(x, lam=0.999)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), torch.tensor([[1.0, 0.0, 0.0]]))


def test_huge_scores_in_the_nonlinear_members():
    x = torch.tensor([[1e30, 2e30, -3e30], [100.0, 101.0, 50.0]])
    for f in (sg.sparsegen_exp, sg.sparsegen_sq, sg.spherical_softmax, sg.sum_normalization_pp):
        out = f(x)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.sum(-1), torch.ones(2))
    # exp(101) - exp(100) >> 1: all the mass on the largest, not "inf = inf"
    torch.testing.assert_close(sg.sparsegen_exp(x)[1], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(sg.sparsegen_sq(x)[0], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(
        sg.sum_normalization(torch.tensor([3e38, 3e38])), torch.tensor([0.5, 0.5])
    )


def test_positive_infinity_is_the_limit_everywhere():
    x = torch.tensor([[math.inf, 1.0, math.inf]])
    expected = torch.tensor([[0.5, 0.0, 0.5]])
    for f in (sg.softmax, sg.sparsemax, sg.hardmax, lambda z: sg.sparsegen_lin(z, lam=0.5)):
        torch.testing.assert_close(f(x), expected)


def test_all_negative_infinity_gives_zeros():
    x = torch.full((2, 3), -math.inf)
    for name in ("softmax", "hardmax", "sparsemax", "sparsegen_lin"):
        torch.testing.assert_close(MAPPINGS[name](x), torch.zeros(2, 3))
    # The rules apply to the transformed scores: exp(-inf) = 0 is an ordinary score, and
    # (-inf)² = +inf the largest.
    torch.testing.assert_close(sg.sparsegen_exp(x), torch.full((2, 3), 1 / 3))
    torch.testing.assert_close(sg.sparsegen_sq(x), torch.full((2, 3), 1 / 3))


@pytest.mark.parametrize("name", ["softmax", "sparsemax", "sparsegen_lin", "sparsecone",
                                  "sparsehourglass", "sum_normalization_pp"])  # fmt: skip
def test_all_negative_infinity_passes_zero_gradients(name, algorithm):
    # sparsecone's scale at a sum of -inf is NaN; times the zero gradient it gave NaN
    x = torch.full((2, 3), -math.inf)
    x[1] = torch.tensor([0.5, 1.0, 2.0])
    x.requires_grad_()
    f = MAPPINGS[name]
    out = f(x) if name in ("softmax",) else f(x, algorithm=algorithm)
    (out * torch.tensor([1.0, -2.0, 3.0])).sum().backward()
    assert torch.equal(out[0].detach(), torch.zeros(3))
    assert torch.equal(x.grad[0], torch.zeros(3)) and x.grad[1].isfinite().all()


# ---- bad parameters and undefined points ----


@pytest.mark.parametrize("f", [sg.sparsegen_lin, sg.sparsegen_exp, sg.sparsegen_sq])
def test_lam_must_be_below_one(f):
    x = torch.randn(2, 3)
    for lam in (1.0, 1.5, math.nan, torch.tensor([[0.2], [1.0]])):
        with pytest.raises(ValueError, match="lam must be < 1"):
            f(x, lam=lam)
    with pytest.raises(TypeError, match="lam must be a number"):
        f(x, lam="0.5")
    with pytest.raises(ValueError, match=r"size along dim -1 must be 1; got shape \(2, 3\) "):
        f(x, lam=torch.zeros(2, 3))
    # one value per row written (rows,): named as given, and as aligned to the input
    with pytest.raises(ValueError, match=r"got shape \(2,\), aligned as \(1, 2\) for an input"):
        f(x, lam=torch.zeros(2))


@pytest.mark.parametrize(
    "f", [sg.sparsegen_lin, sg.sparsegen_exp, sg.sparsegen_sq, sg.sparsecone, sg.sparsehourglass]
)
def test_a_mappings_parameter_is_keyword_only(f):
    # f(x, 0) read as λ = 0 to the library and as dim = 0 to a torch user: now an error.
    x = torch.randn(2, 3)
    for inputs in (x, x.numpy()):
        with pytest.raises(TypeError, match="positional argument"):
            f(inputs, 0)
    with pytest.raises(TypeError, match="positional argument"):
        sg.sparsegen(x, torch.exp, 0.5)
    # a mapping without a parameter takes dim second, as torch.softmax(x, 0) does
    torch.testing.assert_close(sg.sparsemax(x, 0), sg.sparsemax(x, dim=0))
    torch.testing.assert_close(sg.softmax(x, 0), torch.softmax(x, 0))
    with pytest.raises(TypeError, match="positional argument"):
        sg.sparsemax(x, -1, torch.ones(3, dtype=torch.bool))  # mask is keyword-only


@pytest.mark.parametrize("f", [sg.sparsecone, sg.sparsehourglass])
def test_q_must_be_non_negative(f):
    x = torch.randn(2, 3)
    for q in (-0.1, math.nan, torch.tensor(-1.0), torch.tensor(math.inf)):
        with pytest.raises(ValueError, match="q must be"):
            f(x, q=q)


def test_per_slice_parameters():
    x = torch.randn(2, 5, dtype=torch.float64)
    lam = torch.tensor([[0.0], [0.5]], dtype=torch.float64)
    out = sg.sparsegen_lin(x, lam=lam)
    torch.testing.assert_close(out[0], sg.sparsegen_lin(x[0], lam=0.0))
    torch.testing.assert_close(out[1], sg.sparsegen_lin(x[1], lam=0.5))
    q = torch.tensor([0.5, 2.0], dtype=torch.float64)
    out = sg.sparsehourglass(x.t(), q=q, dim=0)
    torch.testing.assert_close(out[:, 1], sg.sparsehourglass(x[1], q=2.0))


def test_undefined_points_are_documented_nan():
    assert torch.isnan(sg.spherical_softmax(torch.zeros(3))).all()
    assert torch.isnan(sg.sum_normalization(torch.zeros(3))).all()
    with pytest.raises(ValueError, match="scores must be >= 0"):
        sg.sum_normalization(torch.tensor([1.0, -0.5]))


def test_sum_normalization_pp_at_zero_sum_is_the_limit():
    x = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, -4.0]])
    expected = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    torch.testing.assert_close(sg.sum_normalization_pp(x), expected)
    torch.testing.assert_close(sg.sparsehourglass(x, q=0.0), expected)
    # approaching the limit along the row
    near = x[0] + torch.tensor([1e-6, 0.0, 0.0])
    torch.testing.assert_close(sg.sum_normalization_pp(near), expected[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("learnt_q", [False, True])
@pytest.mark.parametrize("q0", [0.0, 1e-30])
def test_zero_sum_slices_pass_no_gradient(algorithm, dtype, learnt_q, q0):
    # Σz = 0 exactly (in either dtype, after the scale invariant division by max |z|):
    # at q = 0 α̂ is infinite, the output its limit; at a tiny q ∂α̂/∂z ∝ α̂² overflows.
    # A slice whose support is one entry is locally constant there: a zero gradient, not
    # NaN (0 · inf); at tied maxima (not differentiable) zero is the convention.
    degenerate = [[4.0, 2.0, -6.0], [-3.0, 0.0, 3.0], [2.0, 2.0, -4.0]]
    regular = np.array([1.0, 2.0, 3.5])
    z = torch.tensor([*degenerate, regular.tolist()], dtype=dtype, requires_grad=True)
    q = torch.full((4, 1), q0, dtype=dtype, requires_grad=True) if learnt_q else q0
    weights = torch.tensor([1.0, -2.0, 3.0], dtype=dtype)
    (sg.sparsehourglass(z, q=q, algorithm=algorithm) * weights).sum().backward()
    assert torch.equal(z.grad[:2], torch.zeros(2, 3, dtype=dtype))
    tied = z.grad[2]
    assert torch.equal(tied, torch.zeros_like(tied)) if q0 == 0 else tied.isfinite().all()

    # the regular slice's gradients are the formula's, by central differences
    def loss(v, q=0.0):
        scale = (1 + 3 * q) / (abs(v.sum()) + 3 * q)
        return float((sparsemax_bisect(scale * v) * weights.double().numpy()).sum())

    numeric = [(loss(regular + e, q0) - loss(regular - e, q0)) / 2e-6 for e in np.eye(3) * 1e-6]
    expected = torch.tensor(numeric, dtype=torch.float64)
    torch.testing.assert_close(z.grad[3].double(), expected, rtol=1e-4, atol=1e-5)
    if learnt_q:
        assert torch.equal(q.grad[:2], torch.zeros(2, 1, dtype=dtype))
        expected = (loss(regular, q0 + 1e-6) - loss(regular, q0 - 1e-6)) / 2e-6
        assert q.grad[3].item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("dtype, q", [(torch.float32, 1e-41), (torch.float64, 1e-310)])
def test_a_scale_that_overflows_passes_no_gradient(algorithm, dtype, q):
    # α̂ = (1 + Kq)/(|Σz| + Kq) past the dtype's range at a zero sum: the output is the
    # limit, and its gradient 0 (at tied maxima by the convention a tensor q and forward
    # mode keep); the first-order limit α̂·Jᵀg had made it ±inf there
    z = torch.tensor([[3.0, 3.0, -6.0, 0.0], [0.0] * 4, [4.0, 2.0, -6.0, 0.0]], dtype=dtype)
    weights = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=dtype)
    x = z.clone().requires_grad_()
    output = sg.sparsehourglass(x, q=q, algorithm=algorithm)
    expected = [[0.5, 0.5, 0.0, 0.0], [0.25] * 4, [1.0, 0.0, 0.0, 0.0]]
    torch.testing.assert_close(output, torch.tensor(expected, dtype=dtype))
    (output * weights).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    forward = torch.func.jacfwd(lambda v: sg.sparsehourglass(v, q=q, algorithm=algorithm))(z[0])
    assert torch.equal(forward, torch.zeros_like(forward))


def test_sparsegen_rejects_a_g_of_wrong_shape():
    with pytest.raises(ValueError, match="g must return a tensor"):
        sg.sparsegen(torch.randn(3, 4), lambda z: z.sum(-1))
    # a g that is no function, or that returns integers, is named (it failed in torch.finfo
    # deep in the projection, or as "'int' object is not callable")
    with pytest.raises(TypeError, match="g must be callable"):
        sg.sparsegen(torch.randn(3, 4), 2)
    with pytest.raises(TypeError, match=r"g must return floating-point scores; got torch\.int64"):
        sg.sparsegen(torch.randn(3, 4), lambda z: z.long())
