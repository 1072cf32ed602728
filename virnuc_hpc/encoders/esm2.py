"""ESM-2 protein embeddings for VirNucPro features, without fair-esm at run time.

Our own forward pass over fair-esm's released checkpoint files (pre-LayerNorm transformer with
rotary attention, parameters named as in fair-esm's esm/model/esm2.py), so that we can load them
safely (weights_only) and choose precision, batching and the attention kernel ourselves.
In fp32 it reproduces fair-esm 2.0.0 to ~1e-6 (tests/test_esm2.py).

Pooling follows the original VirNucPro `extract_esm`: the whole protein goes through the model
untruncated, and the vector is the mean of the final-LayerNorm representation over residue
positions 1..min(L, 1024) (BOS, EOS and padding excluded). Proteins longer than 1024 residues
therefore do not crash; like the original, their tail still attends but is left out of the mean.
Reads never come close (a 500-bp chunk gives 166 aa).

The factory that picks this padded encoder or the packed one, ``load_esm2``, lives in the encoders
package (encoders/factory.py), so that this module never imports esm2_packed.py.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from virnuc_hpc.errors import ModelFileError, ModelNotFoundError

from .batching import Fp32Weights, plan_padded
from .contract import EngineHook
from .esm2_config import ALPHABET, CLS, EOS, MASK, PAD, UNK, ESM2Config  # noqa: F401 (re-exported)
from .files import RANDOM_WEIGHTS_FLAG, hf_is_random, looks_like_hub_id, resolve_esm2_hub, weights_sha256
from .layers import LayerNorm

# ---------------------------------------------------------------------------------------------------
# Tokenisation (the alphabet, ESM-1b's, is in esm2_config.py)
# ---------------------------------------------------------------------------------------------------

POOL_LIMIT = 1024  # residues averaged at most (original VirNucPro: truncation_seq_length=1024)

_SPECIAL_IDS = {tok: i for i, tok in enumerate(ALPHABET) if len(tok) > 1}
_SPECIAL_RE = re.compile("(" + "|".join(map(re.escape, _SPECIAL_IDS)) + ")")
_DROP = -1  # whitespace: fair-esm strips it


def _lookup_table() -> np.ndarray:
    lut = np.full(256, UNK, dtype=np.int64)
    for i, tok in enumerate(ALPHABET):
        if len(tok) == 1:
            lut[ord(tok)] = i
    for ch in " \t\n\r\v\f":
        lut[ord(ch)] = _DROP
    lut.flags.writeable = False
    return lut


_LUT = _lookup_table()


def tokenize(protein: str) -> np.ndarray:
    """Residue token ids (no BOS/EOS). Whitespace is dropped and `<mask>`-style tokens are kept whole,
    as fair-esm does; characters outside the alphabet become `<unk>` (fair-esm raises KeyError)."""
    if protein.isascii() and "<" not in protein:
        ids = _LUT[np.frombuffer(protein.encode("ascii"), dtype=np.uint8)]
        return ids[ids != _DROP] if (ids == _DROP).any() else ids
    parts = []
    for piece in _SPECIAL_RE.split(protein):
        if piece in _SPECIAL_IDS:
            parts.append(np.array([_SPECIAL_IDS[piece]], dtype=np.int64))
        elif piece:
            codes = np.fromiter(map(ord, piece), dtype=np.int64, count=len(piece)).clip(max=255)
            ids = _LUT[codes]
            parts.append(ids[ids != _DROP])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def tokenize_many(proteins: Sequence[str]) -> list[np.ndarray]:
    """`tokenize` for many proteins with one table lookup when they are plain ASCII residues."""
    if not proteins:
        return []
    joined = "".join(proteins)
    if joined.isascii() and "<" not in joined:
        ids = _LUT[np.frombuffer(joined.encode("ascii"), dtype=np.uint8)]
        if not (ids == _DROP).any():
            bounds = np.cumsum([len(p) for p in proteins])[:-1]
            return np.split(ids, bounds)
    return [tokenize(p) for p in proteins]


def plan_batches(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Index arrays of length-sorted batches whose padded size rows*(longest+2) fits max_tokens.

    A protein too long for the budget on its own gets a batch to itself (no padding, so SDPA needs no
    mask and memory grows only with its own length)."""
    return plan_padded(np.asarray(lengths, dtype=np.int64) + 2, lambda rows, longest: rows * longest <= max_tokens)


