"""Selective scan: the torch backend against the naive reference (values and every gradient), backend choice."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

from mvmlm.models import selective_scan as ss
from mvmlm.models.selective_scan import selective_scan, selective_scan_reference, selective_scan_torch

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# mamba-ssm tests/ops/test_selective_scan.py: (rtol, atol) of the output; gradients scaled per argument below
TOL = {torch.float32: (6e-4, 2e-3), torch.float64: (1e-9, 1e-9), torch.bfloat16: (3e-2, 5e-2)}


def make_inputs(bc: str, dtype=torch.float32, batch=2, dim=8, dstate=8, length=100, groups=2, optional=True, seed=0):
    """Inputs as mamba-ssm's tests draw them; ``bc`` = constant | variable | grouped."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0, normal=True):
        t = torch.randn(*shape, generator=gen) if normal else torch.rand(*shape, generator=gen)
        return (t * scale + shift).to(dtype).requires_grad_()

    bc_shape = {
        "constant": (dim, dstate),
        "variable": (batch, dstate, length),
        "grouped": (batch, groups, dstate, length),
    }
    inputs = dict(
        u=rand(batch, dim, length),
        delta=rand(batch, dim, length, scale=0.5, normal=False),
        A=rand(dim, dstate, scale=-0.5, normal=False),
        B=rand(*bc_shape[bc]),
        C=rand(*bc_shape[bc]),
    )
    if optional:
        inputs.update(D=rand(dim), z=rand(batch, dim, length), delta_bias=rand(dim, scale=0.5, normal=False))
    return inputs


def run_both(inputs: dict, chunk_size: int, softplus: bool = True):
    """(torch backend, reference) outputs and gradients for the same random cotangents."""
    results = []
    for fn, kw in ((selective_scan_torch, {"chunk_size": chunk_size}), (selective_scan_reference, {})):
        out, last = fn(**inputs, delta_softplus=softplus, return_last_state=True, **kw)
        gen = torch.Generator().manual_seed(1)
        g_out = torch.randn(out.shape, generator=gen).to(out.dtype)
        g_last = torch.randn(last.shape, generator=gen).to(last.dtype)
        grads = torch.autograd.grad([out, last], list(inputs.values()), [g_out, g_last])
        results.append((out, last, dict(zip(inputs, grads, strict=True))))
    return results


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bc", ["constant", "variable", "grouped"])
def test_torch_backend_matches_reference_values_and_all_gradients(bc, dtype):
    inputs = make_inputs(bc, dtype)
    (out, last, grads), (ref_out, ref_last, ref_grads) = run_both(inputs, chunk_size=32)  # 100 = 3 * 32 + 4
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(out, ref_out, rtol=rtol, atol=atol)
    torch.testing.assert_close(last, ref_last, rtol=rtol, atol=atol)
    rtolw, atolw = max(1e-3, rtol), max(1e-3, atol)  # z is used: mamba raises the weight tolerances to rtol/atol
    if dtype == torch.float64:
        rtolw = atolw = 1e-9
    scale = {
        "u": (2 * rtol, 2 * atol),
        "delta": (5 * rtol, 10 * atol),
        "B": (rtol, atol) if bc != "constant" else (rtolw, atolw),
        "C": (rtol, atol) if bc != "constant" else (rtolw, atolw),
        "A": (rtolw, 5 * atolw),
        "D": (rtolw, atolw),
        "z": (rtolw, atolw),
        "delta_bias": (rtolw, atolw),
    }
    assert set(grads) == set(NAMES)
    for name in NAMES:
        assert grads[name].shape == inputs[name].shape and grads[name].dtype == dtype, name
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=scale[name][0], atol=scale[name][1], msg=name)


def test_without_optional_arguments_matches_reference():
    inputs = make_inputs("variable", torch.float64, optional=False, length=20)
    (out, last, grads), (ref_out, ref_last, ref_grads) = run_both(inputs, chunk_size=6, softplus=False)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(last, ref_last)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)


def test_gradcheck_against_finite_differences():
    inputs = make_inputs("grouped", torch.float64, batch=1, dim=4, dstate=2, length=7, seed=3)
    names = list(inputs)

    def fn(*args):
        return selective_scan_torch(
            **dict(zip(names, args, strict=True)), delta_softplus=True, return_last_state=True, chunk_size=3
        )

    assert torch.autograd.gradcheck(fn, tuple(inputs.values()))


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_chunk_size_does_not_change_the_result(chunk_size):
    inputs = {k: v.detach() for k, v in make_inputs("grouped", torch.float64, length=50).items()}
    base = selective_scan_torch(**inputs, delta_softplus=True, chunk_size=50)
    torch.testing.assert_close(selective_scan_torch(**inputs, delta_softplus=True, chunk_size=chunk_size), base)


def test_half_precision_input_returns_its_dtype_and_matches_reference():
    inputs = {k: v.detach() for k, v in make_inputs("variable", torch.float32, length=40).items()}
    for name in ("u", "delta", "z", "B", "C"):
        inputs[name] = inputs[name].bfloat16()
    out = selective_scan_torch(**inputs, delta_softplus=True, chunk_size=16)
    assert out.dtype == torch.bfloat16
    rtol, atol = TOL[torch.bfloat16]
    torch.testing.assert_close(out, selective_scan_reference(**inputs, delta_softplus=True), rtol=rtol, atol=atol)


