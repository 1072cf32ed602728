"""`virnuc-hpc models fetch | verify | list` against a real local HTTP server, and runs that find
the staged models by name, offline.

The server (threads, HTTP Range, bound to 127.0.0.1) holds random-weight files in the real formats
at the upstream paths, as a site mirror would; it can drop a connection mid-file once, as a flaky
link does, so that resuming is tested against a real socket.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from conftest import DEMO_FASTA, cli

ESM2 = "fair-esm/models/esm2_t6_8M_UR50D.pt"
DNABERT = "zhihan1996/DNABERT-S/resolve/main"
CLASSIFIER = "Li-Jing-1997/VirNucPro/main/500_model.pth"
# upstream path on the mirror -> file in the models directory
STAGED = {ESM2: "esm2_t6_8M_UR50D.pt", CLASSIFIER: "500_model.pth",
          **{f"{DNABERT}/{f}": f"zhihan1996/DNABERT-S/{f}" for f in ("config.json", "pytorch_model.bin",
                                                                     "tokenizer.json")}}
FETCH = ["--esm2", "esm2_t6_8M_UR50D", "--dnabert", "zhihan1996/DNABERT-S", "--classifiers", "500"]


class _Mirror(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, drop: dict[str, int]):
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.root = root.resolve()
        self.drop = dict(drop)        # path -> bytes sent before the connection is cut (first GET only)
        self.seen: list[tuple[str, str | None]] = []   # (path, Range header) of every GET


class _RangeHandler(BaseHTTPRequestHandler):
    """GET with ``Range: bytes=N-`` (206 + Content-Range); 404 for what is not there."""

    server: _Mirror

    def do_GET(self) -> None:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        wanted = self.headers.get("Range")
        self.server.seen.append((rel, wanted))
        path = (self.server.root / rel).resolve()
        if self.server.root not in path.parents or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if wanted:
            match = re.fullmatch(r"bytes=(\d+)-", wanted)
            start = int(match[1]) if match else len(data) + 1
            if start >= len(data):
                self.send_error(416)
                return
        body = data[start:]
        self.send_response(206 if wanted else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        cut = self.server.drop.pop(rel, None)
        if cut is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)   # the link dies mid-file
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def mirror(root: Path, drop: dict[str, int] | None = None) -> Iterator[tuple[str, _Mirror]]:
    server = _Mirror(root, drop or {})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-weight models in the real formats at their upstream paths (DNABERT as pytorch_model.bin,
    the classifier as a whole pickled module like VirNucPro's own files)."""
    from virnuc_hpc.models.random_weights import (write_random_classifier, write_random_dnabert_dir,
                                                  write_random_esm2_checkpoint)

    root = tmp_path_factory.mktemp("mirror")
    write_random_esm2_checkpoint(root / ESM2, layers=6, embed_dim=320, heads=20, seed=1)
    made = write_random_dnabert_dir(tmp_path_factory.mktemp("dnabert") / "d", layers=2, hidden=128, heads=4,
                                    intermediate=512, vocab_size=512, seed=1, fmt="bin")
    (root / DNABERT).mkdir(parents=True)
    for name in ("config.json", "pytorch_model.bin", "tokenizer.json"):
        shutil.copy(made / name, root / DNABERT / name)
    write_random_classifier(root / CLASSIFIER, input_dim=128 + 320, hidden_dim=64, seed=1, whole_module=True)
    return root


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_resumes_then_verify_and_an_offline_predict_find_the_models(served: Path, tmp_path: Path):
    models = tmp_path / "models"
    esm2_bytes = (served / ESM2).stat().st_size
    with mirror(served, drop={ESM2: 100_000}) as (url, server):
        first = cli("models", "fetch", "--models-dir", str(models), "--mirror", url, *FETCH, "--retries", "0")
        assert first.returncode == 2, first.stderr
        assert "esm2_t6_8M_UR50D.pt" in first.stderr and "again to resume" in first.stderr
        part = models / "esm2_t6_8M_UR50D.pt.part"
        assert part.stat().st_size == 100_000 < esm2_bytes
        assert not (models / "esm2_t6_8M_UR50D.pt").exists(), "a partial file must never take the real name"

        second = cli("models", "fetch", "--models-dir", str(models), "--mirror", url, *FETCH)
        assert second.returncode == 0, second.stderr
        assert (ESM2, "bytes=100000-") in server.seen, server.seen
        assert (f"{DNABERT}/model.safetensors", None) in server.seen  # preferred, absent: the .bin is taken
    for upstream, staged in STAGED.items():
        assert (models / staged).read_bytes() == (served / upstream).read_bytes(), staged
    assert not list(models.rglob("*.part"))
    manifest = json.loads((models / "manifest.json").read_text())
    assert {e["file"]: e["sha256"] for e in manifest["files"]} == \
        {staged: sha256(served / upstream) for upstream, staged in STAGED.items()}
    assert {e["url"] for e in manifest["files"]} >= {
        "https://dl.fbaipublicfiles.com/fair-esm/models/esm2_t6_8M_UR50D.pt",
        "https://huggingface.co/zhihan1996/DNABERT-S/resolve/main/pytorch_model.bin",
        "https://raw.githubusercontent.com/Li-Jing-1997/VirNucPro/main/500_model.pth"}

    ok = cli("models", "verify", "--models-dir", str(models))
    assert ok.returncode == 0, ok.stderr
    assert "ESM-2, 6 layers, 320 dim" in ok.stdout and "VirNucPro classifier, 448 input features" in ok.stdout
    listed = cli("models", "list", "--models-dir", str(models), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["file"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert rows["esm2_t6_8M_UR50D.pt"]["random_weights"] is True
    assert rows["zhihan1996/DNABERT-S/config.json"]["random_weights"] is True
    assert rows["500_model.pth"]["size"] == (served / CLASSIFIER).stat().st_size

    # one byte of ESM-2 changed, the tokenizer cut short, the classifier gone: each is named
    esm2, tokenizer = models / "esm2_t6_8M_UR50D.pt", models / "zhihan1996/DNABERT-S/tokenizer.json"
    altered = bytearray(esm2.read_bytes())
    altered[len(altered) // 2] ^= 0x01
    esm2.write_bytes(bytes(altered))
    tokenizer.write_bytes(tokenizer.read_bytes()[:100])
    (models / "500_model.pth").unlink()
    bad = cli("models", "verify", "--models-dir", str(models))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "esm2_t6_8M_UR50D.pt: altered" in bad.stderr
    assert "zhihan1996/DNABERT-S/tokenizer.json: truncated" in bad.stderr
    assert "500_model.pth: missing" in bad.stderr
    for upstream, staged in STAGED.items():
        shutil.copy(served / upstream, models / staged)

    # the server is stopped: the run finds every model by name in the models directory, offline
    outdir = tmp_path / "out"
    run = cli("predict", str(DEMO_FASTA), "-o", str(outdir), "--esm2-model", "esm2_t6_8M_UR50D",
              "--dnabert-model", "zhihan1996/DNABERT-S", "--classifier", "500", "--expected-length", "500",
              "--no-progress", env_extra={"VIRNUC_HPC_MODELS": str(models)})
    assert run.returncode == 0, run.stderr
    used = json.loads((outdir / "run.json").read_text())["models"]
    assert {role: Path(m["path"]) for role, m in used.items()} == {
        "esm2": esm2, "dnabert": models / "zhihan1996/DNABERT-S", "classifier": models / "500_model.pth"}
    assert used["esm2"]["sha256"] == sha256(served / ESM2)
    assert (outdir / "prediction_results.txt").stat().st_size > 0


def test_a_dropped_connection_is_resumed_within_one_fetch(served: Path, tmp_path: Path):
    models = tmp_path / "models"
    with mirror(served, drop={CLASSIFIER: 4096}) as (url, server):
        proc = cli("models", "fetch", "--models-dir", str(models), "--mirror", url + "/",
                   "--esm2", "none", "--dnabert", "none", "--classifiers", "500")
        assert proc.returncode == 0, proc.stderr
        assert [r for p, r in server.seen if p == CLASSIFIER] == [None, "bytes=4096-"]
        assert "resuming at" in proc.stderr
        again = cli("models", "fetch", "--models-dir", str(models), "--mirror", url,
                    "--esm2", "none", "--dnabert", "none", "--classifiers", "500_model.pth")
        assert again.returncode == 0, again.stderr
        assert "already staged" in again.stdout
        assert [r for p, r in server.seen if p == CLASSIFIER] == [None, "bytes=4096-"], "whole files are kept"
    assert (models / "500_model.pth").read_bytes() == (served / CLASSIFIER).read_bytes()


def test_fetch_refusals_name_what_is_wrong(served: Path, tmp_path: Path):
    models = tmp_path / "models"
    with mirror(served) as (url, _):
        absent = cli("models", "fetch", "--models-dir", str(models), "--mirror", url,
                     "--esm2", "esm2_t12_35M_UR50D", "--dnabert", "none", "--classifiers", "none")
        assert absent.returncode == 2
        assert f"{url}/fair-esm/models/esm2_t12_35M_UR50D.pt" in absent.stderr and "404" in absent.stderr
    unknown = cli("models", "fetch", "--models-dir", str(models), "--esm2", "esm2_huge", "--dnabert", "none")
    assert unknown.returncode == 2 and "not a released ESM-2 model" in unknown.stderr
    scheme = cli("models", "fetch", "--models-dir", str(models), "--mirror", "ftp://x", "--esm2", "none")
    assert scheme.returncode == 2 and "http://" in scheme.stderr
    for proc in (absent, unknown, scheme):
        assert "Traceback" not in proc.stderr


def test_mirror_paths_are_the_upstream_paths():
    from virnuc_hpc.models import sources

    files = [url for s in (*sources.esm2_sources("esm2_t36_3B_UR50D"), *sources.dnabert_sources("zhihan1996/DNABERT-S"),
                           *sources.classifier_sources("300,500")) for _, url in s.candidates]
    assert [sources.mirrored(u, "http://site:8000/models/") for u in files] == [
        "http://site:8000/models/fair-esm/models/esm2_t36_3B_UR50D.pt",
        "http://site:8000/models/zhihan1996/DNABERT-S/resolve/main/config.json",
        "http://site:8000/models/zhihan1996/DNABERT-S/resolve/main/tokenizer.json",
        "http://site:8000/models/zhihan1996/DNABERT-S/resolve/main/model.safetensors",
        "http://site:8000/models/zhihan1996/DNABERT-S/resolve/main/pytorch_model.bin",
        "http://site:8000/models/Li-Jing-1997/VirNucPro/main/300_model.pth",
        "http://site:8000/models/Li-Jing-1997/VirNucPro/main/500_model.pth"]
    assert sources.mirrored(files[0], None) == "https://dl.fbaipublicfiles.com/fair-esm/models/esm2_t36_3B_UR50D.pt"


def test_a_configured_models_dir_never_downloads(served: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from virnuc_hpc.config import RunConfig
    from virnuc_hpc.errors import ModelNotFoundError
    from virnuc_hpc.models.resolve import locate_models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    models = tmp_path / "models"
    models.mkdir()
    config = RunConfig(models_dir=str(models), esm2_model="esm2_t6_8M_UR50D", classifier="300")
    with pytest.raises(ModelNotFoundError, match=r"offline mode.*models fetch --esm2 esm2_t6_8M_UR50D"):
        locate_models(config, classify=True)
    shutil.copy(served / ESM2, models / "esm2_t6_8M_UR50D.pt")
    shutil.copytree(served / DNABERT, models / "zhihan1996" / "DNABERT-S")
    with pytest.raises(ModelNotFoundError, match=r"models fetch --classifiers 300"):
        locate_models(config, classify=True)
    located = locate_models(config.model_copy(update={"classifier": "500_model.pth"}), classify=False)
    assert Path(located["esm2"].path) == models / "esm2_t6_8M_UR50D.pt"
    assert Path(located["dnabert"].path) == models / "zhihan1996" / "DNABERT-S"


def test_python_http_server_serves_a_mirror_and_a_stale_part_is_replaced(served: Path, tmp_path: Path):
    """`python -m http.server` ignores Range: the stale ``.part`` is dropped and the file fetched whole."""
    from functools import partial
    from http.server import SimpleHTTPRequestHandler

    from virnuc_hpc.models import sources, staging

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    models = tmp_path / "models"
    models.mkdir()
    (models / "500_model.pth.part").write_bytes(b"not the start of the file")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = staging.fetch(models, sources.classifier_sources("500"),
                             mirror=f"http://127.0.0.1:{server.server_address[1]}", bar=False)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert [(d.entry.file, d.downloaded) for d in done] == [("500_model.pth", True)]
    assert (models / "500_model.pth").read_bytes() == (served / CLASSIFIER).read_bytes()
    assert not (models / "500_model.pth.part").exists()


def test_submit_refuses_a_staged_file_whose_size_is_not_the_manifests(tmp_path: Path, demo_cache: Path):
    """A copy cut short on its way to the shared disk is caught before the job is queued."""
    from virnuc_hpc.config import RunConfig
    from virnuc_hpc.errors import ModelFileError
    from virnuc_hpc.models.manifest import Entry, write_manifest
    from virnuc_hpc.models.random_weights import write_random_classifier
    from virnuc_hpc.runtime.job_checks import check_models

    models = tmp_path / "models"
    classifier = write_random_classifier(models / "500_model.pth")
    size = classifier.stat().st_size

    def staged(recorded: int) -> None:
        write_manifest(models, {"500_model.pth": Entry("500_model.pth", "classifier", "500", recorded, "0" * 64,
                                                       "https://example.org/500_model.pth", "", "")})

    config = RunConfig(models_dir=str(models), esm2_model="demo", dnabert_model="demo", classifier="500",
                       cache_dir=str(demo_cache))  # the session's demo models, made once
    staged(size)
    check_models(config, classify=True)
    staged(size + 1)
    with pytest.raises(ModelFileError, match=rf"500_model\.pth is {size:,} bytes, but the models manifest records"):
        check_models(config, classify=True)
