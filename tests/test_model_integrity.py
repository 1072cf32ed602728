"""Model files are trusted by their bytes only: checksums, non-finite weights, crafted tensor views."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import DEMO, DEMO_FASTA, cli, shared_scheduler
from virnuc_hpc.models.classifier import MLPClassifier, load_classifier
from virnuc_hpc.models.demo import ensure_demo_models
from virnuc_hpc.encoders.esm2 import load_esm2_model
from virnuc_hpc.errors import ModelFileError
from virnuc_hpc.models.resolve import ModelFile, hash_models
from virnuc_hpc.models.random_weights import write_random_classifier, write_random_esm2_checkpoint


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rewrite_in_place(target: Path, source: Path) -> None:
    """Overwrite target's bytes with source's (same size), keeping its inode and its mtime."""
    st = target.stat()
    data = source.read_bytes()
    assert len(data) == st.st_size and data != target.read_bytes()
    with open(target, "r+b") as fh:
        fh.write(data)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.fixture
def models(demo_cache: Path, tmp_path: Path) -> dict[str, Path]:
    """A copy of the demo models (real formats), this test's own to rewrite."""
    m = ensure_demo_models()
    shutil.copytree(m.esm2.parent, tmp_path / "models")
    return {role: tmp_path / "models" / p.name
            for role, p in {"esm2": m.esm2, "dnabert": m.dnabert, "classifier": m.classifier}.items()}


@pytest.fixture
def few_reads(tmp_path: Path) -> Path:
    """The first reads of the demo input: enough for several bags, quick to run three times."""
    text = DEMO_FASTA.read_text()
    path = tmp_path / "few.fasta"
    path.write_text(">" + ">".join(text.split(">")[1:13]))
    return path


def other_weights(role: str, models: dict[str, Path], tmp_path: Path) -> Path:
    """Same format and size as the demo model for ``role``, other weights (another seed); same file
    name too, as torch.save names the archive's folder after it."""
    path = tmp_path / "other" / models[role].name
    path.parent.mkdir(exist_ok=True)
    if role == "classifier":
        return write_random_classifier(path, input_dim=128 + 320, hidden_dim=512, seed=1)
    return write_random_esm2_checkpoint(path, layers=6, embed_dim=320, heads=20, seed=1)


