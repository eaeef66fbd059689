"""Random inputs for the Triton kernels against the float64 torch code, for as long as asked.

    python tests/fuzz_kernels.py --seconds 600 [--seed 0] [--attention]

The projection (:func:`sparsegen._triton_projection.project_triton`) on every path (rows
on chip; rows split into chunks; the split path's candidate overflow, forced at small K)
and its VJP, against :func:`sparsegen._projection.project_torch` and ``vjp_torch`` in
float64: random K, scales (0 to 1e30, inf, NaN), sparsecone's and sparsehourglass's q
(1e-30 to inf), float32/float16/bfloat16 scores of any magnitude with ties, masks, -inf,
+inf and NaN. Then the public functions (:data:`FUNCTIONS`) with ``algorithm="triton"``
against ``"sort"`` in float64: N-D scores along any ``dim``, strided or stored transposed,
broadcast masks, a float, per-slice or learnt λ/q; outputs, supports and float32 gradients
(away from ties at τ and ill-conditioned cone scales). With ``--attention``, also the
fused attention's output (float32) against the unfused float64 path, off by at most twice
the unfused float32 path's error: random shapes, GQA, masks, causal, scale and every
mapping form it takes. (Its gradients are left to the tests: at a tie or under
sparsegen-exp's huge scales a float32 gradient is legitimately far from float64's.)

On a CUDA device the compiled kernels run; elsewhere Triton's interpreter (set here).
Prints each failing case (its seed reproduces it: ``--seed S --cases 1``) and a summary
line; exits 1 on any failure. ``tests/library/test_fuzz_kernels.py`` runs a few seeds in
the suite.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
import warnings

import numpy as np
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import sparsegen as sg
from sparsegen._projection import ConeScale, project_torch, vjp_torch
from sparsegen._triton_projection import project_triton, vjp_triton
from sparsegen.attention import scaled_dot_product_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the launcher's limits lowered so that short rows take the split path (and overflow)
PATHS = {
    "short": {},
    "split": {"max_short_k": 0, "chunk": 16, "candidates": 4096},
    "overflow": {"max_short_k": 0, "chunk": 16, "candidates": 2},
}
# outputs in [0, 1] against float64: the kernels compute in float32, half types round
ATOL = {torch.float32: 3e-6, torch.float16: 1.5e-3, torch.bfloat16: 1e-2}


def projection_case(seed: int) -> str | None:
    """One random projection and its VJP; a description of what differs, or None."""
    rng = np.random.default_rng(seed)
    rows, k = int(rng.integers(1, 6)), int(rng.choice([1, 2, 3, 5, 16, 17, 40, 77, 130]))
    sigma = float(rng.choice([1e-6, 1e-2, 1.0, 10.0, 1e4, 1e30]))
    z = rng.normal(size=(rows, k)) * sigma + float(rng.choice([0.0, 5.0, -1e3]))
    if rng.random() < 0.4:  # ties
        z = np.round(z / sigma, int(rng.integers(0, 2))) * sigma
    if rng.random() < 0.2:  # a constant row
        z[rng.integers(rows)] = z[0, 0]
    if rng.random() < 0.4:
        u = rng.random(z.shape)
        z[u < 0.05], z[u > 0.98], z[u > 0.997] = -np.inf, np.inf, np.nan
    dtype = [torch.float32, torch.float16, torch.bfloat16][int(rng.integers(3))]
    scores = torch.tensor(z).to(dtype)
    mask = torch.tensor(rng.random(z.shape) > 0.3) if rng.random() < 0.4 else None
    scale = cone = None
    kind = int(rng.integers(3))
    if kind == 1:
        choices = [0.0, 1e-30, 0.3, 1.0, 7.0, 1e20, np.inf, np.nan]
        scale = torch.tensor(rng.choice(choices, size=(rows, 1)), dtype=torch.float32)
    elif kind == 2:
        q = float(rng.choice([1e-30, 1e-3, 0.5, 1.0, 1e3, 1e30, np.inf]))
        cone = ConeScale(q, mirror=bool(rng.integers(2)))
    path = str(rng.choice(list(PATHS)))
    out, _, support, computed = project_triton(
        scores.to(DEVICE), _on_device(scale), cone, mask=_on_device(mask), **PATHS[path]
    )
    out, support = out.cpu(), support.cpu()
    reference = project_torch(scores.double(), _double(scale), cone, "sort", mask)[0]
    where = f"seed {seed} ({path}, {dtype}, K={k}, σ={sigma:g}, scale={kind}, cone={cone})"
    if not np.allclose(out.double(), reference, atol=ATOL[dtype], rtol=0, equal_nan=True):
        return f"{where}: output off by {_largest_gap(out.double(), reference):.3g}"
    if not torch.equal(support, (out > 0).sum(-1)):
        return f"{where}: support {support.tolist()} counts {(out > 0).sum(-1).tolist()}"
    c = computed.cpu() if cone is not None else scale
    if c is not None and not torch.isfinite(c).all():
        return None  # an infinite or NaN scale: the output's rule is checked above
    grad = torch.tensor(rng.normal(size=z.shape)).to(dtype)
    vjp_path = {} if path == "short" else {"max_short_k": 0, "chunk": 16}
    got = vjp_triton(*(_on_device(t) for t in (out, support, grad, c)), **vjp_path)
    # rounded to the dtype: where the gradient overflows it (a scale of 1e20 in float16) the
    # kernel's inf is right
    expected = vjp_torch(out.double(), support, grad.double(), _double(c)).to(dtype).double()
    atol = 50 * ATOL[dtype] * (1.0 if c is None else max(1.0, float(c.abs().max())))
    if not np.allclose(got.cpu().double(), expected, atol=atol, rtol=1e-2, equal_nan=True):
        return f"{where}: VJP off by {_largest_gap(got.cpu().double(), expected):.3g}"
    return None


# the public functions on the kernels' route: (function, its parameter, that parameter's range)
FUNCTIONS = {
    "sparsemax": (sg.sparsemax, None, None),
    "sparsegen_lin": (sg.sparsegen_lin, "lam", (-2.0, 0.9)),
    "sparsegen_exp": (sg.sparsegen_exp, "lam", (-2.0, 0.5)),
    "sparsegen_sq": (sg.sparsegen_sq, "lam", (-2.0, 0.5)),
    "sparsecone": (sg.sparsecone, "q", (0.05, 3.0)),
    "sparsehourglass": (sg.sparsehourglass, "q", (0.0, 3.0)),
    "sum_normalization_pp": (sg.sum_normalization_pp, None, None),
}


def functional_case(seed: int) -> str | None:
    """One public function with ``algorithm="triton"`` against ``"sort"`` in float64: random
    N-D shapes and ``dim``, strided and transposed scores, broadcast masks, a float or
    per-slice parameter (learnt or not); outputs, supports, and float32 gradients."""
    rng = np.random.default_rng(seed)
    shape = [int(n) for n in rng.choice([1, 2, 3, 5, 17, 40], size=int(rng.integers(1, 5)))]
    dim = int(rng.integers(-len(shape), len(shape)))
    name = str(rng.choice(list(FUNCTIONS)))
    function, parameter, bounds = FUNCTIONS[name]
    z = rng.normal(size=shape) * float(rng.choice([0.1, 1.0, 5.0]))
    z = np.round(z) if rng.random() < 0.3 else z  # ties
    z = np.abs(z) + 0.1 if name == "sparsecone" else z  # its domain
    dtype = [torch.float32, torch.float16, torch.bfloat16][int(rng.integers(3))]
    scores = torch.tensor(z).to(dtype)
    layout = int(rng.integers(3))  # contiguous, transposed storage, every other entry
    mask = None
    if rng.random() < 0.4:
        mask = torch.tensor(rng.random([n if rng.random() < 0.6 else 1 for n in shape]) > 0.3)
    kwargs: dict = {}
    form = int(rng.integers(3))  # the parameter: a float, a tensor a slice, the same learnt
    if parameter is not None:
        per_slice = [1 if d == dim % len(shape) else n for d, n in enumerate(shape)]
        values = rng.uniform(*bounds, size=per_slice)
        kwargs[parameter] = float(values.flat[0]) if form == 0 else torch.tensor(values)
    weights = torch.tensor(rng.normal(size=shape))

    def run(algorithm, dtype, device, layout):
        x = _laid_out(scores.to(device, dtype), layout).detach().requires_grad_()
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        params = {k: _on(v, device, wide, form == 2) for k, v in kwargs.items()}
        m = None if mask is None else mask.to(device)
        result = function(x, dim=dim, mask=m, algorithm=algorithm, return_info=True, **params)
        (result.output.double() * weights.to(device)).nansum().backward()
        grads = [x.grad] + [v.grad for v in params.values() if form == 2]
        return result.output.detach().cpu(), result.support_size.cpu(), grads

    got, support, grads = run("triton", dtype, DEVICE, layout)
    expected, expected_support, expected_grads = run("sort", torch.float64, "cpu", 0)
    where = f"seed {seed} ({name}, {dtype}, shape {shape}, dim {dim}, layout {layout}, {kwargs})"
    if got.dtype != dtype or got.shape != scores.shape:
        return f"{where}: output {got.dtype} {tuple(got.shape)}"
    if (error := _largest_gap(got.double(), expected)) > ATOL[dtype]:
        # twice the torch path's own error in the dtype, as for attention: sum-normalization++
        # divides by max |z| first, a rounding its large scale 1/|Σz| amplifies
        allowed = 2 * _largest_gap(run("sort", dtype, "cpu", 0)[0].double(), expected)
        if error > allowed:
            return f"{where}: output off by {error:.3g} (allowed {allowed:.3g})"
    if not torch.equal(support, (got > 0).sum(dim)):
        return f"{where}: support is not the count of positive outputs"
    # gradients away from a support's edge (a tie at τ) and from ill-conditioned scales
    edge = ((expected > 0) & (expected < 1e-4)).any() or not torch.equal(support, expected_support)
    if dtype != torch.float32 or edge or _ill_conditioned(name, z, dim, mask, kwargs):
        return None
    for grad, reference in zip(grads, expected_grads, strict=True):
        grad = grad.cpu().double()
        allowed = 1e-3 * (1 + float(reference.abs().nan_to_num(0.0).max()))
        if _largest_gap(grad, reference) > allowed:
            return f"{where}: gradient off by {_largest_gap(grad, reference):.3g}"
    return None


def _on(value, device: str, dtype: torch.dtype, learnt: bool):
    """A parameter on ``device`` in ``dtype``, requiring grad where ``learnt``; floats as
    they are."""
    if not isinstance(value, torch.Tensor):
        return value
    return value.to(device, dtype).detach().requires_grad_(learnt)


def _laid_out(x: torch.Tensor, layout: int) -> torch.Tensor:
    """``x`` with the same values and another memory layout: 0 as it is, 1 stored
    transposed (first and last dimensions swapped), 2 every other entry of a larger tensor."""
    if layout == 1 and x.ndim > 1:
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == 2:
        larger = x.new_zeros([2 * n for n in x.shape])
        every_other = tuple(slice(0, None, 2) for _ in x.shape)
        larger[every_other] = x
        return larger[every_other]
    return x


def _ill_conditioned(name, z, dim, mask, kwargs) -> bool:
    """Whether a cone's denominator ``|Σz| + Kq`` is tiny against ``Σ|z|`` in some slice,
    where float32's rounding of ``z`` moves the scale, and so the gradient, a lot."""
    if name not in ("sparsecone", "sparsehourglass", "sum_normalization_pp"):
        return False
    kept = z if mask is None else np.where(np.broadcast_to(mask.numpy(), z.shape), z, 0.0)
    q = np.asarray(kwargs.get("q", 0.0), dtype=float)
    count = kept.shape[dim] if mask is None else (kept != 0).sum(dim, keepdims=True)
    denominator = np.abs(kept.sum(dim, keepdims=True)) + count * q
    return bool((denominator < 1e-3 * np.abs(kept).sum(dim, keepdims=True)).any())


