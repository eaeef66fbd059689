"""The interpreter's memory checks (tests/triton_memory.py), which the suite runs every
Triton kernel under: an access past a tensor fails, masked-off and in-bounds ones pass; a
program reading back its own stores fails unless a barrier lies between."""

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


@triton.jit
def _reverse_in_place_kernel(x_ptr, scratch_ptr, BLOCK: tl.constexpr, BARRIER: tl.constexpr):
    """Each program stores its block to scratch, then reads it back reversed (another
    thread's element on a GPU)."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(scratch_ptr + offsets, tl.load(x_ptr + offsets))
    if BARRIER:
        tl.debug_barrier()
    reversed_offsets = tl.program_id(0) * BLOCK + (BLOCK - 1 - tl.arange(0, BLOCK))
    tl.store(x_ptr + offsets, tl.load(scratch_ptr + reversed_offsets))


def test_in_bounds_and_masked_off_accesses_pass():
    from triton_memory import memory_checked

    src, dst = torch.arange(10.0), torch.zeros(10)
    with memory_checked():
        _copy_kernel[(1,)](src, dst, 10, 0, BLOCK=16, MASKED=True)  # 6 lanes masked off
    assert torch.equal(dst, src)


@pytest.mark.parametrize("reach", [1, 6])
def test_an_access_past_a_tensor_fails_naming_its_kernel(reach):
    from triton_memory import memory_checked

    src, dst = torch.arange(10.0), torch.zeros(10)
    with memory_checked(), pytest.raises(Exception, match="_copy_kernel: a load of"):
        _copy_kernel[(1,)](src, dst, 10, reach, BLOCK=16, MASKED=True)


def test_a_view_bounds_its_kernels_not_its_storage():
    from triton_memory import memory_checked

    storage = torch.arange(32.0)
    src, dst = storage[:10], torch.zeros(16)  # src's storage goes on, its view does not
    with memory_checked(), pytest.raises(Exception, match="outside every tensor"):
        _copy_kernel[(1,)](src, dst, 10, 0, BLOCK=16, MASKED=False)


def test_reading_back_ones_own_stores_needs_a_barrier():
    from triton_memory import memory_checked

    x, scratch = torch.arange(32.0), torch.zeros(32)
    with memory_checked():
        _reverse_in_place_kernel[(2,)](x, scratch, BLOCK=16, BARRIER=True)
    assert torch.equal(x, torch.cat([torch.arange(15.0, -1, -1), torch.arange(31.0, 15, -1)]))
    with memory_checked(), pytest.raises(Exception, match=r"no tl\.debug_barrier"):
        _reverse_in_place_kernel[(2,)](x, scratch, BLOCK=16, BARRIER=False)
