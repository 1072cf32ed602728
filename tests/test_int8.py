"""Precision int8 (ESM-2's linear layers as int8 GEMMs): the quantisation, the GEMM's epilogue, the
packed encoder against fp32, and the settings that must refuse it. GPU tests compare the Triton
kernel with the CPU reference maths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import cosine, proteins
from virnuc_hpc.config import RunConfig
from virnuc_hpc.devices import activation_precision, resolve_precision
from virnuc_hpc.encoders import int8, load_dnabert, load_esm2
from virnuc_hpc.encoders.esm2_packed import PackedESM2Encoder




def test_weight_quantisation_is_per_output_channel() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 40) * torch.tensor([1e-3, 1.0, 5.0, 0.1, 30.0, 2.0])[:, None]
    q = int8.quantize_weight(w, torch.zeros(6), torch.float32)
    assert q.values.dtype == torch.int8 and q.values.is_contiguous()
    assert (q.values.abs().amax(dim=1) == 127).all()          # every row uses its full range
    back = q.values.float() * q.scale[:, None]
    assert ((back - w).abs() <= q.scale[:, None] / 2 + 1e-7).all()  # rounding error at most half a step


def test_row_quantisation_handles_zero_rows_and_extremes() -> None:
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [-1e4, 3.0, 1e4]])
    values, scale = int8.quantize_rows(x)
    assert torch.isfinite(scale).all() and (values[0] == 0).all()
    assert values[1].tolist() == [64, -127, 32] and values[2, 0] == -127 and values[2, 2] == 127


@pytest.mark.parametrize("gelu", ["none", "tanh", "erf"])
def test_int8_linear_is_exact_integer_product_with_epilogue(gelu: str) -> None:
    torch.manual_seed(1)
    a = torch.randint(-127, 128, (37, 96), dtype=torch.int8)
    w = torch.randint(-127, 128, (29, 96), dtype=torch.int8)
    sa, sw, bias = torch.rand(37) * 1e-3, torch.rand(29) * 1e-3, torch.randn(29)
    exact = (a.double() @ w.double().t()) * sa.double()[:, None] * sw.double() + bias.double()
    if gelu != "none":
        exact = F.gelu(exact, approximate="tanh" if gelu == "tanh" else "none")
    got = torch.ops.virnuc_hpc.int8_linear(a, sa, w, sw, bias, gelu)
    assert torch.allclose(got.double(), exact, rtol=1e-5, atol=1e-5)
    out, absmax = torch.ops.virnuc_hpc.int8_linear_absmax(a, sa, w, sw, bias, gelu)
    assert torch.equal(out, got) and torch.equal(absmax, got.abs().amax(dim=1))
    # the row maxima give the quantisation a reduction pass would
    values, scale = int8.quantize_rows(out)
    assert torch.equal(int8.absmax_scale(absmax), scale)
    assert torch.equal(int8.quantize_scaled(out, scale), values)
    # the quantisation op takes the known scales, or finds them, and never hands back an input
    for given in (scale, None):
        got, got_scale = torch.ops.virnuc_hpc.quantize(out, given)
        assert torch.equal(got, values) and torch.equal(got_scale, scale) and got_scale is not given
    with pytest.raises(ValueError, match="gelu must be one of"):
        int8.dequantize(torch.zeros(2, 2, dtype=torch.int32), sa[:2], sw[:2], bias[:2], "relu")


def test_quantised_linear_is_close_to_float() -> None:
    torch.manual_seed(2)
    x, w, b = torch.randn(64, 256), torch.randn(128, 256) / 16, torch.randn(128) / 10
    got = int8.linear(x, int8.quantize_weight(w, b, torch.float32))
    cos = F.cosine_similarity(got, F.linear(x, w, b), dim=1)
    assert cos.min() > 0.999


def test_precision_resolution() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("int8", cpu) == "int8"
    assert activation_precision("int8", cpu) == "fp32" and activation_precision("int8", cuda) == "fp16"
    assert activation_precision("bf16", cuda) == "bf16"


def test_config_refuses_int8_on_deepspeed() -> None:
    assert RunConfig(precision="int8").precision == "int8"
    with pytest.raises(ValueError, match="int8 runs on engine: native"):
        RunConfig(precision="int8", engine="deepspeed")


@pytest.fixture(scope="module")
def demo(demo_cache: Path):
    from virnuc_hpc.models.demo import ensure_demo_models
    return ensure_demo_models()


def test_packed_int8_encoder_on_cpu_matches_fp32(demo) -> None:
    """The int8 forward (masked attention, torch._int_mm) against the fp32 reference, lengths 1-1022,
    rows in input order; and DNABERT-S under int8 is its fp32 self on CPU."""
    esm2 = str(demo.esm2)
    seqs = proteins([300, 1, 48, 1022, 2, 166, 50, 5, 45])
    enc = load_esm2(esm2, device="cpu", precision="int8")
    assert isinstance(enc, PackedESM2Encoder) and enc.forward.quantized and enc.token_budget <= 1024
    ref = load_esm2(esm2, device="cpu", precision="fp32").embed(seqs)
    got = enc.embed(seqs)
    cos = cosine(got, ref)
    assert cos.min() > 0.999, cos
    assert np.abs(got - ref).max() > 0  # it really ran quantised
    # rows land at their input index: a shuffled input gives the same rows shuffled
    order = np.random.default_rng(3).permutation(len(seqs))
    assert np.allclose(enc.embed([seqs[i] for i in order]), got[order], atol=1e-5)
    dna = load_dnabert(str(demo.dnabert), device="cpu", precision="int8")
    assert dna.precision == "fp32"


def test_int8_refuses_host_weights(demo) -> None:
    """ZeRO offload reads weights through module forwards, which have no int8 layers: refused, clearly."""
    from virnuc_hpc.errors import ConfigError

    with pytest.raises(ConfigError, match="int8 needs the native engine"):
        load_esm2(str(demo.esm2), device="cpu", precision="int8", host_weights=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("m,k,n", [(1, 64, 32), (37, 96, 40), (300, 2560, 7680), (4099, 10240, 2560)])
@pytest.mark.parametrize("gelu", ["none", "tanh", "erf"])
def test_triton_kernel_equals_reference(m: int, k: int, n: int, gelu: str) -> None:
    torch.manual_seed(m)
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    sa, sw = torch.rand(m) * 1e-3, torch.rand(n) * 1e-3
    bias = torch.randn(n).half()
    ref = int8.dequantize(torch._int_mm(a, w.t()), sa, sw, bias.float(), gelu)
    got = torch.ops.virnuc_hpc.int8_linear(a.cuda(), sa.cuda(), w.cuda(), sw.cuda(), bias.cuda(), gelu)
    assert got.dtype == torch.float16 and got.shape == (m, n)
    assert torch.allclose(got.float().cpu(), ref, rtol=2e-3, atol=2e-3)
    out, absmax = torch.ops.virnuc_hpc.int8_linear_absmax(a.cuda(), sa.cuda(), w.cuda(), sw.cuda(), bias.cuda(), gelu)
    assert torch.equal(out, got)
    assert torch.allclose(absmax.cpu(), ref.abs().amax(dim=1), rtol=2e-3, atol=2e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("m,d", [(1, 64), (37, 2560), (4099, 10240), (300, 1000)])
def test_triton_quantisation_equals_reference(m: int, d: int) -> None:
    from virnuc_hpc.encoders import int8_triton

    assert (int8_triton.QMAX.value, int8_triton.TINY.value) == (int8.QMAX, int8.TINY)
    torch.manual_seed(d)
    x = (torch.randn(m, d) * torch.rand(m, 1) * 8).half()
    x[0] = 0   # an all-zero row: zeros at the floor scale, not NaN
    values, scale = int8.quantize_rows(x)
    for given in (None, scale):
        got, got_scale = torch.ops.virnuc_hpc.quantize(x.cuda(), None if given is None else given.cuda())
        assert torch.equal(got.cpu(), values) and torch.equal(got_scale.cpu(), scale)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("m,d", [(1, 64), (37, 2560), (4099, 2560), (300, 1000)])
@pytest.mark.parametrize("residual", [False, True])
def test_triton_layer_norm_quantisation_equals_reference(m: int, d: int, residual: bool) -> None:
    """The fused residual add + LayerNorm + quantisation against torch's three steps on the CPU: the
    sum bit for bit, scales to fp32 rounding, int8 values within one step where the LayerNorms'
    fp32 sums round differently (rarely)."""
    torch.manual_seed(d + residual)
    x = (torch.randn(m, d) * 4).half()
    r = (torch.randn(m, d) * 4).half() if residual else None
    w, b = torch.randn(d), torch.randn(d) * 0.1
    total, values, scale = int8.layer_norm_quantize(x, r, w, b, 1e-5)
    got_total, got_values, got_scale = int8.layer_norm_quantize(
        x.cuda(), None if r is None else r.cuda(), w.cuda(), b.cuda(), 1e-5)
    assert torch.equal(got_total.cpu(), total)   # x + r, or x itself
    torch.testing.assert_close(got_scale.cpu(), scale, rtol=1e-5, atol=0)
    steps = (got_values.cpu().int() - values.int()).abs()
    assert steps.max() <= 1 and (steps > 0).float().mean() < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("t,heads,head_dim", [(1, 2, 8), (300, 40, 64), (4099, 20, 16)])
def test_triton_rotary_equals_reference(t: int, heads: int, head_dim: int) -> None:
    from virnuc_hpc.encoders.esm2 import rotary_cos_sin
    from virnuc_hpc.encoders.esm2_packed import rotary_qk

    torch.manual_seed(t)
    qkv = (torch.randn(t, 3 * heads * head_dim) * 3).half()
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    cos, sin = rotary_cos_sin(torch.randint(0, 1024, (t,)), inv_freq)
    expected = rotary_qk(qkv, cos, sin, heads)
    got = rotary_qk(qkv.cuda(), cos.cuda(), sin.cuda(), heads)
    for e, g in zip(expected, got):
        assert g.shape == e.shape == (t, heads, head_dim)
        torch.testing.assert_close(g.cpu(), e, rtol=1e-3, atol=1e-4)   # fp16: one rounding step at most
    assert torch.equal(got[2].cpu(), expected[2])                        # v untouched


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_int8_encoder_matches_fp32(demo) -> None:
    esm2 = str(demo.esm2)
    seqs = proteins([1, 2, 5, 45, 48, 50, 60, 166, 300, 1022] * 20)
    enc = load_esm2(esm2, device="cuda", precision="int8", max_tokens=4096)
    assert isinstance(enc, PackedESM2Encoder) and enc.forward.quantized
    cos = cosine(enc.embed(seqs), load_esm2(esm2, device="cuda", precision="fp32").embed(seqs))
    assert cos.min() > 0.999, cos.min()


def test_dry_run_estimates_int8_faster_than_fp16() -> None:
    from virnuc_hpc.runtime.dryrun import dry_run, gpu_rate

    assert gpu_rate("H200", "int8")[0].tokens_per_s > gpu_rate("H200", "fp16")[0].tokens_per_s
    fasta = Path(__file__).resolve().parent.parent / "examples" / "demo.fasta"
    for precision in ("fp16", "int8"):
        config = RunConfig(expected_length=300, precision=precision, device="cuda")
        line = next(x for x in dry_run([str(fasta)], config, gpus=["NVIDIA H200"]).splitlines()
                    if x.startswith("GPU time"))
        assert ("(int8;" in line) == (precision == "int8"), line