def pad_batch(ids: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) tokens `<cls> residues <eos> <pad>...` and (B,) residue counts, built without a row loop."""
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    tokens = np.full((len(ids), int(lengths.max()) + 2), PAD, dtype=np.int64)
    tokens[:, 0] = CLS
    pos = np.arange(tokens.shape[1])
    tokens[(pos >= 1) & (pos <= lengths[:, None])] = np.concatenate(ids)
    tokens[np.arange(len(ids)), lengths + 1] = EOS
    return torch.from_numpy(tokens), torch.from_numpy(lengths)


# ---------------------------------------------------------------------------------------------------
# Model (parameter names as fair-esm's esm/model/esm2.py, so its state dict maps key for key)
# ---------------------------------------------------------------------------------------------------


def default_inv_freq(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Rotary inverse frequencies, base 10000, fp32 (in half precision the rotation angles drift)."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, device="cpu").float() / head_dim))


def rotary_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin of shape positions.shape + (head_dim,) for per-token positions (0 at BOS).

    Taking positions rather than a length lets a packed (varlen) batch reuse it unchanged."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(positions.device, torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary on x (..., T, heads, head_dim); cos/sin (..., T, head_dim) are cast only here."""
    cos, sin = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class SelfAttention(nn.Module):
    """fair-esm's MultiheadAttention maths (biased q/k/v/out, rotary on q and k) without its extras."""

    def __init__(self, embed_dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, embed_dim // heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        shape = (*x.shape[:-1], self.heads, self.head_dim)
        q = apply_rotary((self.q_proj(x) * self.scaling).view(shape), cos, sin)  # scale, then rotate
        k = apply_rotary(self.k_proj(x).view(shape), cos, sin)
        v = self.v_proj(x).view(shape)
        return self.out_proj(self.attend(q, k, v, key_padding_mask).flatten(-2))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, H, hd) padded batch -> (B, T, H, hd). The one place a packed kernel plugs in.

        q is already scaled (fair-esm order), hence scale=1; padded keys (True in the mask) are excluded."""
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=1.0
        )
        return out.transpose(1, 2)


class TransformerLayer(nn.Module):
    """Pre-LayerNorm block: x + attn(LN(x)), then x + fc2(gelu_erf(fc1(LN(x))))."""

    def __init__(self, embed_dim: int, ffn_dim: int, heads: int):
        super().__init__()
        self.self_attn = SelfAttention(embed_dim, heads)
        self.self_attn_layer_norm = LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.final_layer_norm = LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), cos, sin, key_padding_mask)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))  # exact erf GELU


class ESM2(nn.Module):
    """ESM-2 encoder up to `emb_layer_norm_after` (no LM or contact head: embeddings only)."""

    def __init__(self, num_layers: int, embed_dim: int, attention_heads: int, token_dropout: bool = True):
        super().__init__()
        self.num_layers, self.embed_dim, self.attention_heads = num_layers, embed_dim, attention_heads
        self.token_dropout = token_dropout
        self.embed_tokens = nn.Embedding(len(ALPHABET), embed_dim, padding_idx=PAD)
        self.layers = nn.ModuleList(
            TransformerLayer(embed_dim, 4 * embed_dim, attention_heads) for _ in range(num_layers)
        )
        self.emb_layer_norm_after = LayerNorm(embed_dim)
        # Plain attribute, not a buffer: Module.to(dtype) must never round it.
        self.inv_freq = default_inv_freq(embed_dim // attention_heads)

    def embed_input(self, tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """Token embedding, token-dropout rescale (applied at inference too) and zeroed pad rows."""
        x = self.embed_tokens(tokens)
        if self.token_dropout:
            is_mask = tokens.eq(MASK)
            x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
            mask_ratio = is_mask.sum(-1).to(x.dtype) / (~padding_mask).sum(-1)
            x = x * (1 - 0.15 * 0.8) / (1 - mask_ratio)[:, None, None]
        return x * (1 - padding_mask.unsqueeze(-1).type_as(x))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) padded tokens -> (B, T, D) fp32 representation after `emb_layer_norm_after`."""
        padding_mask = tokens.eq(PAD)
        x = self.embed_input(tokens, padding_mask)
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
        cos, sin = rotary_cos_sin(positions, self.inv_freq)
        key_padding_mask = padding_mask if padding_mask.any() else None
        for layer in self.layers:
            x = layer(x, cos, sin, key_padding_mask)
        return self.emb_layer_norm_after(x.float())

    def cast(self, device: torch.device, dtype: torch.dtype) -> ESM2:
        """Move to device; matmul weights to dtype, LayerNorms kept fp32."""
        self.to(device)
        for m in self.modules():  # a file may store the LayerNorms in half precision (an fp16 checkpoint)
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.to(dtype)
            elif isinstance(m, nn.LayerNorm):
                m.float()
        return self