def attention_case(seed: int) -> str | None:
    """One random fused attention (float32) against the unfused float64 path."""
    rng = np.random.default_rng(seed)
    kv_heads = int(rng.integers(1, 3))
    heads = kv_heads * int(rng.choice([1, 2]))
    batch, length = int(rng.integers(1, 3)), int(rng.choice([1, 2, 7, 33]))
    source = int(rng.choice([1, 3, 16, 17, 40]))
    dims, value_dims = int(rng.choice([8, 16, 24])), int(rng.choice([8, 16, 40]))
    lam, q = float(rng.choice([-2.0, -0.5, 0.3, 0.9])), float(rng.choice([1e-3, 0.5, 1e3]))
    mappings = {
        "sparsemax": sg.sparsemax,
        "sparsegen_lin": functools.partial(sg.sparsegen_lin, lam=lam),
        "sparsecone": functools.partial(sg.sparsecone, q=q),
        "sparsehourglass": functools.partial(sg.sparsehourglass, q=q),
        "sparsegen_exp": functools.partial(sg.sparsegen_exp, lam=min(lam, 0.5)),
        "sparsegen_sq": functools.partial(sg.sparsegen_sq, lam=min(lam, 0.5)),
    }
    name = str(rng.choice(list(mappings)))
    sigma = float(rng.choice([0.01, 1.0, 3.0]))
    query = torch.tensor(rng.normal(size=(batch, heads, length, dims)) * sigma)
    key = torch.tensor(rng.normal(size=(batch, kv_heads, source, dims)))
    value = torch.tensor(rng.normal(size=(batch, kv_heads, source, value_dims)))
    if rng.random() < 0.3:  # a repeated key: tied scores
        key[..., int(rng.integers(source)), :] = key[..., 0, :]
    mask = None
    if (mask_kind := int(rng.integers(3))) == 1:
        mask = torch.tensor(rng.random((length, source)) > 0.4)
    elif mask_kind == 2:
        bias = rng.normal(size=(1, heads, length, source))
        bias[rng.random(bias.shape) < 0.2] = -np.inf
        mask = torch.tensor(bias)
    causal = bool(rng.integers(2)) and mask_kind != 2
    scale = float(rng.choice([0.05, 1 / math.sqrt(dims), 1.0]))

    def attend(implementation, dtype, device, reversed_dims=False):
        q, k = (query.flip(-1), key.flip(-1)) if reversed_dims else (query, key)
        inputs = [t.to(device, dtype) for t in (q, k, value)]
        masks = None if mask is None else mask.to(device)
        if mask_kind == 2:  # a float mask in the inputs' dtype
            masks = masks.to(dtype)
        return scaled_dot_product_attention(
            *inputs, masks, is_causal=causal, scale=scale, enable_gqa=kv_heads != heads,
            mapping=mappings[name], implementation=implementation,
        ).cpu().double()  # fmt: skip

    got = attend("fused", torch.float32, DEVICE)
    expected = attend("unfused", torch.float64, "cpu")
    # at most twice the unfused float32 path's error (FlashAttention's rule), the larger over
    # two orders of the dot products' sums (the same scores, rounded differently, as the
    # kernel's tiles round them differently again): sparsegen-exp's and -sq's scales,
    # e^max/(1 − λ) and max²/(1 − λ), amplify that rounding where two scores nearly tie
    unfused = [attend("unfused", torch.float32, "cpu", flip) for flip in (False, True)]
    allowed = 2 * max(_largest_gap(result, expected) for result in unfused) + 2e-5
    if (error := _largest_gap(got, expected)) > allowed:
        where = f"seed {seed} ({name}, B={batch}, H={heads}/{kv_heads}, L={length}, S={source})"
        return f"{where}: attention output off by {error:.3g} (allowed {allowed:.3g})"
    return None


def _on_device(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.to(DEVICE)


def _double(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.double()


def _largest_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    gap = (a - b).abs()
    nan_mismatch = a.isnan() != b.isnan()
    return math.inf if nan_mismatch.any() else float(gap.nan_to_num(0.0).max())


def fuzz(seconds: float, seed: int, cases: int | None, attention: bool) -> list[str]:
    """The failures of random cases from ``seed`` on, for ``seconds`` or ``cases`` cases."""
    failures, done, end = [], 0, time.monotonic() + seconds
    checks = [projection_case, functional_case, *([attention_case] if attention else [])]
    while (done < cases) if cases is not None else (time.monotonic() < end):
        for check in checks:
            if (failure := check(seed + done)) is not None:
                print("FAIL", failure, flush=True)
                failures.append(failure)
        done += 1
    print(f"{done} seeds from {seed} on {DEVICE}: {len(failures)} failures", flush=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--cases", type=int, default=None, help="this many seeds instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attention", action="store_true")
    args = parser.parse_args(argv)
    # the NaN and inf fed on purpose make NumPy's reductions (the interpreter's) warn
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    return 1 if fuzz(args.seconds, args.seed, args.cases, args.attention) else 0


if __name__ == "__main__":
    sys.exit(main())
