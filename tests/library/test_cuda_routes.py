"""What runs on CUDA tensors, checked without a GPU: the Python that only CUDA inputs reach
(the routing to the Triton kernels and the fused attention, the device-side parameter
fills), run on fake CUDA tensors (``FakeTensorMode``: shapes and devices, no data). A read
of a tensor's value in Python, which would wait for the device, raises there.

Two things a CPU build of torch cannot fake on a CUDA device: autograd and Python indexing
(``t[..., 0]``; use ``select``), so only forwards run here; the GPU tests run the rest.
"""

import ast
import functools
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import sparsegen as sg
from sparsegen import attention
from sparsegen import nn as snn
from sparsegen.attention import scaled_dot_product_attention

ROOT = Path(__file__).resolve().parents[2] / "src" / "sparsegen"


class _Calls(TorchDispatchMode):
    """The operators called, with their string arguments (algorithm, scale_from, mode) and
    their tensor arguments' sizes."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        strings = [a for a in args if isinstance(a, str)]
        sizes = [a.numel() for a in args if isinstance(a, torch.Tensor)]
        self.calls.append((str(func), strings, sizes))
        return func(*args, **(kwargs or {}))

    def named(self, fragment):
        return [call for call in self.calls if fragment in call[0]]


def _on_fake_cuda(run):
    with FakeTensorMode(allow_non_fake_inputs=True), _Calls() as calls:
        run()
    return calls


MAPPINGS = {
    "sparsemax": ("given", lambda x: sg.sparsemax(x)),
    "sparsegen_lin": ("given", lambda x: sg.sparsegen_lin(x, lam=0.5)),
    "sparsegen_exp": ("given", lambda x: sg.sparsegen_exp(x, lam=0.5)),
    "sparsegen_sq": ("given", lambda x: sg.sparsegen_sq(x, lam=0.5)),
    "sparsecone": ("cone", lambda x: sg.sparsecone(x, q=1.0)),
    "sparsehourglass": ("hourglass", lambda x: sg.sparsehourglass(x, q=1.0)),
    "sum_normalization_pp": ("given", lambda x: sg.sum_normalization_pp(x)),
    "masked": ("given", lambda x: sg.sparsemax(x, mask=torch.ones_like(x, dtype=torch.bool))),
}


@pytest.mark.parametrize("name", MAPPINGS)
def test_every_mapping_projects_by_the_triton_kernels_on_cuda(name):
    scale_from, mapping = MAPPINGS[name]

    def run():
        x = torch.randn(4, 300, device="cuda")
        assert mapping(x).device.type == "cuda"

    (call,) = _on_fake_cuda(run).named("sparsegen.project")
    assert call[1] == [scale_from, "triton"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "mapping",
    [
        sg.sparsemax,
        functools.partial(sg.sparsegen_lin, lam=0.5),
        snn.SparsegenLin(lam=-1.0),
        functools.partial(sg.sparsecone, q=1.0),
        snn.Sparsehourglass(q=0.5),
    ],
)
def test_half_scores_reach_the_triton_kernels_without_a_float32_copy(mapping, dtype):
    # The kernels read half scores and compute in float32: a float32 copy in and a cast
    # out would move five times the bytes the projection moves.
    def run():
        x = torch.randn(64, 300, device="cuda").to(dtype)
        assert mapping(x).dtype == dtype

    calls = _on_fake_cuda(run)
    projections = calls.named("sparsegen.project")
    assert projections and all(call[1][-1] == "triton" for call in projections)
    conversions = [call for call in calls.named("_to_copy") if call[2] == [64 * 300]]
    assert len(conversions) == 1  # randn's float32 to the half type, none after it


ATTENTION = {
    "sparsemax": sg.sparsemax,
    "sparsegen_lin": functools.partial(sg.sparsegen_lin, lam=0.3),
    "sparsehourglass": snn.Sparsehourglass(q=0.5),
    "sparsegen_exp": snn.SparsegenExp(lam=0.2),
}


@pytest.mark.parametrize("name", ATTENTION)
def test_sparse_attention_takes_the_fused_kernel_on_cuda(name):
    def run():
        q, k, v = (torch.randn(2, 4, 64, 32, device="cuda") for _ in range(3))
        keep = torch.ones(2, 1, 1, 64, dtype=torch.bool, device="cuda")
        out = scaled_dot_product_attention(q, k, v, keep, mapping=ATTENTION[name])
        assert out.shape == (2, 4, 64, 32)

    calls = _on_fake_cuda(run)
    assert len(calls.named("sparsegen.attention")) == 1
    assert not calls.named("sparsegen.project")  # the scores were never built


@pytest.mark.parametrize("implementation", ["auto", "fused"])
def test_export_on_cuda_keeps_attention_portable_unless_fused_is_asked(implementation, monkeypatch):
    # (torch.export itself cannot run the unfused path's ops on fake CUDA tensors in a
    # CPU build: its flag is set here instead)
    monkeypatch.setattr(attention, "exporting", lambda: True)
    monkeypatch.setattr(attention, "_warned", set())

    def run():
        q, k, v = (torch.randn(2, 4, 64, 32, device="cuda") for _ in range(3))
        out = scaled_dot_product_attention(q, k, v, implementation=implementation)
        assert out.shape == (2, 4, 64, 32)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calls = _on_fake_cuda(run)
    fused = len(calls.named("sparsegen.attention"))
    messages = [str(w.message) for w in caught if "sparsegen attention" in str(w.message)]
    if implementation == "auto":
        assert fused == 0 and calls.named("sparsegen.project")
        assert len(messages) == 1 and "torch.export" in messages[0]
    else:
        assert fused == 1 and not messages


def test_softmax_attention_is_torchs_sdpa_on_cuda():
    def run():
        q, k, v = (torch.randn(2, 4, 64, 32, device="cuda") for _ in range(3))
        scaled_dot_product_attention(q, k, v, mapping=sg.softmax, is_causal=True)

    sdpa = torch.nn.functional.scaled_dot_product_attention
    with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", wraps=sdpa) as spy:
        calls = _on_fake_cuda(run)
    assert spy.call_count == 1
    assert not calls.named("sparsegen")


def test_multihead_attention_without_weights_takes_the_fused_kernel_on_cuda():
    module = snn.MultiheadAttention(32, 4, mapping="sparsemax", batch_first=True)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, _Calls() as calls:
        # (a fake module can be neither initialised nor moved on a CUDA device here: its
        # parameters are faked there one by one)
        cuda = torch.device("cuda")
        parameters = {
            name: mode.fake_tensor_converter.from_meta_and_device(mode, p.detach().to("meta"), cuda)
            for name, p in module.named_parameters()
        }
        x = torch.randn(2, 16, 32, device="cuda")
        output, weights = torch.func.functional_call(
            module, parameters, (x, x, x), {"need_weights": False}
        )
    assert output.shape == (2, 16, 32) and output.device.type == "cuda" and weights is None
    assert len(calls.named("sparsegen.attention")) == 1


# Copies of host data to a device wait for it (``torch.tensor(x, device=...)``,
# ``as_tensor`` likewise, ``new_tensor``): the library fills on the device instead
# (``torch.full``).
def _copies_host_data_to_a_device(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    if node.func.attr == "new_tensor":
        return True
    on_device = any(keyword.arg == "device" for keyword in node.keywords)
    return node.func.attr in ("tensor", "as_tensor") and on_device


def test_the_package_never_copies_python_numbers_to_a_device():
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in ROOT.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if _copies_host_data_to_a_device(node)
    ]
    assert not found


class _Copies(TorchDispatchMode):
    """The copies to a CUDA device and whether each is queued (``non_blocking``)."""

    def __init__(self):
        super().__init__()
        self.queued = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if "_to_copy" in str(func) and device is not None and torch.device(device).type == "cuda":
            self.queued.append(bool(kwargs.get("non_blocking", False)))
        return func(*args, **kwargs)


@pytest.mark.parametrize(
    "call",
    [
        lambda x, host: sg.sparsegen_lin(x, lam=host.select(-1, 0).unsqueeze(-1) * 0.5),
        lambda x, host: sg.sparsehourglass(x, q=host.select(-1, 0).unsqueeze(-1) + 1),
        lambda x, host: sg.sparsemax(x, mask=host > 0),
    ],
    ids=["lam", "q", "mask"],
)
def test_host_parameters_and_masks_are_queued_to_the_device_not_waited_for(call):
    # A CPU λ, q or mask beside CUDA scores was copied with a blocking .to(device): a host
    # synchronisation on every call. Queued (non_blocking) from pageable memory, the copy
    # is staged at once and the host goes on.
    host = torch.rand(4, 300)
    with FakeTensorMode(allow_non_fake_inputs=True), _Copies() as copies:
        call(torch.randn(4, 300, device="cuda"), host)
    assert copies.queued and all(copies.queued)
