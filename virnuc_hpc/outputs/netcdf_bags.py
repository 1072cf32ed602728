"""Bags as NetCDF-4/HDF5 files (``BagFormat``): features, probabilities and frame coordinates as an
xarray Dataset, the table parts as byte arrays in a group beside it.

Why NetCDF: one self-describing file per bag that plain xarray opens lazily (``open_features``
concatenates them), with per-variable chunking and compression. The bytes and attributes are a
contract: users' readers and resumes of runs written by earlier versions read them as they are.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import h5netcdf
import h5py
import numpy as np
import xarray as xr

from virnuc_hpc.outputs.atomic import write_bytes_atomic
from virnuc_hpc.outputs.bag_format import FRAME_PARTS, TABLE_PARTS, BagInfo, BagPayload, BagTables
from virnuc_hpc.outputs.calls import LABELS as CLASSES

ENGINE = "h5netcdf"
TABLES_GROUP = "tables"  # per-bag table parts, beside the features; xarray does not open groups
_STRING_COORDS = ("frame", "chunk_id", "read_id", "sample")
ROWS_PER_CHUNK = 1024  # about: HDF5 chunks of the features array hold this many frames at most


class NetCDFBags:
    """The NetCDF-4/HDF5 bag format (engine h5netcdf)."""

    suffix = ".nc"

    def encode(self, payload: BagPayload) -> bytes:
        ds, encoding = _dataset(payload)
        # Serialise in memory, then write plain bytes: HDF5 crashes the process on a full disk,
        # while a Python write raises ENOSPC that we can report.
        # Inside a Dask worker xarray would take a cluster-wide lock for the in-memory file; this
        # write is local to the task, so a plain (synchronous) writer is right.
        with dask.config.set(scheduler="synchronous"):
            data = ds.to_netcdf(None, engine=ENGINE, encoding=encoding,
                                invalid_netcdf=payload.features == "float16")
        data = bytes(data) if not isinstance(data, bytes) else data
        if payload.tables is not None:
            data = _with_tables(data, payload.tables, payload.counts)
        return data

    def write(self, path: Path, payload: BagPayload) -> bytes:
        data = self.encode(payload)
        write_bytes_atomic(path, data)
        return data

    def verify(self, path: Path) -> str | None:
        try:
            info = self.describe(path)
        except Exception as exc:  # h5py raises OSError, KeyError, ValueError... on a damaged file
            return f"{path}: not a readable bag file ({type(exc).__name__}: {exc})"
        if "bag_digest" not in info.attrs:
            return f"{path}: not a bag file (no bag_digest attribute)"
        return None

    def describe(self, path: Path) -> BagInfo:
        # h5netcdf directly: no cached file handles, so a file replaced on disk is seen as it is
        with h5netcdf.File(path, "r") as f:
            tables = f.groups[TABLES_GROUP].variables if TABLES_GROUP in f.groups else {}
            return BagInfo(attrs=dict(f.attrs), variables=frozenset(f.variables), tables=frozenset(tables))

    def read_tables(self, path: Path, names: Sequence[str] = TABLE_PARTS) -> BagTables:
        # h5py directly: the tables are plain byte arrays, and h5netcdf's dimension bookkeeping
        # would cost more than reading them
        with h5py.File(path, "r") as f:
            group = f[TABLES_GROUP]
            parts = {name: group[name][()].tobytes().decode() for name in names}
            counts = {k: int(np.asarray(v).reshape(-1)[0]) for k, v in group.attrs.items()
                      if not k.startswith("_") and np.size(v) == 1}
        return BagTables(parts, counts)

    def read_frames(self, path: Path) -> tuple[list[str], list[str]]:
        with h5netcdf.File(path, "r") as f:
            return [_text(x) for x in f.variables["frame"][...]], [_text(x) for x in f.variables["read_id"][...]]

    def open_many(self, paths: Sequence[Path]) -> xr.Dataset:
        return xr.open_mfdataset(list(paths), engine=ENGINE, combine="nested", concat_dim="frame",
                                 data_vars="minimal", coords="minimal", compat="override",
                                 join="override", chunks={}, combine_attrs="drop_conflicts")


def _dataset(payload: BagPayload) -> tuple[xr.Dataset, dict[str, Any]]:
    """The bag as a Dataset, and its per-variable encoding (dtypes, chunks, compression)."""
    bag, frames, features = payload.bag, payload.frames, payload.features
    n = payload.n_frames
    gz: dict[str, Any] = ({"compression": "gzip", "compression_opts": 4, "shuffle": True}
                          if payload.compression == "gzip" else {})
    data_vars: dict[str, Any] = {}
    encoding: dict[str, Any] = {name: {"dtype": "S1", **gz} for name in _STRING_COORDS}
    encoding["record"] = dict(gz)
    dims = {f"{role}_dim": 0 for role in payload.roles()}
    source: list[str] = []
    if features != "none":
        parts = payload.parts
        if parts is None:
            raise ValueError(f"{bag.name}: features {features!r} but no feature vectors")
        if any(vectors.shape[0] != n for _, vectors in parts):
            raise ValueError(f"{bag.name}: {n} frames but "
                             f"{'/'.join(str(vectors.shape[0]) for _, vectors in parts)} vectors")
        feats = np.concatenate([vectors for _, vectors in parts], axis=1).astype(np.float32, copy=False)
        data_vars["features"] = (("frame", "feature"), feats)
        # HDF5 stores whole chunks: rows per chunk split the bag evenly, so no chunk is mostly empty
        rows = -(-n // max(1, -(-n // ROWS_PER_CHUNK))) if n else 1
        encoding["features"] = {"chunksizes": (rows, feats.shape[1]), **gz}
        if features == "float16":
            encoding["features"]["dtype"] = "float16"
        dims = {f"{role}_dim": vectors.shape[1] for role, vectors in parts}
        source = [label for role, vectors in parts for label in [payload.source_of(role)] * vectors.shape[1]]
    if payload.probability is not None:
        data_vars["probability"] = (("frame", "class"), payload.probability.astype(np.float32, copy=False))
        encoding["probability"] = dict(gz)
    coords: dict[str, Any] = {
        "frame": np.array(frames.frame_id, dtype=object),
        "chunk_id": ("frame", np.array(frames.chunk_id, dtype=object)),
        "read_id": ("frame", np.array(frames.read_id, dtype=object)),
        "sample": ("frame", np.array([bag.sample] * n, dtype=object)),
        "record": ("frame", np.asarray(frames.record, dtype=np.int64)),
        "class": np.array(CLASSES, dtype=object),
    }
    if features != "none":
        coords["feature"] = np.arange(len(source), dtype=np.int32)
        coords["source"] = ("feature", np.array(source, dtype=object))
    ds = xr.Dataset(data_vars, coords=coords, attrs={
        **payload.attrs, "bag": bag.index, "bag_digest": bag.digest, "n_frames": n, "features_mode": features,
        "input_file": bag.path, "first_record": bag.first_record, "n_records": bag.n_records, **dims})
    return ds, encoding


def _with_tables(data: bytes, tables: Any, counts: Any) -> bytes:
    """Add the bag's table parts (UTF-8 text, gzip-compressed) as a group of the in-memory file."""
    buffer = io.BytesIO(data)
    with h5netcdf.File(buffer, "a") as f:
        group = f.create_group(TABLES_GROUP)
        for name in (*TABLE_PARTS, *(part for part in FRAME_PARTS if part in tables)):
            raw = np.frombuffer(tables.get(name, "").encode(), dtype=np.uint8)
            group.dimensions[f"{name}_bytes"] = len(raw)
            var = group.create_variable(name, (f"{name}_bytes",), dtype=np.uint8,
                                        **({"compression": "gzip", "compression_opts": 1,
                                            "chunks": (min(len(raw), 1 << 20),)} if len(raw) else {}))
            if len(raw):
                var[...] = raw
        for key, value in counts.items():
            group.attrs[key] = int(value)
    return buffer.getvalue()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):  # a char array row
        return value.tobytes().decode().rstrip("\0")
    return str(value)