@pytest.mark.parametrize("role", ["classifier", "esm2"])
def test_weights_rewritten_in_place_with_restored_mtime_are_detected(
        role: str, models: dict[str, Path], few_reads: Path, tmp_path: Path, client) -> None:
    outdir = tmp_path / "out"
    args = ["predict", str(few_reads), "-o", str(outdir), *DEMO, "--esm2-model", str(models["esm2"]),
            "--dnabert-model", str(models["dnabert"]), "--classifier", str(models["classifier"]),
            *shared_scheduler(client)]  # one cluster: its workers load each run's models afresh
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    old = sha256(models[role])
    assert json.loads((outdir / "run.json").read_text())["models"][role]["sha256"] == old

    rewrite_in_place(models[role], other_weights(role, models, tmp_path))
    new = sha256(models[role])
    assert new != old

    proc = cli(*args)  # the same directory: its bags were made with the old weights
    if proc.returncode == 0:  # allowed only if every bag was recomputed with the new weights
        run = json.loads((outdir / "run.json").read_text())
        assert run["models"][role]["sha256"] == new
        assert run["bags"]["computed_now"] == run["bags"]["total"]
    else:
        assert proc.returncode == 2, proc.stderr
        assert "holds results of a run with other inputs or settings" in proc.stderr

    proc = cli(*args, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    run = json.loads((outdir / "run.json").read_text())
    assert run["models"][role]["sha256"] == new != old
    assert run["bags"]["computed_now"] == run["bags"]["total"] > 0


def test_hash_models_reads_every_file_every_time(tmp_path: Path) -> None:
    """Several files at once (threads), each hashed from its bytes, whatever its size and mtime say."""
    files = {}
    for i in range(4):
        files[f"m{i}"] = tmp_path / f"m{i}.pth"
        torch.manual_seed(i)
        torch.save(MLPClassifier(64, 8).state_dict(), files[f"m{i}"])
    files["big"] = tmp_path / "big.bin"  # over one 16 MB block, not a multiple of it
    files["big"].write_bytes(os.urandom((1 << 24) + 12345))
    located = {role: ModelFile(role, str(p), str(p), str(p), "", False) for role, p in files.items()}
    first = hash_models(located)
    assert {r: m.sha256 for r, m in first.items()} == {r: sha256(p) for r, p in files.items()}

    (tmp_path / "x").mkdir()
    torch.manual_seed(9)
    torch.save(MLPClassifier(64, 8).state_dict(), tmp_path / "x" / "m0.pth")
    rewrite_in_place(files["m0"], tmp_path / "x" / "m0.pth")
    again = hash_models(located)
    assert again["m0"].sha256 == sha256(files["m0"]) != first["m0"].sha256
    assert all(again[r].sha256 == first[r].sha256 for r in files if r != "m0")


# --- non-finite weights -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("whole_module", [False, True])
def test_classifier_with_non_finite_weights_is_refused(tmp_path: Path, value: float,
                                                       whole_module: bool) -> None:
    model = MLPClassifier(hidden_dim=16).eval()
    good = tmp_path / "good.pth"
    torch.save(model if whole_module else model.state_dict(), good)
    load_classifier(good)  # control: the same file without the bad value loads
    with torch.no_grad():
        model.output_layer.weight[1, 3] = value
    path = tmp_path / "500_model.pth"
    torch.save(model if whole_module else model.state_dict(), path)
    with pytest.raises(ModelFileError, match=r"500_model\.pth: 'output_layer\.weight' holds 1 NaN or inf"):
        load_classifier(path)


def test_pipeline_refuses_a_non_finite_classifier(models: dict[str, Path], few_reads: Path,
                                                  tmp_path: Path) -> None:
    sd = torch.load(models["classifier"], weights_only=True)
    sd["bn1.running_var"][0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    outdir = tmp_path / "out"
    proc = cli("predict", str(few_reads), "-o", str(outdir), *DEMO, "--esm2-model", str(models["esm2"]),
               "--dnabert-model", str(models["dnabert"]), "--classifier", str(path))
    assert proc.returncode == 2, proc.stderr
    assert "nan.pth: 'bn1.running_var' holds 1 NaN or infinite value" in proc.stderr
    assert not (outdir / "run.json").exists()


def esm2_checkpoint_with(path: Path, tmp_path: Path, key: str, value: float) -> Path:
    """A random ESM-2 checkpoint in the fair-esm format with one weight set to ``value``."""
    source = write_random_esm2_checkpoint(tmp_path / "src.pt", layers=2, embed_dim=64, heads=4, seed=0)
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(source, weights_only=True)
    data["model"][key][0, 0] = value
    torch.save(data, path)
    return path


NAN_KEY = "encoder.sentence_encoder.layers.1.fc1.weight"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_esm2_checkpoint_with_non_finite_weights_is_refused(tmp_path: Path, value: float) -> None:
    path = esm2_checkpoint_with(tmp_path / "esm2_bad.pt", tmp_path, NAN_KEY, value)
    with pytest.raises(ModelFileError, match=r"esm2_bad\.pt: weights hold NaN.*'layers\.1\.fc1\.weight'"):
        load_esm2_model(path)
    with pytest.raises(ModelFileError, match=r"layers\.1\.fc1\.weight"):
        load_esm2_model(path, dtype=torch.float16)


def test_esm2_weight_that_only_overflows_fp16_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    path = esm2_checkpoint_with(tmp_path / "esm2_big.pt", tmp_path, NAN_KEY, 1e6)  # finite in fp32
    model = load_esm2_model(path, dtype=torch.float16)
    assert torch.isinf(model.layers[1].fc1.weight).any()  # the cast overflowed, the file is fine
    load_esm2_model(path)


# --- crafted tensor views -----------------------------------------------------------------------

HUGE = 40_000  # rows of a 3328-wide fp32 weight: 533 MB once copied into a model


def write_crafted(path: Path, kind: str, rows: int) -> None:
    """A classifier file of a few kilobytes whose tensors are views claiming ``rows`` x 3328 floats:
    stride 0 over one stored element, or rows overlapping one element apart."""
    def one(*shape: int) -> torch.Tensor:
        return torch.zeros(1).expand(*shape)

    tensors = {"hidden_layer.weight": one(rows, 3328), "hidden_layer.bias": one(rows),
               "bn1.weight": one(rows), "bn1.bias": one(rows), "bn1.running_mean": one(rows),
               "bn1.running_var": torch.ones(1).expand(rows), "output_layer.weight": one(2, rows),
               "output_layer.bias": one(2)}
    if kind == "overlapping":
        tensors["hidden_layer.weight"] = torch.zeros(rows + 3328).as_strided((rows, 3328), (1, 1))
    if kind != "whole_module":
        torch.save({**tensors, "bn1.num_batches_tracked": torch.tensor(1)}, path)
        return
    model = MLPClassifier(3328, 1)  # pickled whole, as the shipped files are
    for key, value in tensors.items():
        module, name = key.split(".")
        holder = getattr(model, module)
        if name in holder._parameters:
            holder._parameters[name] = nn.Parameter(value, requires_grad=False)
        else:
            holder._buffers[name] = value
    torch.save(model, path)


# Loads it the way a worker does and reports the peak resident memory of the process.
LOAD = r"""
import sys
from virnuc_hpc.models.classifier import load_classifier
from virnuc_hpc.errors import ModelFileError

def peak_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

before = peak_mb()
try:
    load_classifier(sys.argv[1])
    outcome = "loaded"
except ModelFileError as exc:
    outcome = f"refused: {exc}"
print(f"{before:.1f} {peak_mb():.1f} {outcome}")
"""


@pytest.mark.parametrize("kind", ["state_dict", "whole_module", "overlapping"])
def test_crafted_views_are_refused_before_anything_is_materialised(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "crafted.pth"
    write_crafted(path, kind, HUGE)
    assert path.stat().st_size < 300_000  # a few KB claiming half a gigabyte
    proc = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    before, after, outcome = proc.stdout.split(" ", 2)
    grown = float(after) - float(before)
    assert grown < 64, f"loading grew the peak RSS by {grown:.0f} MB ({outcome.strip()})"
    assert float(after) < 450, f"peak RSS {after} MB"
    refused = "refused: crafted.pth: 'hidden_layer.weight' is a view of shape (40000, 3328)"
    assert outcome.startswith(refused), outcome
    assert "stored bytes" in outcome


def test_contiguous_tensors_with_shared_storage_still_load(tmp_path: Path) -> None:
    """The layout check refuses views that claim more than is stored, not ordinary saved weights."""
    model = MLPClassifier(hidden_dim=16).eval()
    sd = model.state_dict()
    both = torch.cat([sd["bn1.weight"], sd["bn1.bias"]])
    sd["bn1.weight"], sd["bn1.bias"] = both[:16], both[16:]  # one storage, offset views, as slicing makes
    torch.save(sd, tmp_path / "shared.pth")
    clf = load_classifier(tmp_path / "shared.pth")
    assert torch.equal(clf.model.bn1.bias, model.bn1.bias)