def mean_residues(rep: torch.Tensor, lengths: torch.Tensor, limit: int = POOL_LIMIT) -> torch.Tensor:
    """(B, T, D) -> (B, D) fp32 mean over positions 1..min(L, limit): no BOS, EOS or padding."""
    n = lengths.to(rep.device).clamp(max=limit)
    pos = torch.arange(rep.shape[1], device=rep.device)
    weights = ((pos >= 1) & (pos <= n[:, None])).to(torch.float32)
    return torch.bmm(weights.unsqueeze(1), rep.float()).squeeze(1) / n[:, None].to(torch.float32)


# ---------------------------------------------------------------------------------------------------
# Checkpoint files: name resolution, safe loading, validation
# ---------------------------------------------------------------------------------------------------

KNOWN_MODELS: dict[str, tuple[int, int, int]] = {  # name -> (layers, embed_dim, heads)
    "esm2_t6_8M_UR50D": (6, 320, 20),
    "esm2_t12_35M_UR50D": (12, 480, 20),
    "esm2_t30_150M_UR50D": (30, 640, 20),
    "esm2_t33_650M_UR50D": (33, 1280, 20),
    "esm2_t36_3B_UR50D": (36, 2560, 40),
    "esm2_t48_15B_UR50D": (48, 5120, 40),
}
MODEL_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
_PREFIX_RE = re.compile(r"^(encoder\.sentence_encoder\.|encoder\.)")  # fair-esm core_v2 mapping
_IGNORED_RE = re.compile(r"^(lm_head|contact_head)\.|\.rot_emb\.inv_freq$")
# RANDOM_WEIGHTS_FLAG (imported above from files.py) is set in cfg['model'] by models.random_weights.esm2


def model_name(spec: str | Path, path: Path) -> str:
    """An encoder's name in outputs: the released model's name when given by name, else the file's stem,
    a Hugging Face directory's name, or the hub id of a snapshot in the Hugging Face cache."""
    if str(spec) in KNOWN_MODELS:
        return str(spec)
    if not path.is_dir():
        return path.stem
    repo = path.parent.parent.name  # <cache>/models--facebook--esm2_t36_3B_UR50D/snapshots/<commit>
    if path.parent.name == "snapshots" and repo.startswith("models--"):
        return repo.removeprefix("models--").replace("--", "/")
    return path.name


