"""Outlier channels for any ESM-2 checkpoint, by an exact reparametrisation of its weights.

Why: trained transformers have a few hidden dimensions 10-100x larger than the rest, and one int8
scale per token then leaves the other dimensions a handful of steps; random weights have none, so
tests and benchmarks would never see the problem. This rewrite makes them without changing what the
model computes (in exact arithmetic; fp32 differs by rounding only), per layer:
- LayerNorm before attention: gamma and beta of ``channels`` hidden dims x F, the same columns of
  q_proj, k_proj and v_proj / F (each projection reads LN(x) linearly);
- LayerNorm before the FFN: the same dims' gamma and beta x F, fc1's columns / F;
- ``channels`` rows of v_proj (weight rows and bias entries) x F, out_proj's columns / F (attention
  output is, channel by channel, a convex mix of the values).
The hidden dims and value rows are drawn per layer from ``seed``. Names are fair-esm's, with any
prefix: ``encoder.sentence_encoder.layers.N.`` in a released file, ``layers.N.`` in a module.

    python -m virnuc_hpc.models.random_weights.outliers SRC DST --factor F [--channels 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

OUTLIERS_FLAG = "virnuc_hpc_outliers"  # in cfg['model'] of a written variant: factor, channels, seed
_LAYER_RE = re.compile(r"^(?P<prefix>(?:.*\.)?layers\.(?P<index>\d+)\.)self_attn_layer_norm\.weight$")

Stressable = TypeVar("Stressable", Mapping[str, torch.Tensor], torch.nn.Module)


@dataclass(frozen=True)
class LayerOutliers:
    """The channels one layer's rewrite scales: hidden dims (both LayerNorms) and v_proj rows."""

    hidden: tuple[int, ...]
    value_rows: tuple[int, ...]


def outlier_channels(num_layers: int, dim: int, channels: int = 4, seed: int = 0) -> list[LayerOutliers]:
    """The channels ``add_outlier_channels`` picks per layer, in layer order (the same for the same
    arguments), so a check can look at exactly those."""
    if not 1 <= channels <= dim:
        raise ValueError(f"channels must be between 1 and the model width {dim}, not {channels}")
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for _ in range(num_layers):
        hidden = torch.randperm(dim, generator=gen)[:channels].sort().values
        rows = torch.randperm(dim, generator=gen)[:channels].sort().values
        picks.append(LayerOutliers(tuple(hidden.tolist()), tuple(rows.tolist())))
    return picks


def _layer_prefixes(names: Sequence[str]) -> list[str]:
    """Each layer's name prefix, in layer order; ValueError where the names are not ESM-2's."""
    found = {int(m["index"]): m["prefix"] for name in names if (m := _LAYER_RE.match(name))}
    if not found or sorted(found) != list(range(len(found))):
        raise ValueError("no ESM-2 transformer layers found (expected fair-esm names such as "
                         "'encoder.sentence_encoder.layers.0.self_attn_layer_norm.weight')")
    return [found[i] for i in range(len(found))]


def _check_factor(factor: float) -> float:
    factor = float(factor)
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"factor must be a finite number > 0, not {factor}")
    return factor


