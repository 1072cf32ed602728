"""Untrained VirNucPro-style classifiers, for tests and dry runs without the real model files.

Both formats come from one subprocess that pickles its class as ``__main__.MLPClassifier``, exactly
as the original training script did, so a whole-module file here exercises the same loading path as
a shipped ``.pth`` and a given seed yields the same weights in either format.

The weights decide like a trained classifier's, not near 0.5: BatchNorm's running statistics are
those of calibration features (as training leaves them), the output bias puts the median
calibration frame on the decision boundary (both labels occur), and the output layer is scaled so
that most frames' logits are far apart (scores below 0.05 or above 0.95). Precision checks measure
label agreement on such frames as they would with a trained model.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_SCRIPT = r"""
import sys
import torch
import torch.nn as nn
import numpy as np
import torch.nn.functional as F


class MLPClassifier(nn.Module):
    def __init__(self, input_dim, hidden_dim, num_class):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.dropout = nn.Dropout(0.5)
        self.output_layer = nn.Linear(hidden_dim, num_class)

    def forward(self, x):
        x = F.relu(self.bn1(self.hidden_layer(x)))
        return self.output_layer(self.dropout(x))


path, whole, calibration = sys.argv[1], sys.argv[5] == "1", sys.argv[6]
input_dim, hidden_dim, seed = (int(a) for a in sys.argv[2:5])
margin, confident = float(sys.argv[7]), float(sys.argv[8])
torch.manual_seed(seed)
model = MLPClassifier(input_dim, hidden_dim, 2)
if calibration:
    x = torch.from_numpy(np.load(calibration)).float()
else:  # no features given: standard normal ones, seeded
    x = torch.randn(4096, input_dim)
with torch.no_grad():
    pre = model.hidden_layer(x)  # BatchNorm as training leaves it: the features' statistics
    model.bn1.running_mean.copy_(pre.mean(0))
    model.bn1.running_var.copy_(pre.var(0, unbiased=False).clamp_min(1e-6))
    model.bn1.weight.copy_(1 + 0.1 * torch.randn(hidden_dim))
    model.bn1.bias.copy_(0.1 * torch.randn(hidden_dim))
    model.bn1.num_batches_tracked.fill_(1000)
    model.eval()
    logits = model(x)
    diff = (logits[:, 1] - logits[:, 0]).double()
    centre = diff.median()
    spread = (diff - centre).abs().quantile(1 - confident).clamp_min(1e-12)
    scale = float(margin / spread)  # that share of calibration frames: |virus - others| >= margin
    out = model.output_layer
    out.weight.mul_(scale)
    out.bias.mul_(scale)
    out.bias.add_(torch.tensor([0.5, -0.5]) * float(scale * centre))
torch.save(model if whole else model.state_dict(), path)
"""

#: |logit(virus) - logit(others)| that a share CONFIDENT of the calibration frames reach: ln 19,
#: scores below 0.05 or above 0.95.
MARGIN = math.log(19.0)
CONFIDENT = 0.9


def write_random_classifier(
    path: str | Path,
    *,
    hidden_dim: int = 512,
    seed: int = 0,
    whole_module: bool = False,
    input_dim: int = 3328,
    calibration: np.ndarray | None = None,
) -> Path:
    """Write an untrained classifier, deterministic per seed and calibration features.

    A state dict by default; with whole_module=True a whole pickled ``__main__.MLPClassifier``,
    like the shipped files. input_dim other than 3328 is only useful to test refusals.
    ``calibration`` (N, input_dim) holds features of the kind the classifier will see (the demo
    encoders' output); without it standard normal features stand in.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".classifier-", dir=path.parent) as tmp:
        features = ""
        if calibration is not None:
            calibration = np.asarray(calibration, dtype=np.float32)
            if calibration.ndim != 2 or calibration.shape[1] != input_dim or len(calibration) < 2:
                raise ValueError(f"calibration features must be (N >= 2, {input_dim}), "
                                 f"got {calibration.shape}")
            features = str(Path(tmp) / "calibration.npy")
            np.save(features, calibration)
        args = [str(path), str(input_dim), str(hidden_dim), str(seed), "1" if whole_module else "0",
                features, repr(MARGIN), repr(CONFIDENT)]
        proc = subprocess.run([sys.executable, "-c", _SCRIPT, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"writing random classifier {path} failed:\n{proc.stderr}")
    return path
