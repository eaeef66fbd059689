"""The interpreter's bounds check (tests/triton_bounds.py), which the suite runs every Triton
kernel under: an access past a tensor fails, masked-off and in-bounds ones pass."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="checks Triton's interpreter"
)


@triton.jit
def _copy_kernel(src_ptr, dst_ptr, n, reach, BLOCK: tl.constexpr, MASKED: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    ok = offsets < n + reach if MASKED else offsets < BLOCK
    tl.store(dst_ptr + offsets, tl.load(src_ptr + offsets, mask=ok, other=0.0), mask=ok)


def test_in_bounds_and_masked_off_accesses_pass():
    from triton_bounds import bounds_checked

    src, dst = torch.arange(10.0), torch.zeros(10)
    with bounds_checked():
        _copy_kernel[(1,)](src, dst, 10, 0, BLOCK=16, MASKED=True)  # 6 lanes masked off
    assert torch.equal(dst, src)


@pytest.mark.parametrize("reach", [1, 6])
def test_an_access_past_a_tensor_fails_naming_its_kernel(reach):
    from triton_bounds import bounds_checked

    src, dst = torch.arange(10.0), torch.zeros(10)
    with bounds_checked(), pytest.raises(Exception, match="_copy_kernel: a load of"):
        _copy_kernel[(1,)](src, dst, 10, reach, BLOCK=16, MASKED=True)


def test_a_view_bounds_its_kernels_not_its_storage():
    from triton_bounds import bounds_checked

    storage = torch.arange(32.0)
    src, dst = storage[:10], torch.zeros(16)  # src's storage goes on, its view does not
    with bounds_checked(), pytest.raises(Exception, match="outside every tensor"):
        _copy_kernel[(1,)](src, dst, 10, 0, BLOCK=16, MASKED=False)
