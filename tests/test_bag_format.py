"""The bag format seam: the NetCDF implementation round-trips a bag and tells a damaged file."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from virnuc_hpc.checksums import checksum_path, checksum_text, file_sha256, matches_recorded
from virnuc_hpc.outputs.atomic import write_text_atomic
from virnuc_hpc.outputs.bag_format import TABLE_PARTS, BagFormat, BagPayload
from virnuc_hpc.outputs.netcdf_bags import NetCDFBags


def _payload(n: int = 5, features: str = "float32", roles: tuple[str, ...] = ("dnabert", "esm2")) -> BagPayload:
    rng = np.random.default_rng(0)
    bag = SimpleNamespace(name="bag-000000", index=0, digest="d" * 64, sample="s", path="in.fa",
                          first_record=0, n_records=n)
    frames = SimpleNamespace(frame_id=[f"r{i}_chunk_1F1" for i in range(n)], chunk_id=[f"r{i}_chunk_1" for i in range(n)],
                             read_id=[f"r{i}" for i in range(n)], record=list(range(n)))
    parts = [(role, rng.random((n, 3 + i), np.float32)) for i, role in enumerate(roles)]
    return BagPayload(bag, frames, parts, rng.random((n, 2), np.float32), {"numerics": "fp32"}, features=features,
                      tables={"predictions": "row\n", "nucleotide": ">x\nACGT\n"}, counts={"frames": n})


def test_netcdf_bags_round_trip(tmp_path: Path):
    fmt: BagFormat = NetCDFBags()
    payload = _payload()
    path = tmp_path / f"bag-000000{fmt.suffix}"
    data = fmt.write(path, payload)
    assert path.read_bytes() == data and fmt.encode(payload) == data  # the same bag gives the same bytes
    assert fmt.verify(path) is None
    info = fmt.describe(path)
    assert info.attrs["bag_digest"] == "d" * 64 and info.attrs["dnabert_dim"] == 3 and info.attrs["esm2_dim"] == 4
    assert {"features", "probability"} <= info.variables and set(TABLE_PARTS) | {"nucleotide"} == info.tables
    tables = fmt.read_tables(path)
    assert tables["predictions"] == "row\n" and tables["viral"] == "" and tables.counts == {"frames": 5}
    assert fmt.read_tables(path, ["nucleotide"])["nucleotide"] == ">x\nACGT\n"
    assert fmt.read_frames(path) == (payload.frames.frame_id, payload.frames.read_id)
    with fmt.open_many([path]) as ds:
        want = np.concatenate([v for _, v in payload.parts], axis=1)
        np.testing.assert_array_equal(ds.features.values, want)
        np.testing.assert_array_equal(ds.probability.values, payload.probability)
        assert list(ds.source.values) == ["dnabert_s"] * 3 + ["esm2"] * 4


def test_a_new_role_labels_its_own_columns(tmp_path: Path):
    fmt = NetCDFBags()
    path = tmp_path / "bag-000000.nc"
    fmt.write(path, _payload(roles=("dnabert", "esm2", "caduceus")))
    assert fmt.describe(path).attrs["caduceus_dim"] == 5
    with fmt.open_many([path]) as ds:
        assert list(ds.source.values[-5:]) == ["caduceus"] * 5


def test_verify_catches_a_truncated_or_foreign_file(tmp_path: Path):
    fmt = NetCDFBags()
    path = tmp_path / "bag-000000.nc"
    data = fmt.write(path, _payload())
    path.write_bytes(data[: len(data) // 2])
    assert "not a readable bag file" in (fmt.verify(path) or "")
    path.write_bytes(b"")
    assert fmt.verify(path) is not None
    path.write_text("not HDF5 at all\n")
    assert fmt.verify(path) is not None


def test_one_checksum_for_every_file(tmp_path: Path):
    import hashlib
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 70_000
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert matches_recorded(path) is None
    write_text_atomic(checksum_path(path), checksum_text(data))
    assert checksum_path(path).name == "f.bin.sha256" and matches_recorded(path) is True
    path.write_bytes(data[:-1])
    assert matches_recorded(path) is False


def test_unknown_features_mode_is_refused():
    with pytest.raises(ValueError, match="features must be one of"):
        _payload(features="int4")
