"""The Triton kernels on small, odd shapes, for ``compute-sanitizer`` on a GPU.

Every path of the projection's kernels (short rows, split rows with and without a
candidate overflow, masks, ties, special values, the backward) and of the fused
attention's (on-chip and streamed threshold, masks, GQA, dropout, transforms, the
backward), at sizes that are not multiples of any block. The projection's cases are
checked against the torch path, so that a wrong answer fails too; the attention's run
forward and backward (their answers are the fused-attention tests'). Run it under the
memory checker, with torch's caching allocator off (it packs small tensors into 2 MiB
blocks, inside which an overrun is valid memory to the checker):

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \
        python3 benchmarks/sanitize_gpu.py
    TRITON_INTERPRET=1 python3 benchmarks/sanitize_gpu.py   # no GPU: proves the script runs
"""

from __future__ import annotations

import functools
import math

import torch

import sparsegen as sg
from sparsegen import _triton_projection
from sparsegen.attention import scaled_dot_product_attention


def projection_cases(device: torch.device) -> None:
    for rows, k, kwargs in [
        (3, 5, {}),
        (7, 1000, {}),
        (2, 5000, {"max_short_k": 1024, "chunk": 1024}),
        (2, 5000, {"max_short_k": 1024, "chunk": 1024, "candidates": 16}),
    ]:
        z = torch.randn(rows, k, device=device)
        z[0, :3] = z[0, 3]  # ties
        z[-1, 1] = math.inf if k > 5 else z[-1, 1]
        mask = torch.rand(rows, k, device=device) > 0.1
        for m in (None, mask):
            out, *_ = _triton_projection.project_triton(z, None, None, mask=m, **kwargs)
            expected = sg.sparsemax(z.double().cpu(), mask=None if m is None else m.cpu())
            torch.testing.assert_close(out.double().cpu(), expected, atol=1e-5, rtol=1e-4,
                                       equal_nan=True)  # fmt: skip
        x = z.clone().requires_grad_()
        sg.sparsemax(x, algorithm="triton").sum().backward()
    # a key-padding mask read in place across heads (two row strides)
    for kwargs in ({}, {"max_short_k": 64, "chunk": 64, "candidates": 8}):
        z = torch.randn(3, 5, 300, device=device)
        padding = torch.rand(3, 1, 300, device=device) > 0.2
        out, *_ = _triton_projection.project_triton(z, None, None, mask=padding, **kwargs)
        expected = sg.sparsemax(z.double().cpu(), mask=padding.cpu())
        torch.testing.assert_close(out.double().cpu(), expected, atol=1e-5, rtol=1e-4)


def attention_cases(device: torch.device) -> None:
    mappings = [
        sg.sparsemax,
        functools.partial(sg.sparsegen_exp, lam=0.3),
        functools.partial(sg.sparsegen_sq, lam=-0.5),
        functools.partial(sg.sparsehourglass, q=0.5),
    ]
    for (b, h, hk, length, source, dim), spread in [
        ((1, 2, 2, 1, 1, 16), 1.0),
        ((2, 4, 2, 67, 131, 64), 1.0),
        ((1, 2, 1, 130, 70, 128), 0.01),  # flat scores: the streamed threshold
        ((1, 1, 1, 33, 300, 256), 3.0),
    ]:
        q = torch.randn(b, h, length, dim, device=device, dtype=torch.bfloat16) * spread
        k, v = (torch.randn(b, hk, source, dim, device=device, dtype=torch.bfloat16)
                for _ in range(2))  # fmt: skip
        keep = torch.rand(b, 1, 1, source, device=device) > 0.2
        for mapping in mappings:
            for kwargs in ({"is_causal": True}, {"attn_mask": keep, "dropout_p": 0.1}):
                leaves = [t.clone().requires_grad_() for t in (q, k, v)]
                out = scaled_dot_product_attention(
                    *leaves, mapping=mapping, enable_gqa=True, implementation="fused", **kwargs
                )
                out.float().square().sum().backward()
                assert torch.isfinite(out).all() or kwargs.get("attn_mask") is not None


def main() -> None:
    # without a GPU (TRITON_INTERPRET=1): the same cases on CPU tensors, to prove the script
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    projection_cases(device)
    attention_cases(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"sanitize_gpu: every case ran on {device}")


if __name__ == "__main__":
    main()
