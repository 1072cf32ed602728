"""Classifier loading: parity with VirNucPro's pickled module, and refusal of anything else."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from virnuc_hpc.outputs.calls import labels_from_proba
from virnuc_hpc.models.classifier import MLPClassifier, check_chunk_size, load_classifier
from virnuc_hpc.errors import ModelFileError, ModelNotFoundError
from virnuc_hpc.models.random_weights.classifier import write_random_classifier

# Stands in for VirNucPro's training/prediction scripts: the class lives in __main__ (and, for the
# other files, in modules named `units` and `mymodels`), the model is saved with torch.save(model),
# and the expected probabilities come from that very object in eval mode.
ORIGINAL = r"""
import sys, types
from pathlib import Path
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class MLPClassifier(nn.Module):
    def __init__(self, input_dim, hidden_dim, num_class):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.dropout = nn.Dropout(0.5)
        self.output_layer = nn.Linear(hidden_dim, num_class)

    def forward(self, x):
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = F.relu(x)
        x = self.dropout(x)
        x = self.output_layer(x)
        return x


class Smuggled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"__import__('pathlib').Path({self.marker!r}).touch()",))


out = Path(sys.argv[1])
torch.manual_seed(1234)
model = MLPClassifier(3328, 512, 2)
with torch.no_grad():
    model.bn1.weight.uniform_(0.5, 1.5)
    model.bn1.bias.normal_(0, 0.1)
    model.bn1.running_mean.normal_(0, 0.3)
    model.bn1.running_var.uniform_(0.05, 0.5)
model.eval()
features = torch.randn(257, 3328) * 0.5
with torch.no_grad():
    proba = torch.softmax(model(features), dim=1)
np.save(out / "features.npy", features.numpy())
np.save(out / "proba.npy", proba.numpy())

torch.save(model, out / "500_model.pth")
torch.save(model.state_dict(), out / "state_dict.pth")
torch.save({"epoch": 7, "model_state_dict": model.state_dict()}, out / "checkpoint.pth")

for modname in ("units", "mymodels"):  # the same class, as if imported from a module
    mod = types.ModuleType(modname)
    cls = type("MLPClassifier", (MLPClassifier,), {"__module__": modname})
    mod.MLPClassifier = cls
    sys.modules[modname] = mod
    model.__class__ = cls
    torch.save(model, out / f"{modname}_model.pth")
model.__class__ = MLPClassifier

# A genuine-looking module that also carries an eval payload; the control copy proves it is live.
model.extra = Smuggled(str(out / "control_marker"))
torch.save(model, out / "control.pth")
torch.load(out / "control.pth", weights_only=False)
model.extra = Smuggled(str(out / "pwned"))
torch.save(model, out / "smuggled.pth")