def _rewritten(state: Mapping[str, torch.Tensor], factor: float, channels: int,
               seed: int) -> dict[str, torch.Tensor]:
    """New tensors for the names the rewrite touches (computed in fp32, stored in each tensor's dtype)."""
    factor = _check_factor(factor)
    prefixes = _layer_prefixes(list(state))
    dim = state[prefixes[0] + "self_attn_layer_norm.weight"].shape[0]
    picks = outlier_channels(len(prefixes), dim, channels, seed)
    new: dict[str, torch.Tensor] = {}
    for p, pick in zip(prefixes, picks):
        def get(name: str) -> torch.Tensor:
            if p + name not in state:
                raise ValueError(f"{p + name} is missing: not a complete ESM-2 layer")
            return state[p + name].detach().float().clone()

        hidden, rows = list(pick.hidden), list(pick.value_rows)
        ln1_w, ln1_b, ln2_w, ln2_b = (get(n) for n in ("self_attn_layer_norm.weight", "self_attn_layer_norm.bias",
                                                         "final_layer_norm.weight", "final_layer_norm.bias"))
        for t in (ln1_w, ln1_b, ln2_w, ln2_b):
            t[hidden] *= factor
        wq, wk, wv, w1 = (get(n) for n in ("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                           "self_attn.v_proj.weight", "fc1.weight"))
        for w in (wq, wk, wv, w1):
            w[:, hidden] /= factor
        bv, wo = get("self_attn.v_proj.bias"), get("self_attn.out_proj.weight")
        wv[rows] *= factor
        bv[rows] *= factor
        wo[:, rows] /= factor
        for name, value in (("self_attn_layer_norm.weight", ln1_w), ("self_attn_layer_norm.bias", ln1_b),
                            ("final_layer_norm.weight", ln2_w), ("final_layer_norm.bias", ln2_b),
                            ("self_attn.q_proj.weight", wq), ("self_attn.k_proj.weight", wk),
                            ("self_attn.v_proj.weight", wv), ("self_attn.v_proj.bias", bv),
                            ("self_attn.out_proj.weight", wo), ("fc1.weight", w1)):
            stored = value.to(state[p + name].dtype)
            if not torch.isfinite(stored).all():
                raise ValueError(f"factor {factor} overflows {state[p + name].dtype} in {p + name}")
            new[p + name] = stored
    return new


def add_outlier_channels(weights: Stressable, factor: float, channels: int = 4, seed: int = 0) -> Stressable:
    """The outlier variant of ``weights``: a state dict gives a new dict (untouched tensors shared,
    rewritten ones new, on the same devices); a module is rewritten in place and returned."""
    if isinstance(weights, torch.nn.Module):
        params = weights.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, value in _rewritten(params, factor, channels, seed).items():
                params[name].copy_(value)
        return weights
    return {**weights, **_rewritten(weights, factor, channels, seed)}


def write_outlier_checkpoint(src: str | Path, dst: str | Path, factor: float, channels: int = 4,
                             seed: int = 0) -> Path:
    """Read a fair-esm ESM-2 file (weights-only load), write its outlier variant to ``dst`` in the same
    format and key order, atomically (a temporary beside it, then renamed). cfg['model'] keeps its
    fields and gains ``virnuc_hpc_outliers`` (factor, channels, seed), which loaders ignore."""
    from virnuc_hpc.encoders.esm2 import _torch_load, read_esm2_checkpoint
    from virnuc_hpc.errors import ModelFileError

    src, dst = Path(src), Path(dst)
    factor = _check_factor(factor)
    if src.is_dir():
        raise ModelFileError(f"{src}: a directory; only fair-esm .pt checkpoint files are rewritten")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"DST must differ from SRC ({src})")
    read_esm2_checkpoint(src)  # validates names and shapes against the file's config
    data = dict(_torch_load(src))
    state = dict(data["model"])
    try:
        data["model"] = {**state, **_rewritten(state, factor, channels, seed)}
    except ValueError as exc:
        raise ModelFileError(f"{src}: {exc}") from exc
    cfg = dict(data["cfg"])
    args, record = cfg["model"], {"factor": factor, "channels": int(channels), "seed": int(seed)}
    cfg["model"] = {**args, OUTLIERS_FLAG: record} if isinstance(args, Mapping) else \
        argparse.Namespace(**vars(args), **{OUTLIERS_FLAG: record})
    data["cfg"] = cfg
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb") as fh:
            torch.save(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write the variant; a bad input is one line on stderr and exit status 2."""
    parser = argparse.ArgumentParser(prog="python -m virnuc_hpc.models.random_weights.outliers",
                                     description="Write the outlier-channel variant of an ESM-2 checkpoint "
                                                 "(same fp32 output, a few channels F times larger).")
    parser.add_argument("src", type=Path, help="fair-esm ESM-2 checkpoint (.pt)")
    parser.add_argument("dst", type=Path, help="where to write the variant")
    parser.add_argument("--factor", type=float, required=True, help="F: how much larger the outlier channels are")
    parser.add_argument("--channels", type=int, default=4, help="outlier channels per layer and site (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="picks the channels (default 0)")
    args = parser.parse_args(argv)
    from virnuc_hpc.errors import UserError

    try:
        path = write_outlier_checkpoint(args.src, args.dst, args.factor, args.channels, args.seed)
    except (UserError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} (factor {args.factor:g}, {args.channels} channels per site, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
