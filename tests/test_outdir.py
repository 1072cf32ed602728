"""The output directory: nothing corrupts it (issue cases named in each test).

Real CLI runs of the demo models; each test disturbs one thing a careless user, a neighbour or a
crash could, and checks the outputs equal an undisturbed run or nothing finished-looking remains.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import pytest

from conftest import (DEMO, DEMO_FASTA, assert_nothing_finished, cli, finished_outputs, killed_run,
                      shared_scheduler)
from virnuc_hpc.outputs import store
from virnuc_hpc.outputs.run_record import RunRecord
from virnuc_hpc.runtime.outdir import publish


def _killed_run(outdir: Path) -> int:
    """A demo run killed (SIGKILL, whole process group) once it has finished two bags."""
    done = killed_run(outdir, after_bags=2)
    assert not (outdir / "run.json").exists(), "the run finished before it was killed"
    assert done >= 2
    return done


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- case 2: files the tool did not write -------------------------------------------------------

def test_case2_a_directory_of_user_files_is_refused_also_with_overwrite(tmp_path: Path, client):
    outdir = tmp_path / "mine"
    (outdir / "bags").mkdir(parents=True)
    for name in ("reads.tsv", "config.yaml", "run.json", "bags/bag-000000.nc", "notes.txt"):
        (outdir / name).write_text(f"the user's own {name}\n")
    before = _snapshot(outdir)
    for extra in ([], ["--overwrite"]):
        proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *extra, *shared_scheduler(client))
        assert proc.returncode == 2, proc.stderr
        assert "not written by virnuc-hpc" in proc.stderr and "Traceback" not in proc.stderr
        assert _snapshot(outdir) == before


def test_case2_the_inputs_own_folder_is_refused(tmp_path: Path, client):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(DEMO_FASTA, data / "reads.fasta")
    proc = cli("predict", str(data / "reads.fasta"), "-o", str(data), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 2 and "reads.fasta" in proc.stderr
    assert sorted(p.name for p in data.iterdir()) == ["reads.fasta"]


# --- case 7: --overwrite removes exactly our files -----------------------------------------------

def test_case7_overwrite_keeps_user_files_and_foreign_bags_are_never_read(reference: Path, tmp_path: Path,
                                                                         client):
    outdir = tmp_path / "ours"
    shutil.copytree(reference, outdir)
    (outdir / "bags" / "bag-user-notes.nc").write_text("mine")
    (outdir / "bags" / "bag-x.nc").mkdir()
    (outdir / "bags" / "bag-x.nc" / "inside.txt").write_text("mine too")
    (outdir / "notes.txt").write_text("my notes")
    with store.open_features(outdir) as ds:  # foreign bag-*.nc files are not read
        assert ds.sizes["frame"] == json.loads((reference / "run.json").read_text())["counts"]["frames"]
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, "--expected-length", "300", "--overwrite",
               *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    assert (outdir / "bags" / "bag-user-notes.nc").read_text() == "mine"
    assert (outdir / "bags" / "bag-x.nc" / "inside.txt").read_text() == "mine too"
    assert (outdir / "notes.txt").read_text() == "my notes"
    fresh = tmp_path / "fresh"
    assert cli("predict", str(DEMO_FASTA), "-o", str(fresh), *DEMO, "--expected-length", "300",
               *shared_scheduler(client)).returncode == 0
    assert finished_outputs(outdir) == finished_outputs(fresh)
    assert sorted(p.name for p in store.bag_files(outdir)) == sorted(p.name for p in store.bag_files(fresh))


# --- case 6: a failed start does not block its correction ----------------------------------------

def test_case6_a_failed_start_does_not_block_the_corrected_rerun(reference: Path, tmp_path: Path,
                                                                client):
    from virnuc_hpc.models.demo import ensure_demo_models
    demo = ensure_demo_models()
    bad = tmp_path / "bad_dnabert"
    shutil.copytree(demo.dnabert, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated weights
    outdir = tmp_path / "out"
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, "--dnabert-model", str(bad))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_nothing_finished(outdir)
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    assert finished_outputs(outdir) == finished_outputs(reference)


# --- case 4: every result-affecting setting is in the run identity ------------------------------

@pytest.mark.parametrize("changed", [["--threads-per-worker", "2"], ["--config", "BUDGET"]])
def test_case4_changed_setting_between_kill_and_resume_is_refused(changed: list[str], reference: Path,
                                                                 tmp_path: Path, client):
    outdir = tmp_path / "killed"
    _killed_run(outdir)
    if changed[-1] == "BUDGET":
        budget = tmp_path / "budget.yaml"
        budget.write_text("esm2_max_tokens: 256\ndnabert_max_tokens: 256\n")
        changed = ["--config", str(budget)]
    before = _snapshot(outdir / "bags")
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *changed)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr, proc.stderr
    assert _snapshot(outdir / "bags") == before  # nothing was mixed in
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    assert finished_outputs(outdir) == finished_outputs(reference)


def test_case4_bags_of_other_numerics_are_recomputed_on_resume(reference: Path, tmp_path: Path,
                                                               client):
    """Budgets left unset are derived by the workers from their card, so a resume on another GPU
    model runs with other numerics. No second kind of card exists in CI: the bags a killed run
    left are relabelled as another card's (their recorded checksums updated, as that run would
    have written them), then the run resumes here."""
    outdir = tmp_path / "killed"
    done = _killed_run(outdir)
    for path in store.bag_files(outdir)[: done // 2 + 1]:
        with h5py.File(path, "a") as f:
            numerics = json.loads(f.attrs["numerics"])
            f.attrs["numerics"] = json.dumps({**numerics, "processor": "NVIDIA H100 80GB HBM3",
                                              "esm2_max_tokens": 106496}, sort_keys=True)
        store.checksum_path(path).write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    assert "other numerics" in proc.stderr
    assert finished_outputs(outdir) == finished_outputs(reference)
    for path in store.bag_files(outdir):
        with h5py.File(path, "r") as f:
            assert "H100" not in f.attrs["numerics"]


# --- bag checksums ---------------------------------------------------------------------------

def test_a_tampered_bag_is_recomputed_with_a_warning(reference: Path, tmp_path: Path, client):
    outdir = tmp_path / "tampered"
    shutil.copytree(reference, outdir)
    path = store.bag_files(outdir)[1]
    with h5py.File(path, "a") as f:  # a plausible edit: the calls flipped
        f["probability"][...] = f["probability"][...][:, ::-1]
    proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 0, proc.stderr
    assert "does not match the checksum" in proc.stderr and path.name in proc.stderr
    assert json.loads((outdir / "run.json").read_text())["bags"]["computed_now"] == 1
    assert finished_outputs(outdir) == finished_outputs(reference)


# --- case 8: smaller ------------------------------------------------------------------------------

def test_case8_tables_never_stand_without_run_json(tmp_path: Path):
    stage, outdir = tmp_path / "stage", tmp_path / "out"
    (stage / "samples" / "s1").mkdir(parents=True)
    (outdir / "run.json").mkdir(parents=True)  # run.json cannot be written: a directory holds its name
    for name in ("reads.tsv", "samples/s1/prediction_results.txt"):
        (stage / name).write_text("table\n")
    with pytest.raises(store.OutputError):
        publish(stage, outdir, ["reads.tsv", "samples/s1/prediction_results.txt"], RunRecord.parse({"x": 1})[0])
    assert not (outdir / "reads.tsv").exists()
    assert not (outdir / "samples" / "s1" / "prediction_results.txt").exists()


def test_case8_an_input_path_with_a_tab_is_refused(tmp_path: Path, client):
    odd = tmp_path / "my\treads.fasta"
    shutil.copy(DEMO_FASTA, odd)
    proc = cli("predict", str(odd), "-o", str(tmp_path / "out"), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 2 and "tab" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "reads.tsv").exists()


def test_case8_a_duplicate_megabyte_id_gives_a_short_message(tmp_path: Path, client):
    long_id = "r" + "x" * 1_000_000
    fasta = tmp_path / "dup.fasta"
    fasta.write_text(f">{long_id}\nACGTACGTAC\n>{long_id}\nACGTACGTAC\n")
    proc = cli("predict", str(fasta), "-o", str(tmp_path / "out"), *DEMO, *shared_scheduler(client))
    assert proc.returncode == 2 and "duplicate id" in proc.stderr
    assert len(proc.stderr) < 5_000
    assert "1,000,001 characters" in proc.stderr


def test_owned_files_lists_each_file_once(reference: Path, tmp_path: Path):
    """Every bag's checksum sidecar once (also one whose bag is gone), and nothing twice."""
    outdir = tmp_path / "copy"
    shutil.copytree(reference, outdir)
    orphan = store.checksum_path(outdir / "bags" / "bag-999999.nc")
    orphan.write_text("0" * 64 + "\n")
    owned = store.owned_files(outdir)
    assert len(owned) == len(set(owned)), [p for p in owned if owned.count(p) > 1]
    bags = store.bag_files(outdir)
    sidecars = [p for p in owned if p.name.endswith(store.CHECKSUM_SUFFIX)]
    assert sorted(sidecars) == sorted([store.checksum_path(p) for p in bags] + [orphan])
    assert set(bags) <= set(owned) and outdir / "run.json" in owned


