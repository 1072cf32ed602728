"""The outlier-channel rewrite of ESM-2 checkpoints (models/random_weights/outliers.py): the fp32
features stay the same, the chosen channels really grow F-fold where int8 quantises them, and plain
per-token int8 degrades with F (the stress the benchmarks and GPU tests rely on)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cosine, proteins
from virnuc_hpc.encoders import load_esm2
from virnuc_hpc.encoders.esm2 import _torch_load, load_esm2_model, mean_residues, pad_batch, tokenize_many
from virnuc_hpc.encoders.files import RANDOM_WEIGHTS_FLAG
from virnuc_hpc.models.random_weights import write_random_esm2_checkpoint
from virnuc_hpc.models.random_weights.outliers import (OUTLIERS_FLAG, add_outlier_channels, outlier_channels,
                                                       write_outlier_checkpoint)
from virnuc_hpc.models.random_weights.outliers import main as outliers_main

LAYERS, DIM, HEADS, CHANNELS, SEED = 2, 128, 8, 4, 3
SEQS = proteins([48, 1, 166, 300, 50, 7], seed=5)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """The plain checkpoint (F = 1 is the file itself) and its variants at F = 10 and 100."""
    root = tmp_path_factory.mktemp("outliers")
    src = write_random_esm2_checkpoint(root / "plain.pt", layers=LAYERS, embed_dim=DIM, heads=HEADS, seed=1)
    return {1.0: src, **{f: write_outlier_checkpoint(src, root / f"f{f:g}.pt", f, CHANNELS, SEED)
                         for f in (10.0, 100.0)}}


@pytest.fixture(scope="module")
def fp32(files: dict[float, Path]) -> dict[float, np.ndarray]:
    return {f: load_esm2(str(path), device="cpu", precision="fp32").embed(SEQS) for f, path in files.items()}


def test_file_keeps_format_and_fp32_features(files: dict[float, Path], fp32: dict[float, np.ndarray]) -> None:
    plain, stressed = _torch_load(files[1.0]), _torch_load(files[100.0])
    assert list(stressed["model"]) == list(plain["model"])  # same names, same order
    args = stressed["cfg"]["model"]
    assert getattr(args, RANDOM_WEIGHTS_FLAG) is True
    assert getattr(args, OUTLIERS_FLAG) == {"factor": 100.0, "channels": CHANNELS, "seed": SEED}
    changed = {k for k in plain["model"] if not torch.equal(plain["model"][k], stressed["model"][k])}
    assert changed == {f"encoder.sentence_encoder.layers.{i}.{n}" for i in range(LAYERS) for n in (
        "self_attn_layer_norm.weight", "self_attn_layer_norm.bias", "final_layer_norm.weight",
        "final_layer_norm.bias", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
        "self_attn.v_proj.bias", "self_attn.out_proj.weight", "fc1.weight")}
    for f in (10.0, 100.0):
        cos = cosine(fp32[f], fp32[1.0])
        assert cos.min() >= 0.99999, (f, cos)
        assert np.abs(fp32[f] - fp32[1.0]).max() < 1e-3 * np.abs(fp32[1.0]).max()


def _channel_maxima(path: Path) -> dict[str, torch.Tensor]:
    """Per-channel max |input| of q_proj, fc1 and out_proj in every layer (fp32, padded forward)."""
    model = load_esm2_model(path)
    seen: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(model.layers):
        for name, module in (("q_proj", layer.self_attn.q_proj), ("fc1", layer.fc1),
                             ("out_proj", layer.self_attn.out_proj)):
            def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...], key: str = f"{i}.{name}") -> None:
                seen[key] = args[0].detach().abs().flatten(0, -2).amax(dim=0)
            module.register_forward_pre_hook(hook)
    tokens, lengths = pad_batch(tokenize_many(SEQS))
    with torch.inference_mode():
        mean_residues(model(tokens), lengths)
    return seen


def test_activations_entering_int8_gemms_have_f_times_larger_channels(files: dict[float, Path]) -> None:
    plain, stressed = _channel_maxima(files[1.0]), _channel_maxima(files[100.0])
    picks = outlier_channels(LAYERS, DIM, CHANNELS, SEED)
    for key in plain:
        layer, site = key.split(".")
        chosen = list(picks[int(layer)].value_rows if site == "out_proj" else picks[int(layer)].hidden)
        ratio = stressed[key] / plain[key]
        assert torch.allclose(ratio[chosen], torch.full((CHANNELS,), 100.0), rtol=1e-3), (key, ratio[chosen])
        rest = torch.ones(DIM, dtype=torch.bool)
        rest[chosen] = False
        assert torch.allclose(ratio[rest], torch.ones(DIM - CHANNELS), rtol=1e-4), key


def test_plain_int8_degrades_with_the_factor(files: dict[float, Path], fp32: dict[float, np.ndarray]) -> None:
    """Per-token int8 without smoothing: one scale per token, set by the outliers."""
    cos = {f: cosine(load_esm2(str(files[f]), device="cpu", precision="int8", int8_smoothing="none").embed(SEQS),
                     fp32[f]).min() for f in (1.0, 100.0)}
    assert cos[1.0] > 0.999, cos
    assert 1 - cos[100.0] > 10 * (1 - cos[1.0]) and cos[100.0] < 0.995, cos


def test_module_and_state_dict_give_the_same_rewrite(files: dict[float, Path]) -> None:
    model = load_esm2_model(files[1.0])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    stressed = add_outlier_channels(state, 30.0, CHANNELS, SEED)
    assert add_outlier_channels(model, 30.0, CHANNELS, SEED) is model
    assert all(torch.equal(v, stressed[k]) for k, v in model.state_dict().items())
    assert not torch.equal(stressed["layers.0.fc1.weight"], state["layers.0.fc1.weight"])
    assert outlier_channels(LAYERS, DIM, CHANNELS, SEED) == outlier_channels(LAYERS, DIM, CHANNELS, SEED)
    with pytest.raises(ValueError, match="no ESM-2 transformer layers"):
        add_outlier_channels({"x.weight": torch.ones(3)}, 10.0)
    with pytest.raises(ValueError, match="factor must be"):
        add_outlier_channels(state, 0.0)


def test_cli_writes_the_variant_and_refuses_bad_input(files: dict[float, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "sub" / "f100.pt"
    done = subprocess.run([sys.executable, "-m", "virnuc_hpc.models.random_weights.outliers", str(files[1.0]),
                           str(dst), "--factor", "100", "--channels", str(CHANNELS), "--seed", str(SEED)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "wrote" in done.stdout, done.stderr
    assert dst.read_bytes() == files[100.0].read_bytes()  # same arguments, same bytes
    assert [p.name for p in dst.parent.iterdir()] == ["f100.pt"]  # no temporary left behind
    half = write_random_esm2_checkpoint(tmp_path / "half.pt", layers=1, embed_dim=32, heads=4,
                                        dtype=torch.float16)
    out = str(tmp_path / "x.pt")
    for args, message in (([str(tmp_path / "missing.pt"), out, "--factor", "10"], "does not exist"),
                          ([str(files[1.0]), out, "--factor", "-1"], "factor must be"),
                          ([str(files[1.0]), out, "--factor", "10", "--channels", "0"], "channels must be"),
                          ([str(half), out, "--factor", "1e6"], "overflows torch.float16"),
                          ([str(tmp_path), out, "--factor", "10"], "only fair-esm .pt"),
                          ([str(files[1.0]), str(files[1.0]), "--factor", "10"], "DST must differ")):
        assert outliers_main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "x.pt").exists()
