"""Regenerate examples/demo.fasta (seeded): reads of 0.1-1.2 kb, some with open reading frames,
some lowercase, with N/IUPAC codes, Windows line endings and a multi-line record."""

import random
from pathlib import Path

STOPS = {"TAA", "TAG", "TGA"}
CODONS = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in STOPS]


def read(rng: random.Random, length: int, open_frame: bool) -> str:
    if open_frame:
        seq = "".join(rng.choice(CODONS) for _ in range(length // 3 + 1))[:length]
    else:
        seq = "".join(rng.choice("ACGT") for _ in range(length))
    return seq


def main() -> None:
    rng = random.Random(7)
    out = []
    for i in range(60):
        length = rng.choice([150, 150, 150, 250, 300, 301, 450, 700, 1200])
        seq = read(rng, length, open_frame=rng.random() < 0.6)
        if i % 7 == 3:
            pos = rng.randrange(len(seq))
            seq = seq[:pos] + rng.choice("NNRYKM") + seq[pos + 1:]
        if i % 5 == 2:
            seq = seq.lower()
        lines = [seq[j:j + 60] for j in range(0, len(seq), 60)] if i % 4 == 0 else [seq]
        eol = "\r\n" if i % 9 == 4 else "\n"
        out.append(f">demo_read_{i:03d} synthetic read {length} bp{eol}" + eol.join(lines) + eol)
    Path(__file__).with_name("demo.fasta").write_bytes("".join(out).encode())


if __name__ == "__main__":
    main()
