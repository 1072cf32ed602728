"""Untrained VirNucPro-style classifiers, for tests and dry runs without the real model files.

Both formats come from one subprocess that pickles its class as ``__main__.MLPClassifier``, exactly
as the original training script did, so a whole-module file here exercises the same loading path as
a shipped ``.pth`` and a given seed yields the same weights in either format.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_SCRIPT = r"""
import sys
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
        x = F.relu(self.bn1(self.hidden_layer(x)))
        return self.output_layer(self.dropout(x))


path, whole = sys.argv[1], sys.argv[5] == "1"
input_dim, hidden_dim, seed = (int(a) for a in sys.argv[2:5])
torch.manual_seed(seed)
model = MLPClassifier(input_dim, hidden_dim, 2)
with torch.no_grad():  # non-trivial BatchNorm state, so eval vs train mode gives different outputs
    model.bn1.weight.copy_(1 + 0.1 * torch.randn(hidden_dim))
    model.bn1.bias.copy_(0.1 * torch.randn(hidden_dim))
    model.bn1.running_mean.copy_(0.2 * torch.randn(hidden_dim))
    model.bn1.running_var.copy_(0.05 + 0.3 * torch.rand(hidden_dim))
    model.bn1.num_batches_tracked.fill_(1000)
model.eval()
torch.save(model if whole else model.state_dict(), path)
"""


def write_random_classifier(
    path: str | Path,
    *,
    hidden_dim: int = 512,
    seed: int = 0,
    whole_module: bool = False,
    input_dim: int = 3328,
) -> Path:
    """Write an untrained classifier, deterministic per seed.

    A state dict by default; with whole_module=True a whole pickled ``__main__.MLPClassifier``,
    like the shipped files. input_dim other than 3328 is only useful to test refusals.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = [str(path), str(input_dim), str(hidden_dim), str(seed), "1" if whole_module else "0"]
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"writing random classifier {path} failed:\n{proc.stderr}")
    return path