def resolve_esm2_checkpoint(spec: str | Path, *, offline: bool = False) -> Path:
    """An existing file is used as is, and so is a Hugging Face ESM-2 directory (config.json checked
    here, before any worker starts); a released model name is looked up in (or fetched to) the
    torch-hub cache, `<torch.hub.get_dir()>/checkpoints/<name>.pt`, the place fair-esm uses; a hub id
    (`facebook/esm2_t36_3B_UR50D`) in (or to) the Hugging Face cache."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir() or (looks_like_hub_id(spec) and not path.exists()):
        from .esm2_hf import check_hf_directory
        directory = path if path.is_dir() else resolve_esm2_hub(spec, offline=offline)
        check_hf_directory(directory)
        return directory
    name = spec[:-3] if spec.endswith(".pt") and spec[:-3] in KNOWN_MODELS else spec
    if name not in KNOWN_MODELS:
        raise ModelNotFoundError(
            f"ESM-2 model {spec!r}: no such file or directory ({path.resolve()}), and not a released model "
            f"name ({', '.join(KNOWN_MODELS)}) or a Hugging Face hub id (facebook/esm2_t36_3B_UR50D)"
        )
    target = Path(torch.hub.get_dir()) / "checkpoints" / f"{name}.pt"
    if target.is_file():
        return target
    url = MODEL_URL.format(name=name)
    how = (f"stage it with `virnuc-hpc models fetch --esm2 {name}` (from {url}) on a machine with network "
           "access, or pass the path of the .pt file instead of the name")
    if offline:
        raise ModelNotFoundError(f"ESM-2 model {name}: {target} does not exist and offline mode is set; {how}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=False)  # writes a temp file, then moves
    except Exception as exc:
        raise ModelNotFoundError(
            f"ESM-2 model {name}: {target} does not exist and downloading {url} failed ({exc}); {how}"
        ) from exc
    return target


def _torch_load(path: Path) -> object:
    """weights_only load: tensors, containers and argparse.Namespace only; nothing else is unpickled."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines() if "GLOBAL" in line)
        if not detail:  # the weights-only unpickler choking on bytes that are not a pickle at all
            raise ModelFileError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?)") from exc
        raise ModelFileError(
            f"{path}: refused to load: it holds pickled objects outside the allow-list (tensors, plain "
            f"containers, argparse.Namespace), which a released ESM-2 checkpoint never does [{detail}]"
        ) from exc
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, TypeError, AttributeError,
            IndexError, zipfile.BadZipFile) as exc:
        raise ModelFileError(
            f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {type(exc).__name__}: {exc}"
        ) from exc


def _config(path: Path, args: object) -> ESM2Config:
    """ESM2Config from cfg['model'] (an argparse.Namespace in released files; a dict is accepted too)."""
    get = args.get if isinstance(args, Mapping) else lambda key, default=None: getattr(args, key, default)
    names = ("encoder_layers", "encoder_embed_dim", "encoder_attention_heads")
    try:
        cfg = ESM2Config(*(int(get(k)) for k in names), token_dropout=bool(get("token_dropout", True)))
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: cfg['model'] lacks integer {' / '.join(names)}") from exc
    head_dim = cfg.embed_dim // max(cfg.attention_heads, 1)
    if min(cfg.num_layers, cfg.embed_dim, cfg.attention_heads) <= 0 or cfg.embed_dim % cfg.attention_heads \
            or head_dim % 2:
        raise ModelFileError(f"{path}: inconsistent ESM-2 config {cfg}")
    return cfg