def test_no_grad_forward_returns_output_and_last_state():
    inputs = {k: v.detach() for k, v in make_inputs("variable", torch.float64, optional=False, length=30).items()}
    with torch.no_grad():
        out, last = selective_scan_torch(**inputs, return_last_state=True, chunk_size=8)
    assert not out.requires_grad and out.shape == inputs["u"].shape and last.shape == (2, 8, 8)
    ref_out, ref_last = selective_scan_reference(**inputs, return_last_state=True)
    torch.testing.assert_close(last, ref_last)
    torch.testing.assert_close(out, ref_out)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(delta=torch.zeros(2, 8, 99)), "delta shape"),
        (dict(B=torch.zeros(2, 3, 8, 100), C=torch.zeros(2, 3, 8, 100)), "not divisible"),
        (dict(B=torch.zeros(2, 2, 8, 100), C=torch.zeros(2, 4, 8, 100)), "different numbers of groups"),
        (dict(C=torch.zeros(2, 8, 99)), "C must be"),
        (dict(A=torch.zeros(7, 8)), "A must be"),
        (dict(D=torch.zeros(9)), "D must be"),
        (dict(u=torch.zeros(2, 8)), "u must be"),
    ],
)
def test_bad_shapes_are_refused_with_the_argument_named(change, message):
    inputs = {k: v.detach() for k, v in make_inputs("variable").items()}
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs)


@pytest.fixture
def no_kernel(monkeypatch):
    """Pretend mamba-ssm is absent (it is on CPU machines; on a GPU machine it may be installed)."""
    monkeypatch.setattr(ss, "_kernel", lambda: (None, "ModuleNotFoundError: No module named 'selective_scan_cuda'"))
    monkeypatch.delenv(ss.ENV_VAR, raising=False)


def test_cuda_backend_without_mamba_ssm_names_the_extra(no_kernel, monkeypatch):
    inputs = {k: v.detach() for k, v in make_inputs("variable").items()}
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[cuda\]'"):
        selective_scan(**inputs, backend="cuda")
    monkeypatch.setenv(ss.ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match=rf"{ss.ENV_VAR}.*pip install -e '\.\[cuda\]'"):
        selective_scan(**inputs)


def test_auto_uses_torch_and_logs_the_choice_once(no_kernel, monkeypatch, caplog):
    monkeypatch.setattr(ss, "_LOGGED", set())
    inputs = {k: v.detach() for k, v in make_inputs("variable", torch.float64).items()}
    with caplog.at_level(logging.INFO, logger=ss.__name__):
        out = selective_scan(**inputs, delta_softplus=True, backend="auto")
        selective_scan(**inputs, delta_softplus=True)
    torch.testing.assert_close(out, selective_scan_reference(**inputs, delta_softplus=True))
    lines = [r.getMessage() for r in caplog.records if "selective scan backend" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("selective scan backend: torch (auto: no mamba-ssm kernel")


def test_argument_overrides_environment_and_bad_names_are_refused(no_kernel, monkeypatch):
    u = torch.zeros(1, 2, 3)
    monkeypatch.setenv(ss.ENV_VAR, "cuda")
    assert ss.resolve_backend(u, "torch") == "torch"
    monkeypatch.setenv(ss.ENV_VAR, "triton")
    with pytest.raises(ValueError, match=f"'triton' from the environment variable {ss.ENV_VAR}"):
        ss.resolve_backend(u)
    with pytest.raises(ValueError, match="expected one of auto, cuda, torch"):
        ss.resolve_backend(u, "fast")


def test_kernel_probe_needs_the_compiled_extension(monkeypatch):
    """mamba-ssm's newer releases import without ``selective_scan_cuda``: that is not a kernel."""
    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = lambda *a, **k: None
    interface.selective_scan_cuda = None
    for name, module in [
        ("mamba_ssm", types.ModuleType("mamba_ssm")),
        ("mamba_ssm.ops", types.ModuleType("ops")),
        ("mamba_ssm.ops.selective_scan_interface", interface),
        ("selective_scan_cuda", None),
    ]:
        monkeypatch.setitem(sys.modules, name, module)
    ss._kernel.cache_clear()
    try:
        assert not ss.cuda_kernel_available()
        monkeypatch.setitem(sys.modules, "selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
        ss._kernel.cache_clear()
        assert ss.cuda_kernel_available()
        with pytest.raises(RuntimeError, match="for tensors on cpu"):
            ss.resolve_backend(torch.zeros(1, 2, 3), "cuda")
        assert ss.resolve_backend(torch.zeros(1, 2, 3), "auto") == "torch"  # CPU tensors never go to the kernel
    finally:
        ss._kernel.cache_clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_cuda_tensors_match_the_reference(backend):
    if backend == "cuda" and not ss.cuda_kernel_available():
        pytest.skip("mamba-ssm kernel not installed")
    inputs = {k: v.detach().cuda().requires_grad_() for k, v in make_inputs("grouped", length=300).items()}
    out = selective_scan(**inputs, delta_softplus=True, backend=backend)
    ref = selective_scan_reference(**inputs, delta_softplus=True)
    torch.testing.assert_close(out, ref, rtol=6e-4, atol=2e-3)
    grads = torch.autograd.grad(out.sum(), list(inputs.values()))
    ref_grads = torch.autograd.grad(ref.sum(), list(inputs.values()))
    for name, g, r in zip(inputs, grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=5e-3, atol=2e-2, msg=name)