# --- links inside OUTDIR: refused, never followed (issue 34, item 3) ------------------------------

def _tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime: 'byte-identical afterwards', and not even rewritten."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("linked", ["bags", "bags/bag-000000.nc", "reads.tsv", "run.json"])
def test_a_link_inside_outdir_is_refused_by_resume_and_overwrite(linked: str, reference: Path, tmp_path: Path,
                                                                 client):
    """OUTDIR/bags linked to another folder of bag files (or one file of ours linked elsewhere):
    neither a resume nor --overwrite removes, rewrites or reads what the link points to."""
    outdir, elsewhere = tmp_path / "ours", tmp_path / "elsewhere"
    shutil.copytree(reference, outdir)
    elsewhere.mkdir()
    target = elsewhere / Path(linked).name
    shutil.move(outdir / linked, target)
    (outdir / linked).symlink_to(target, target_is_directory=target.is_dir())
    before, inside = _tree(elsewhere), sorted(p.name for p in outdir.rglob("*"))
    for extra in ([], ["--overwrite", "--skip-invalid"]):  # the same run resumed; another run replacing it
        proc = cli("predict", str(DEMO_FASTA), "-o", str(outdir), *DEMO, *extra, *shared_scheduler(client))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("virnuc-hpc: error: ") and "Traceback" not in proc.stderr, proc.stderr
        assert "symbolic link" in proc.stderr and linked in proc.stderr, proc.stderr
        assert _tree(elsewhere) == before
        assert (outdir / linked).is_symlink() and sorted(p.name for p in outdir.rglob("*")) == inside


