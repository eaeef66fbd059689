"""The suite's hooks in Triton's interpreter, which every Triton kernel runs under.

The memory checks (tests/triton_memory.py): an access past a tensor fails, masked-off and
in-bounds ones pass; a program reading back its own stores fails unless a barrier lies
between. The language patched once a launch (tests/triton_patch_once.py): a kernel's
helpers compute as they would patched each call, the language's own functions come back
after each launch, and a failed launch leaves nothing behind."""

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


# ----- the language patched once a launch


@triton.jit
def _halved(x):
    return x * 0.5


@triton.jit
def _plus_one_halved(x):
    return _halved(x + 1.0)


@triton.jit
def _helpers_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr, FAIL: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    # tl.zeros is a helper of triton.language's own, whose module names tl.core (which no
    # patch of this module's tl covers)
    x = tl.load(src_ptr + offsets, mask=offsets < n, other=0.0) + tl.zeros([BLOCK], tl.float32)
    tl.static_assert(FAIL == 0, "asked to fail")
    tl.store(dst_ptr + offsets, _plus_one_halved(_halved(x)), mask=offsets < n)


def _counting_patches(monkeypatch):
    """The number of times the interpreter's own patch runs, counted from now."""
    from triton.runtime import interpreter

    calls = []
    patch = interpreter._patch_lang

    def counted(fn):
        calls.append(fn)
        return patch(fn)

    monkeypatch.setattr(interpreter, "_patch_lang", counted)
    return calls


def _launch(src, fail=False):
    dst = torch.zeros_like(src)
    _helpers_kernel[(1,)](src, dst, src.numel(), BLOCK=16, FAIL=int(fail))
    return dst


def test_a_launch_patches_the_language_once_and_its_helpers_compute_alike(monkeypatch):
    from triton_patch_once import language_patched_once

    src = torch.arange(10.0)
    calls = _counting_patches(monkeypatch)
    plain = _launch(src)
    assert len(calls) == 5  # the launch, then each of its four helper calls
    del calls[:]
    with language_patched_once():
        once = _launch(src)
        again = _launch(src)
    assert len(calls) == 4  # a launch's, and tl.zeros's for tl.core
    expected = (src * 0.5 + 1.0) * 0.5
    assert torch.equal(plain, expected) and torch.equal(once, expected)
    assert torch.equal(again, expected)


def test_the_language_and_the_interpreter_come_back_after_each_launch():
    from triton.runtime import interpreter
    from triton_patch_once import language_patched_once

    load, patch, launch = tl.load, interpreter._patch_lang, interpreter.GridExecutor.__call__
    with language_patched_once():
        _launch(torch.arange(4.0))
        assert tl.load is load  # restored by the launch, as without the shim
        with pytest.raises(Exception, match="asked to fail"):
            _launch(torch.arange(4.0), fail=True)
        assert tl.load is load
        assert torch.equal(_launch(torch.ones(3)), torch.full((3,), 0.75))  # patched afresh
    assert interpreter._patch_lang is patch and interpreter.GridExecutor.__call__ is launch
