"""Do the two varlen attention kernels give ESM-2 the same vectors? Fidelity check, one GPU.

A 6-layer model of ESM-2 3B's width (2560, 40 heads; random weights) embeds 3,000 proteins of
45-50 aa and 300 of 60-700 aa through the packed fp16 encoder, once with flash varlen attention and
once with memory-efficient varlen attention (the default), each compared per protein (cosine) with
the padded fp32 path, and with each other. Prints lines starting ATTN_CHECK.

    python benchmarks/probes/esm2_attention_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: common.py
from common import cosine, random_proteins  # noqa: E402
from virnuc_hpc.encoders.esm2 import ESM2, ESM2Encoder  # noqa: E402
from virnuc_hpc.encoders.esm2_packed import PackedESM2Encoder  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    cuda = torch.device("cuda")
    with cuda:
        model = ESM2(6, 2560, 40).eval().requires_grad_(False)
    proteins = random_proteins(45, 50, 3000, 3) + random_proteins(60, 700, 300, 4)
    reference = ESM2Encoder(model, name="fp32", device=cuda, precision="fp32", max_tokens=16384).embed(proteins)
    half = model.cast(cuda, torch.float16)
    out = {kernel: PackedESM2Encoder(half, name=kernel, device=cuda, precision="fp16", max_tokens=65536,
                                     attention=kernel).embed(proteins)
           for kernel in ("varlen", "efficient")}
    for kernel, vectors in out.items():
        print("ATTN_CHECK", kernel, "cos min vs fp32", cosine(reference, vectors).min())
    print("ATTN_CHECK efficient vs varlen cos min", cosine(out["varlen"], out["efficient"]).min())


if __name__ == "__main__":
    main()