def test_a_linked_lock_file_is_refused(tmp_path: Path):
    from virnuc_hpc.outputs.lock import LOCK_NAME, locked
    outdir, target = tmp_path / "out", tmp_path / "someone-elses-file"
    outdir.mkdir()
    target.write_text("not a lock\n")
    (outdir / LOCK_NAME).symlink_to(target)
    with pytest.raises(store.OutputError, match="symbolic link"):
        with locked(outdir, command="test", stale_after_s=0.0):
            pass
    assert target.read_text() == "not a lock\n" and (outdir / LOCK_NAME).is_symlink()


def test_store_helpers_follow_no_link(reference: Path, tmp_path: Path):
    """Even called without the run's up-front check, the clearing helpers leave a linked bags/ alone."""
    outdir, elsewhere = tmp_path / "ours", tmp_path / "elsewhere"
    shutil.copytree(reference, outdir)
    shutil.move(outdir / "bags", elsewhere)
    (outdir / "bags").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / ".bag-000000.nc.tmp-1-abcdef12").write_text("a temporary of someone else's\n")
    before = _tree(elsewhere)
    assert store.bag_files(outdir) == [] and all("bags" not in p.parts for p in store.owned_files(outdir))
    store.clear_outputs(outdir, bags=True)
    store.remove_bags_beyond(outdir, 0)
    store.remove_stale_temporaries(outdir)
    assert _tree(elsewhere) == before
    assert store.linked_entries(outdir) == [outdir / "bags"]


# --- a full disk during the finish leaves no run.json (issue 34, item 7) --------------------------

def test_a_full_disk_while_the_report_is_written_leaves_no_run_json(reference: Path, tmp_path: Path):
    """A real, full filesystem: room for run.json and the MultiQC table, not for report.html. The
    report comes before run.json, so the run fails (exit 2: an OutputError) and nothing finished
    stands; with run.json first, this disk kept a run.json and tables."""
    from conftest import small_tmpfs
    names = ["prediction_results.txt", "prediction_results_highestscore.csv", "reads.tsv"]
    payload = json.loads((reference / "run.json").read_text())
    with small_tmpfs(tmp_path, "1m") as disk:
        page = os.statvfs(disk).f_bsize  # tmpfs counts whole pages
        pages = {name: -(-(reference / name).stat().st_size // page)
                 for name in ("run.json", "report.html", "virnuc_mqc.json")}
        spare = (pages["run.json"] + pages["virnuc_mqc.json"]) * page  # run.json first would fit
        assert spare < (pages["report.html"] + pages["virnuc_mqc.json"]) * page
        outdir, stage = disk / "out", disk / "out" / ".merge-stage"
        stage.mkdir(parents=True)
        for name in names:
            shutil.copy(reference / name, stage / name)
        (disk / "spare").write_bytes(b"s" * spare)
        with open(disk / "filler", "wb", buffering=0) as fh:  # the disk full to the last page
            with pytest.raises(OSError) as full:
                while True:
                    fh.write(b"f" * page)
            assert full.value.errno == errno.ENOSPC
        (disk / "spare").unlink()
        with pytest.raises(store.OutputError, match="No space left on device"):
            publish(stage, outdir, names, RunRecord.parse(payload)[0])
        assert sorted(p.name for p in outdir.iterdir()) == [".merge-stage"], "something finished-looking stands"
