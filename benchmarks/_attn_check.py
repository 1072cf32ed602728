import sys, torch, numpy as np
sys.path.insert(0, "benchmarks")
from common import random_proteins, cosine
from virnuc_hpc.encoders.esm2 import ESM2, ESM2Encoder
from virnuc_hpc.encoders.esm2_packed import PackedESM2Encoder
torch.manual_seed(0)
with torch.device("cuda"):
    m = ESM2(6, 2560, 40).eval().requires_grad_(False)
p = random_proteins(45, 50, 3000, 3) + random_proteins(60, 700, 300, 4)
ref = ESM2Encoder(m, name="r", device=torch.device("cuda"), precision="fp32", max_tokens=16384).embed(p)
m16 = m.cast(torch.device("cuda"), torch.float16)
out = {a: PackedESM2Encoder(m16, name=a, device=torch.device("cuda"), precision="fp16", max_tokens=65536, attention=a).embed(p) for a in ("varlen", "efficient")}
for a, o in out.items(): print("ATTN_CHECK", a, "cos min vs fp32", cosine(ref, o).min())
print("ATTN_CHECK efficient vs varlen cos min", cosine(out["varlen"], out["efficient"]).min())
