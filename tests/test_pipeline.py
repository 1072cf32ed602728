"""End to end on real Dask clusters (127.0.0.1), real NetCDF files, random-weight demo models."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from conftest import (DEMO, DEMO_FASTA, FINAL, assert_nothing_finished, cli, finished_bags,
                      finished_outputs, killed_run, shared_scheduler, small_tmpfs)
from virnuc_hpc.outputs import store
from virnuc_hpc.config import load_config
from virnuc_hpc.testing.loading import load_records
from virnuc_hpc.reads.frames import frames_for_records


def test_demo_writes_every_output(reference: Path):
    for name in (*FINAL, "run.json", "config.yaml", "manifest.json"):
        assert (reference / name).is_file(), name
    run = json.loads((reference / "run.json").read_text())
    assert run["random_weights"] is True and "NOT a biological result" in run["warning"]
    phases = run["model_load_on_workers_phases_s"]  # the slowest worker's startup, phase by phase
    assert {"imports", "encoders_load", "classifier_load", "load_other", "esm2_warm_up"} <= phases.keys()
    assert "cuda_start" not in phases and min(phases.values()) >= 0
    assert sum(phases.values()) == pytest.approx(run["model_load_on_workers_s"])
    table = frames_for_records(load_records([DEMO_FASTA], skip_invalid=False).records, 300)
    lines = (reference / "prediction_results.txt").read_text().splitlines()
    assert lines[0].startswith("# RANDOM WEIGHTS")
    assert lines[1] == "Sequence_ID\tPrediction\tscore1\tscore2"
    ids = [line.split("\t")[0] for line in lines[2:]]
    assert ids == list(table.frame_id) and len(set(ids)) == len(ids) > 20
    assert run["counts"]["frames"] == len(ids)
    chunks = (reference / "prediction_results_highestscore.csv").read_text().splitlines()[2:]
    assert [c.split("\t")[0] for c in chunks] == sorted({i[:-2] for i in ids})


def test_features_belong_to_their_frames(reference: Path, demo_cache: Path):
    """Every stored vector is the encoders' output for that very frame (no mix-up within or across
    bags): each frame's sequences are embedded again here, one sequence per call (no batching,
    padding or packing shared with any other frame), by encoders loaded afresh on the CPU."""
    from virnuc_hpc.models.demo import ensure_demo_models
    from virnuc_hpc.encoders import load_dnabert, load_esm2

    table = frames_for_records(load_records([DEMO_FASTA], skip_invalid=False).records, 300)
    with store.open_features(reference) as ds:
        assert list(ds.frame.values) == list(table.frame_id)
        feats = ds.features.values
        n_dna = int((ds.source == "dnabert_s").sum())
    models = ensure_demo_models()
    esm = load_esm2(str(models.esm2), device="cpu", precision="fp32")
    dna = load_dnabert(str(models.dnabert), device="cpu", precision="fp32")
    assert len(table.frame_id) > 20
    for i, fid in enumerate(table.frame_id):  # every frame (74 in the demo)
        np.testing.assert_allclose(feats[i, :n_dna], dna.embed([table.nucleotide[i]])[0], atol=1e-5,
                                   err_msg=f"DNABERT-S vector of {fid}")
        np.testing.assert_allclose(feats[i, n_dna:], esm.embed([table.protein[i]])[0], atol=1e-5,
                                   err_msg=f"ESM-2 vector of {fid}")
    # the vectors tell frames apart: a vector stored under the wrong frame would be caught above
    assert len({feats[i].tobytes() for i in range(len(feats))}) > len(feats) // 2


def test_reads_tsv_lists_every_read(reference: Path):
    rows = (reference / "reads.tsv").read_text().splitlines()
    assert rows[0].startswith("# RANDOM WEIGHTS")
    header, body = rows[1].split("\t"), [r.split("\t") for r in rows[2:]]
    records = load_records([DEMO_FASTA], skip_invalid=False).records
    assert [r[0] for r in body] == [r.id for r in records]
    status = {r[0]: r[header.index("status")] for r in body}
    assert "no_open_frame" in status.values() and "ok" in status.values()


def test_kill_9_then_resume_is_identical(reference: Path, demo_cache: Path, tmp_path: Path):
    """Three runs killed with SIGKILL (whole process group: client, scheduler, workers), each once it
    has finished at least one more bag (plus up to 0.3 s), so that each is killed mid-run; the
    fourth run resumes."""
    outdir = tmp_path / "killed"
    rng = random.Random(1)
    for attempt in range(3):  # the demo computes a bag in ~0.2 s
        killed_run(outdir, after_bags=finished_bags(outdir) + 1, delay=rng.uniform(0.0, 0.3))
    done_before = finished_bags(outdir)
    assert done_before >= 3, "the killed runs made no progress"
    assert not (outdir / "run.json").exists(), "a killed run finished: nothing was interrupted"
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO)
    assert proc.returncode == 0, proc.stderr
    assert finished_outputs(outdir) == finished_outputs(reference)
    run = json.loads((outdir / "run.json").read_text())
    assert run["bags"]["reused"] >= done_before  # every bag finished before was reused
    assert run["bags"]["computed_now"] >= 1
    with store.open_features(outdir) as a, store.open_features(reference) as b:
        assert list(a.frame.values) == list(b.frame.values)
        np.testing.assert_array_equal(a.features.values, b.features.values)


def test_damaged_bags_are_recomputed(reference: Path, tmp_path: Path, client):
    import shutil
    outdir = tmp_path / "damaged"
    shutil.copytree(reference, outdir)
    bags = sorted((outdir / "bags").glob("bag-*.nc"))
    bags[0].unlink()
    bags[1].write_bytes(bags[1].read_bytes()[:500])
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((outdir / "run.json").read_text())["bags"]["computed_now"] == 2
    assert finished_outputs(outdir) == finished_outputs(reference)


def test_changed_configuration_is_refused_unless_overwrite(reference: Path, tmp_path: Path, client):
    import shutil
    outdir = tmp_path / "changed"
    shutil.copytree(reference, outdir)
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, "--expected-length", "500",
               *shared_scheduler(client))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (outdir / "run.json").exists()  # the old finished run is left untouched
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, "--expected-length", "500",
               "--overwrite", *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((outdir / "run.json").read_text())["config"]["expected_length"] == 500


def test_bring_your_own_client(reference: Path, tmp_path: Path, client):
    import virnuc_hpc
    result = virnuc_hpc.predict([DEMO_FASTA], tmp_path / "byo", client=client,
                                config=load_config(preset="demo"), progress=False, bag_size=8)
    assert client.status == "running"  # the caller's client is not closed
    assert finished_outputs(result.outdir) == finished_outputs(reference)


def test_embed_writes_features_only(tmp_path: Path, client):
    outdir = tmp_path / "embed"
    proc = cli("embed", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    assert not (outdir / "prediction_results.txt").exists()
    with store.open_features(outdir) as ds:
        assert "probability" not in ds and ds.features.shape[0] > 20


def test_duplicate_reads_are_embedded_once_with_the_same_vectors(reference: Path, tmp_path: Path, client):
    """Repeated sequences (other ids) are embedded once per bag: every copy gets the same vector as
    the original, the original keeps the vector of the run without copies, and run.json shows fewer
    sequences embedded than frames."""
    records = load_records([DEMO_FASTA], skip_invalid=False).records
    lines = []
    for i, r in enumerate(records):
        lines.append(f">{r.id}\n{r.seq}\n")
        if i < 6:  # each copy right after its original: in the same bag, but for a bag boundary
            lines.append(f">{r.id}_copy\n{r.seq.lower()}\n")
    fasta = tmp_path / "dups.fa"
    fasta.write_text("".join(lines))
    outdir = tmp_path / "dups"
    proc = cli("embed", str(fasta), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with store.open_features(outdir) as ds, store.open_features(reference) as ref:
        got = dict(zip(map(str, ds.frame.values), ds.features.values))
        want = dict(zip(map(str, ref.frame.values), ref.features.values))
    copies = [fid for fid in got if "_copy_chunk_" in fid]
    assert copies
    for fid in copies:
        original = fid.replace("_copy_chunk_", "_chunk_")
        np.testing.assert_array_equal(got[fid], got[original])
    for fid, vector in want.items():
        np.testing.assert_allclose(got[fid], vector, atol=1e-5)
    workers = json.loads((outdir / "run.json").read_text())["workers"].values()
    embedded = sum(w["counters"]["esm2_sequences"] for w in workers)
    # a copy is embedded again only where a bag boundary falls between it and its original
    assert len(got) - len(copies) <= embedded < len(got)


# --- refused input: clear message, exit 2, nothing that looks finished ----------------------

BAD_INPUTS = {
    "text_before_header": (b"ACGT\n>r1\nACGT\n", "before the first"),
    "binary": (b">r1\nAC\x00\xff\xfeGT\n", "binary"),
    "empty_file": (b"", "empty"),
    "digits": (b">r1\nACGT\n>r2\nAC1GT\n", "r2"),
    "punctuation": (b">r1\nACG;T\n", "r1"),
    "empty_record": (b">r1\n>r2\nACGT\n", "r1"),
    "duplicate_ids": (b">r1\nACGT\n>r1 again\nACGA\n", "r1"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused(case: str, tmp_path: Path, client):
    content, expected = BAD_INPUTS[case]
    fasta = tmp_path / "in.fa"
    fasta.write_bytes(content)
    outdir = tmp_path / "out"
    proc = cli("predict", str(fasta), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 2, proc.stderr
    assert "in.fa" in proc.stderr and expected.lower() in proc.stderr.lower(), proc.stderr
    assert "Traceback" not in proc.stderr
    assert_nothing_finished(outdir)
    assert cli("validate", str(fasta)).returncode == 2


def test_skip_invalid_reports_skipped_records(tmp_path: Path, client):
    fasta = tmp_path / "mixed.fa"
    good = DEMO_FASTA.read_text()
    fasta.write_text(good + ">empty_one\n>demo_read_000\nACGT\n>bad_chars\nACGT123\n")
    outdir = tmp_path / "out"
    proc = cli("predict", str(fasta), "-o", str(outdir), *DEMO, "--skip-invalid", *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    rows = [r.split("\t") for r in (outdir / "reads.tsv").read_text().splitlines()[2:]]
    skipped = {(r[0], r[3]) for r in rows if r[3].startswith("skipped")}
    assert {name for name, _ in skipped} == {"empty_one", "demo_read_000", "bad_chars"}


def test_wrong_model_files_are_refused(tmp_path: Path, demo_cache: Path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    for option in ("--esm2-model", "--classifier"):
        outdir = tmp_path / option.strip("-")
        proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, option, str(junk))
        assert proc.returncode == 2, proc.stderr
        assert "junk.pt" in proc.stderr and "Traceback" not in proc.stderr
        assert_nothing_finished(outdir)
    proc = cli("predict", str(DEMO_FASTA), "-o", str(tmp_path / "m"), *DEMO,
               "--esm2-model", "esm2_t99_1T_nope", env_extra={"VIRNUC_HPC_OFFLINE": "1"})
    assert proc.returncode == 2 and "esm2_t99_1T_nope" in proc.stderr


def test_unwritable_output_directory(tmp_path: Path, demo_cache: Path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc = cli("predict", str(DEMO_FASTA), "-o", str(blocker / "out"), *DEMO)
    assert proc.returncode == 2 and "not writable" in proc.stderr


def test_full_disk_fails_cleanly(tmp_path: Path, demo_cache: Path):
    with small_tmpfs(tmp_path, "160k") as mnt:
        proc = cli("predict", str(DEMO_FASTA), "-o", str(mnt / "out"), *DEMO)
        assert proc.returncode == 2, proc.stderr
        assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
        assert_nothing_finished(mnt / "out")
        assert not list(mnt.rglob(".*.tmp-*"))


def test_classifier_named_for_another_chunk_size_warns(tmp_path: Path, client):
    import shutil
    from virnuc_hpc.models.demo import ensure_demo_models
    clf = tmp_path / "500_model.pth"
    shutil.copy(ensure_demo_models().classifier, clf)
    outdir = tmp_path / "out"
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, "--classifier", str(clf),
               *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    assert "chunk size" in proc.stderr and "500" in proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "chunk size" in line]
    assert warned and "500_model.pth" in warned[0] and "300" in warned[0], proc.stderr
    run = json.loads((outdir / "run.json").read_text())
    assert len(run["warnings"]) == 1 and "500_model.pth" in run["warnings"][0]
    assert "300" in run["warnings"][0]
    # the warning does not stop the run: the tables are written
    assert (outdir / "prediction_results.txt").is_file()