# Only allowlisted classes, but not the classifier's structure.
del model.extra
model.bn1 = nn.Dropout(0.1)
torch.save(model, out / "misshapen.pth")
"""


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("original")
    proc = subprocess.run([sys.executable, "-c", ORIGINAL, str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out


def test_original_whole_module_pickle_matches_its_eval_output(original: Path) -> None:
    path = original / "500_model.pth"
    clf = load_classifier(path)
    proba = clf.predict_proba(np.load(original / "features.npy"))
    expected = np.load(original / "proba.npy")
    assert proba.dtype == np.float32 and proba.shape == (257, 2)
    np.testing.assert_array_equal(proba, expected)
    assert (clf.input_dim, clf.hidden_dim) == (3328, 512)
    assert clf.path == path
    assert clf.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not clf.model.training


@pytest.mark.parametrize(
    "name", ["state_dict.pth", "checkpoint.pth", "units_model.pth", "mymodels_model.pth"]
)
def test_other_formats_give_identical_probabilities(original: Path, name: str) -> None:
    proba = load_classifier(original / name).predict_proba(np.load(original / "features.npy"))
    np.testing.assert_array_equal(proba, np.load(original / "proba.npy"))


def test_state_dict_keys_match_the_original(original: Path) -> None:
    sd = torch.load(original / "state_dict.pth", weights_only=True)
    assert list(MLPClassifier().state_dict()) == list(sd)


def test_reduce_to_os_system_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "reads.pth"
    torch.save(Payload(), path)
    with pytest.raises(ModelFileError, match=r"refusing to load reads\.pth: it references posix\.system"):
        load_classifier(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: the payload is live when unpickled naively
    assert marker.exists()


def test_mlp_smuggling_eval_is_refused_and_not_run(original: Path) -> None:
    assert (original / "control_marker").exists()  # same payload, loaded naively, ran
    with pytest.raises(ModelFileError, match=r"smuggled\.pth: it references builtins\.eval"):
        load_classifier(original / "smuggled.pth")
    assert not (original / "pwned").exists()


def test_legacy_format_payload_is_refused_by_the_unpickler(tmp_path: Path) -> None:
    """Non-zip files cannot be pre-scanned; the weights-only unpickler must still refuse them."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (eval, (f"__import__('pathlib').Path({str(marker)!r}).touch()",))

    path = tmp_path / "legacy.pth"
    torch.save({"x": Payload()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelFileError, match=r"legacy\.pth: it references builtins\.eval"):
        load_classifier(path)
    assert not marker.exists()


def test_calling_an_allowed_module_class_is_refused(tmp_path: Path) -> None:
    """A file may name Linear, but not call it (e.g. to allocate a 4 TB weight)."""

    class Bomb:
        def __reduce__(self):
            return (torch.nn.Linear, (10**6, 10**6))

    path = tmp_path / "bomb.pth"
    torch.save(Bomb(), path)
    with pytest.raises(ModelFileError, match="may not be built by calling"):
        load_classifier(path)


def test_wrong_submodule_class_is_refused(original: Path) -> None:
    with pytest.raises(ModelFileError, match="bn1 is a Dropout, expected BatchNorm1d"):
        load_classifier(original / "misshapen.pth")


def test_wrong_input_dim_is_refused(tmp_path: Path) -> None:
    path = write_random_classifier(tmp_path / "m.pth", input_dim=1000, hidden_dim=16, whole_module=True)
    with pytest.raises(ModelFileError, match="expects 1000 input features.*3328"):
        load_classifier(path)


def test_wrong_output_dim_and_non_classifiers_are_refused(tmp_path: Path) -> None:
    sd = MLPClassifier(hidden_dim=8).state_dict()
    sd["output_layer.weight"] = torch.zeros(3, 8)
    torch.save(sd, tmp_path / "three.pth")
    with pytest.raises(ModelFileError, match=r"output_layer\.weight.*\(3, 8\)"):
        load_classifier(tmp_path / "three.pth")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ModelFileError, match="not a VirNucPro classifier"):
        load_classifier(tmp_path / "other.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ModelFileError, match="not a VirNucPro classifier"):
        load_classifier(tmp_path / "list.pth")


def test_truncated_and_garbage_files_are_refused(original: Path, tmp_path: Path) -> None:
    data = (original / "500_model.pth").read_bytes()
    for name, blob in [("cut.pth", data[: len(data) // 2]), ("empty.pth", b""), ("junk.pth", b"not a model")]:
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ModelFileError, match=name.replace(".", r"\.")):
            load_classifier(tmp_path / name)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not found.*nope.pth"):
        load_classifier(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError):
        load_classifier(tmp_path / "nope.pth")


def test_chunk_size_warning() -> None:
    warning = check_chunk_size("models/500_model.pth", 300)
    assert warning is not None and "500" in warning and "300" in warning
    assert check_chunk_size("models/500_model.pth", 500) is None
    assert check_chunk_size("/data/300/model.pth", 500) is None  # only the file name counts
    assert check_chunk_size("300_model.pth", 500) is not None
    assert check_chunk_size("1500_model.pth", 300) is None


def test_labels_from_proba_tie_goes_to_others() -> None:
    proba = np.array([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]], dtype=np.float32)
    assert labels_from_proba(proba).tolist() == ["others", "virus", "others"]
    # same rule as the original's torch.max: the first index wins a tie
    assert torch.max(torch.from_numpy(proba), 1).indices.tolist() == [0, 1, 0]
    with pytest.raises(ValueError):
        labels_from_proba(np.zeros((3, 3)))


def test_random_classifier_is_deterministic_and_eval_mode_matters(tmp_path: Path) -> None:
    jobs = [("a.pth", 3, True), ("b.pth", 3, False), ("c.pth", 4, False)]
    with ThreadPoolExecutor(len(jobs)) as pool:  # each write is a subprocess that imports torch
        a, b, c = pool.map(lambda job: write_random_classifier(tmp_path / job[0], hidden_dim=32, seed=job[1],
                                                               whole_module=job[2]), jobs)
    x = np.random.default_rng(0).standard_normal((16, 3328), dtype=np.float32)
    ca, cb, cc = (load_classifier(p) for p in (a, b, c))
    assert ca.hidden_dim == 32
    np.testing.assert_array_equal(ca.predict_proba(x), cb.predict_proba(x))
    assert not np.array_equal(ca.predict_proba(x), cc.predict_proba(x))
    model = ca.model
    with torch.no_grad():
        eval_out = model(torch.from_numpy(x))
        model.bn1.train()
        batch_out = model(torch.from_numpy(x))
        model.bn1.eval()
    assert not torch.allclose(eval_out, batch_out)


@pytest.mark.e2e  # embeds the demo input and 200 random reads with both demo encoders: an integration check
def test_demo_classifier_decides_like_a_trained_one(demo_cache: Path, tmp_path: Path) -> None:
    """Issue 31 item 4: the demo classifier's scores sit far from 0.5 (>= 80% of frames below 0.1
    or above 0.9), with both labels, on the demo input and on random reads it was not calibrated on."""
    from conftest import DEMO_FASTA
    from virnuc_hpc.config import load_config
    from virnuc_hpc.models.demo import CALIBRATION_SEED, ensure_demo_models, random_orf_reads
    from virnuc_hpc.models.resolve import locate_models
    from virnuc_hpc.runtime.encoding import model_spec
    from virnuc_hpc.runtime.precision_check import FrameSample, embed_sample, sample_frames

    rng = np.random.default_rng(5)
    reads = random_orf_reads(100, CALIBRATION_SEED + 1) + ["".join(rng.choice(list("ACGT"), 150))
                                                           for _ in range(100)]
    random_fasta = tmp_path / "random.fasta"
    random_fasta.write_text("".join(f">random_{i}\n{seq}\n" for i, seq in enumerate(reads)))
    config = load_config(preset="demo")
    demo, random = (sample_frames([str(f)], config, 10_000) for f in (DEMO_FASTA, random_fasta))
    both = FrameSample(demo.reads + random.reads, demo.nucleotide + random.nucleotide,
                       demo.protein + random.protein)
    features = embed_sample(model_spec(config, locate_models(config, classify=True), precision="fp32", classifier=False), both)
    clf = load_classifier(ensure_demo_models().classifier, input_dim=features.concatenated().shape[1])
    virus = clf.predict_proba(features.concatenated())[:, 1]
    for name, score in (("demo", virus[: len(demo.protein)]), ("random", virus[len(demo.protein):])):
        confident = np.mean((score < 0.1) | (score > 0.9))
        called = np.mean(score > 0.5)
        assert len(score) >= 50 and confident >= 0.8, (name, len(score), confident)
        assert 0.2 <= called <= 0.8, (name, called)  # both labels, neither rare