def read_esm2_checkpoint(path: str | Path) -> tuple[ESM2Config, dict[str, torch.Tensor], torch.Tensor | None]:
    """Config, state dict renamed to our parameter names, and the stored rotary inv_freq (or None),
    from a fair-esm .pt file or a Hugging Face directory (encoders/esm2_hf.py).

    Validated against the config: missing, unexpected or misshapen weights raise ModelFileError."""
    path = Path(path)
    if path.is_dir():
        from .esm2_hf import read_hf_esm2
        cfg, state, inv_freq = read_hf_esm2(path)
    else:
        cfg, state, inv_freq = _read_fair_esm(path)
    with torch.device("meta"):
        reference = ESM2(cfg.num_layers, cfg.embed_dim, cfg.attention_heads)
    expected = {k: v.shape for k, v in reference.state_dict().items()}
    problems = []
    if missing := sorted(expected.keys() - state.keys()):
        problems.append(f"missing {len(missing)} weight(s), e.g. {missing[:3]}")
    if unexpected := sorted(state.keys() - expected.keys()):
        problems.append(f"unexpected {len(unexpected)} weight(s), e.g. {unexpected[:3]}")
    for k in sorted(expected.keys() & state.keys()):
        if state[k].shape != expected[k] or not state[k].is_floating_point():
            got = f"{state[k].dtype} {tuple(state[k].shape)}"
            problems.append(f"{k} is {got}, expected float {tuple(expected[k])}")
    head_dim = cfg.embed_dim // cfg.attention_heads
    if inv_freq is not None and tuple(inv_freq.shape) != (head_dim // 2,):
        problems.append(f"rot_emb.inv_freq has shape {tuple(inv_freq.shape)}, expected ({head_dim // 2},)")
    if problems:
        raise ModelFileError(f"{path}: does not match its config {cfg}: " + "; ".join(problems[:6]))
    return cfg, state, inv_freq


def _read_fair_esm(path: Path) -> tuple[ESM2Config, dict[str, torch.Tensor], torch.Tensor | None]:
    """A fair-esm .pt file's config, renamed state dict and stored inv_freq (not yet validated)."""
    if not path.is_file():
        raise ModelNotFoundError(f"ESM-2 checkpoint {path} does not exist")
    data = _torch_load(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping) \
            or not isinstance(data.get("cfg"), Mapping) or "model" not in data["cfg"]:
        raise ModelFileError(
            f"{path}: not an ESM-2 checkpoint: expected a dict with 'model' (state dict) and 'cfg' "
            f"(with cfg['model'] holding encoder_layers, ...); got {type(data).__name__}"
            + (f" with keys {sorted(map(str, data))[:8]}" if isinstance(data, Mapping) else "")
        )
    cfg = _config(path, data["cfg"]["model"])
    state, inv_freq = {}, None
    for key, value in data["model"].items():
        name = _PREFIX_RE.sub("", str(key), count=1)
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{path}: state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        if name == "layers.0.self_attn.rot_emb.inv_freq":
            inv_freq = value
        if not _IGNORED_RE.search(name):
            state[name] = value
    return cfg, state, inv_freq


def is_random_checkpoint(path: str | Path) -> bool:
    """True for files written by models.random_weights.esm2 (cfg['model'].virnuc_hpc_random_weights), so runs
    on demo weights are labelled as such. Cheap for zip-format files: tensors are mmapped, not read.
    A Hugging Face directory carries the flag in its config.json."""
    if Path(path).is_dir():
        return hf_is_random(Path(path))
    data = _torch_load(Path(path))
    cfg = data.get("cfg") if isinstance(data, Mapping) else None
    args = cfg.get("model") if isinstance(cfg, Mapping) else None
    if isinstance(args, Mapping):
        return bool(args.get(RANDOM_WEIGHTS_FLAG, False))
    return bool(getattr(args, RANDOM_WEIGHTS_FLAG, False))


def load_esm2_model(path: str | Path, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> ESM2:
    """ESM2 module from a checkpoint file (or Hugging Face directory), in eval mode, weights in dtype
    (LayerNorms fp32)."""
    cfg, state, stored_inv_freq = read_esm2_checkpoint(path)
    with torch.device("meta"):
        model = ESM2(cfg.num_layers, cfg.embed_dim, cfg.attention_heads, cfg.token_dropout)
    model.load_state_dict(state, strict=True, assign=True)
    for norm in model.modules():  # the padded and packed forwards both read each LayerNorm's eps
        if isinstance(norm, nn.LayerNorm):
            norm.eps = cfg.layer_norm_eps
    # fair-esm copies the stored inv_freq into its fp32 buffer: if a file stores it rounded (an fp16
    # file), fair-esm rotates with the rounded values, and so must we to give the same features.
    model.inv_freq = default_inv_freq(cfg.embed_dim // cfg.attention_heads, cfg.rope_theta)
    if stored_inv_freq is not None and not torch.equal(stored_inv_freq.float(), model.inv_freq):
        model.inv_freq = stored_inv_freq.float().clone()
    model = model.cast(torch.device(device), dtype).eval().requires_grad_(False)
    _refuse_non_finite(Path(path), model, state, stored_inv_freq)
    return model


def _refuse_non_finite(path: Path, model: ESM2, state: dict[str, torch.Tensor],
                       inv_freq: torch.Tensor | None) -> None:
    """NaN/Inf weights turn every feature into nan: refuse the file, naming the tensor.

    Checked on the cast model, not on the file's tensors: the cast has just made that copy (on a
    GPU the check is one pass over device memory), and where nothing was copied (fp32 on CPU) the
    model's tensors are the mmapped file pages the first batch would read anyway, so the file is
    never read twice. Only the few tensors found non-finite are re-checked in the file's own
    dtype: a large weight the fp16 cast made infinite is no fault of the file (batches with
    non-finite results are recomputed in fp32)."""
    tensors = {k: v for k, v in model.state_dict().items() if k in state}
    flags = torch.stack([torch.isfinite(v).all() for v in tensors.values()]).cpu().tolist()
    bad = [k for k, ok in zip(tensors, flags) if not ok and not torch.isfinite(state[k]).all()]
    if inv_freq is not None and not torch.isfinite(inv_freq).all():
        bad.append("rot_emb.inv_freq")
    if bad:
        raise ModelFileError(f"{path}: weights hold NaN or infinite values in {len(bad)} tensor(s), "
                             f"e.g. {bad[:3]}; the checkpoint is corrupt")


# ---------------------------------------------------------------------------------------------------
# Encoder: proteins -> pooled (N, D) float32
# ---------------------------------------------------------------------------------------------------

DEFAULT_MAX_TOKENS = {"cpu": 16384, "cuda": 32768}


class ESM2Encoder(EngineHook):
    """Mean-pooled ESM-2 embeddings for lists of proteins (VirNucPro's pooling: module docstring).

    Length-sorted, token-budgeted padded batches; results come back in input order. In fp16/bf16 a
    batch with any non-finite vector is recomputed with fp32 weights (``Fp32Weights``: reread from
    the checkpoint file on first need). Each batch runs through ``runner``: the model itself, or what
    an engine made of it (``with_engine``)."""

    def __init__(self, model: ESM2, *, name: str, device: torch.device, precision: str,
                 max_tokens: int | None = None, path: Path | None = None, pool_limit: int = POOL_LIMIT):
        self.model, self.name, self.device, self.precision = model, name, device, precision
        self.max_tokens = max_tokens or DEFAULT_MAX_TOKENS.get(device.type, 16384)
        self.path, self.pool_limit = path, pool_limit
        self.runner: Callable[[torch.Tensor], torch.Tensor] = model
        self.fp32 = Fp32Weights(model, precision, device, self._read_fp32 if path is not None else None)
        self.stats = {"sequences": 0, "tokens": 0, "padded_tokens": 0, "batches": 0,
                      "nonfinite_recomputed_batches": 0}

    def _read_fp32(self) -> ESM2:
        return load_esm2_model(self.path, device=self.device, dtype=torch.float32)

    @property
    def dim(self) -> int:
        return self.model.embed_dim

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @cached_property
    def sha256(self) -> str:
        """Hex digest of the checkpoint file (or a Hugging Face directory's identity: files.weights_sha256),
        computed on first use (seconds for the 3B file)."""
        if self.path is None:
            raise ValueError("sha256 unknown: the encoder was not built from a file")
        return weights_sha256(Path(self.path))

    def prepare(self, proteins: Sequence[str]) -> list[str]:
        """The padded path tokenises inside ``embed``: nothing to do ahead, the strings are the input."""
        return list(proteins)

    def warm_up(self) -> None:
        """Nothing to compile on the padded path."""

    def embed(self, proteins: Sequence[str]) -> np.ndarray:
        """(N, dim) float32, row i for proteins[i]."""
        ids = tokenize_many(list(proteins))
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        if len(ids) and lengths.min() == 0:
            raise ValueError(f"protein #{int(np.argmin(lengths))} is empty; an empty protein has no embedding")
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for batch in plan_batches(lengths, self.max_tokens):
            tokens, lens = pad_batch([ids[i] for i in batch])
            out[batch] = self._embed_batch(tokens, lens).cpu().numpy()
            self.stats["batches"] += 1
            self.stats["padded_tokens"] += tokens.numel()
        self.stats["sequences"] += len(ids)
        self.stats["tokens"] += int(lengths.sum()) + 2 * len(ids)
        return out

    @torch.inference_mode()
    def _embed_batch(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.device, non_blocking=True)
        pooled = mean_residues(self.runner(tokens), lengths, self.pool_limit)
        if self.precision != "fp32" and not torch.isfinite(pooled).all():
            self.stats["nonfinite_recomputed_batches"] += 1
            pooled = mean_residues(self.fp32.get()(tokens), lengths, self.pool_limit)
        return pooled
