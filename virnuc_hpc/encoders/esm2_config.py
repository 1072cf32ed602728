"""What an ESM-2 is, whichever file it comes from: the alphabet (token ids) and the sizes.

fair-esm's .pt files (read in esm2.py) and Hugging Face directories (esm2_hf.py) both describe
their model with an ESM2Config and must feed the same token ids, so both readers import these from
here rather than from each other.
"""

from __future__ import annotations

from dataclasses import dataclass

# ESM-1b alphabet, as esm.Alphabet.from_architecture("ESM-1b"); the hub's vocab.txt lists the same.
ALPHABET: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>", "<mask>",
)
CLS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 32


@dataclass(frozen=True)
class ESM2Config:
    num_layers: int
    embed_dim: int
    attention_heads: int
    token_dropout: bool = True
    layer_norm_eps: float = 1e-5   # fair-esm's; a Hugging Face config.json states its own
    rope_theta: float = 10000.0
