"""The whole run: FASTA -> frames -> bags -> Dask workers -> NetCDF bags -> VirNucPro tables.

``predict`` and ``embed`` are the Python entry points (the CLI calls them too). Pass your own
``distributed.Client`` to run inside an interactive Dask session.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import json
import logging
import os
import platform
import shlex
import socket
import sys
import threading
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, as_completed

from virnuc_hpc import __version__

from virnuc_hpc.outputs import store
from virnuc_hpc.reads.bags import Bag, BagRef, HeadStats, head_stats, plan_bags, records_per_bag
from virnuc_hpc.runtime.cluster import connect, dashboard_link, preflight
from virnuc_hpc.config import RESULT_FIELDS, RunConfig, dump_config, fingerprint, load_config, with_environment
from virnuc_hpc.errors import BagsFailedError, ConfigError, SampleError
from virnuc_hpc.yaml_files import read_yaml
from virnuc_hpc.runtime.gpu_monitor import mean_utilization
from virnuc_hpc.outputs.lock import locked
from virnuc_hpc.outputs.report import REPORT_FILES, write_report
from virnuc_hpc.reads.sizing import FileEstimate, decompressed_size, estimated_run_bags
from virnuc_hpc.runtime.progress import Progress, ProgressLog
from virnuc_hpc.runtime.runlog import RunLog
from virnuc_hpc.runtime.threads import (ThreadPlan, available_cpus, busiest_node, io_threads, plan_threads,
                                        warn_if_oversubscribed)
from virnuc_hpc.models.resolve import ModelFile, hash_models, locate_models
from virnuc_hpc.reads.reading import ReadDigest, sniff
from virnuc_hpc.reads.samples import InputFile, Sample, read_samplesheet, samples_from_paths
from virnuc_hpc.outputs.sequences import SampleSequences, SequenceOptions
from virnuc_hpc.outputs.tables import SampleTables, new_tmpdir, remove_tmpdir
from virnuc_hpc.timing import StageTimer, peak_rss_mb
from virnuc_hpc.runtime.int8_check import Int8Decision, decide, read_decision, sample_proteins, write_decision
from virnuc_hpc.runtime.worker import (BagReport, BagRules, BagSeconds, EncoderPlugin, EncoderStats, ModelSpec,
                                       check_int8, run_bag, translate_bag, warm_up)

log = logging.getLogger("virnuc_hpc")
FORMAT_VERSION = 3  # 2: bags cut from the input stream, table parts inside the bag files; 3: checksums


@dataclass
class RunResult:
    outdir: Path
    counts: dict[str, int]
    seconds: dict[str, float]
    random_weights: bool
    dashboard: str | None = None
    files: list[str] = field(default_factory=list)
    model_load_on_workers_s: float | None = None
    bytes_per_frame: float | None = None


def predict(inputs: Sequence[str | Path] | str | Path, outdir: str | Path, client: Client | None = None,
            config: RunConfig | None = None, *, samplesheet: str | Path | None = None,
            **overrides: Any) -> RunResult:
    """VirNucPro prediction: features, probabilities and the compatible tables, per sample.

    What the run does (models, bags, progress lines every ``config.log_interval`` seconds, warnings)
    goes to the ``virnuc_hpc`` logger; in a notebook or script, ``logging.basicConfig(level=logging.INFO)``
    shows it. With ``client=``, the encoders are taken off your workers when the run returns.
    """
    return run(inputs, outdir, client=client, config=config, classify=True, samplesheet=samplesheet,
               **overrides)


def embed(inputs: Sequence[str | Path] | str | Path, outdir: str | Path, client: Client | None = None,
          config: RunConfig | None = None, *, samplesheet: str | Path | None = None,
          **overrides: Any) -> RunResult:
    """Features only (DNABERT-S | ESM-2 per kept frame), as NetCDF bags."""
    return run(inputs, outdir, client=client, config=config, classify=False, samplesheet=samplesheet,
               **overrides)


def resolve_samples(inputs: Sequence[str | Path] | str | Path, samplesheet: str | Path | None) -> list[Sample]:
    """Samples from a samplesheet, or one sample per input file."""
    paths = [str(inputs)] if isinstance(inputs, (str, Path)) else [str(p) for p in inputs]
    if samplesheet is not None:
        if paths:
            raise SampleError("give input files or --samplesheet, not both")
        return read_samplesheet(str(samplesheet))
    if not paths:
        raise SampleError("no input given (FASTA/FASTQ files, or --samplesheet)")
    return samples_from_paths(paths)


def run(inputs: Sequence[str | Path] | str | Path, outdir: str | Path, *, client: Client | None = None,
        config: RunConfig | None = None, classify: bool = True, samplesheet: str | Path | None = None,
        command_line: str | None = None, **overrides: Any) -> RunResult:
    """The whole run. OUTDIR's lock (lock.py) is held from before its manifest is read until
    run.json is written: a second run into the same OUTDIR is refused instead of mixing files.
    ``command_line`` goes into run.json and run.log (default: this process's ``sys.argv``)."""
    command_line = shlex.join(sys.argv) if command_line is None else command_line
    # the run log closes first, while OUTDIR is still locked (runlog.py)
    with ExitStack() as held, RunLog(command_line) as run_log:  # the lock, released when _run ends
        return _run(held, inputs, outdir, client=client, config=config, classify=classify,
                    samplesheet=samplesheet, run_log=run_log, **overrides)


def _run(held: ExitStack, inputs: Sequence[str | Path] | str | Path, outdir: str | Path, *,
         client: Client | None = None, config: RunConfig | None = None, classify: bool = True,
         samplesheet: str | Path | None = None, run_log: RunLog, **overrides: Any) -> RunResult:
    timer = StageTimer()
    started, t_start = _dt.datetime.now(_dt.timezone.utc), time.perf_counter()
    marks: dict[str, float] = {}  # seconds from the start to milestones (first bag submitted, done)
    with timer("setup"):
        config = with_environment((config or load_config()).model_copy(
            update={k: v for k, v in overrides.items() if v is not None}))
        config = RunConfig(**config.model_dump())  # re-validate the overrides
        preflight(config, client)  # a missing package or GPU: refused before any process starts
        if not classify and config.features == "none":
            raise ConfigError("features: none keeps no features; `embed` needs float32 or float16")
        samples = resolve_samples(inputs, samplesheet)
        files = [f for sample in samples for f in sample.files]
        for f in files:  # empty, binary or not FASTA/FASTQ: refused before anything starts
            sniff(f.path)
        outdir = Path(outdir)
        held.enter_context(locked(outdir, command=run_log.command_line))
        previous = _previous_run(outdir)
        located = locate_models(config, classify=classify)  # fast: a missing model fails right away
        spec = _model_spec(config, located)

    reports: list[BagReport] = []
    dashboard, worker_load_s, worker_load_phases = None, None, {}
    stack = ExitStack()  # our cluster or the caller's client, and the warm-up futures
    stopping: threading.Thread | None = None
    refs: list[BagRef] = []
    try:
        with ThreadPoolExecutor(2, thread_name_prefix="virnuc-sha256") as hasher:
            # Model checksums (gigabytes for ESM-2 3B) are read beside the planning; hashlib and
            # file reads release the GIL. Inputs are hashed while the bags are cut from them
            # (plan_bags' digests), so run.json describes the very bytes that were classified.
            hashed_models = hasher.submit(hash_models, located)
            workers: _Workers | None = None
            if previous is None:  # a fresh run: workers start and load models while the client plans
                workers = _start_workers(stack, timer, config, client, spec)
            with timer("checksums"):
                store.check_writable(outdir)
                models = hashed_models.result()
            with timer("plan"):
                inputs_meta = _inputs_meta(files)
                run_key = fingerprint({
                    "format": FORMAT_VERSION, "classify": classify,
                    "samples": [[s.name, [[f.path, f.mate] for f in s.files]] for s in samples],
                    "config": {k: getattr(config, k) for k in RESULT_FIELDS},
                    "models": {role: m.sha256 for role, m in models.items()},
                })
                _claim_outdir(outdir, previous, run_key, config, models, inputs_meta, classify)
                run_log.open(outdir / store.RUN_LOG)  # OUTDIR is ours now
                heads = {f: head_stats(f, config.expected_length) for f in files}
                warnings = _chunk_size_warnings(config, models)
                random_weights = any(m.random_weights for m in models.values())
                attrs = _bag_attributes(run_key, config, models, random_weights)
                rules = BagRules(chunk_size=config.expected_length, skip_invalid=config.skip_invalid,
                                 classify=classify, features=config.features, compression=config.compression,
                                 write_frames=config.write_frames)
            read: dict[InputFile, ReadDigest] = {}  # what the bags were cut from, file by file
            bags = plan_bags(files, lambda f: records_per_bag(heads[f], config.bag_size), run_key,
                             digests=read)

            reused: dict[int, str] = {}  # bag index -> numerics, of bags kept from an earlier run
            int8_decision: Int8Decision | None = None  # an int8 run's self-check (int8_check.py)

            progress = Progress(_estimated_bags(files, heads, config.bag_size))

            def todo() -> Iterator[Bag]:
                def check(bag: Bag) -> str | None:
                    return store.reusable_bag(outdir, bag.ref, with_probability=classify,
                                              parts=rules.table_parts())
                # only a resume can find kept bags; their checksums are read in threads
                checked = (_checked_ahead(bags, check, io_threads(config)) if previous is not None
                           else ((b, None) for b in bags))
                for bag, kept in checked:
                    refs.append(bag.ref)
                    progress.bag_cut()
                    if kept is None:
                        yield bag
                    else:
                        reused[bag.index] = kept
                        progress.bag_reused()
                progress.all_cut()

            def compute(pending: Iterator[Bag]) -> list[BagReport]:
                """Schedule bags; the first one starts the workers (if not yet) and waits for their models."""
                nonlocal workers, dashboard, worker_load_s, worker_load_phases, rules, int8_decision
                first = next(pending, None)
                if first is None:
                    return []
                if worker_load_s is None:
                    workers = workers or _start_workers(stack, timer, config, client, spec)
                    dashboard = workers.dashboard
                    sample = hasher.submit(_int8_sample, first, rules) if _checks_int8(config, outdir) else None
                    # Bags are submitted once every worker has its models: a bag that kills its worker
                    # must not take a warm-up (pinned to that worker) down with it.
                    with timer("model_load"):  # what is left of it once the client is ready
                        loaded = workers.client.gather(workers.warm_up)
                    marks["models_ready"] = time.perf_counter() - t_start
                    slowest = max(loaded, key=lambda p: sum(p.values()), default={})
                    worker_load_s, worker_load_phases = sum(slowest.values()), slowest
                    with timer("int8_check"):
                        int8_decision = _int8_decision(workers, config, outdir, sample)
                    rules = dataclasses.replace(rules, int8_fallback=bool(int8_decision and int8_decision.fell_back))
                assert workers is not None
                return _schedule(workers.client, itertools.chain([first], pending), outdir, attrs,
                                 rules, config, marks=marks, t_start=t_start, timer=timer, progress=progress)

            bar_shown = config.progress and sys.stderr.isatty()  # tqdm's own test, on its stream
            reporter = ProgressLog(progress, 0.0 if bar_shown else config.log_interval,
                                   path=outdir / store.PROGRESS)
            held.enter_context(reporter)  # until the run ends: a resume's checks, the stale bags too
            reports = compute(todo())
            stale = _stale_bags(reused, reports)
            if stale:  # kept bags of other numerics (another card or budget): recompute them
                log.warning("%d bag(s) kept from an earlier run were computed with other numerics than "
                            "this run's (another card, precision or batch budget); they are recomputed "
                            "so that every bag matches", len(stale))
                again = plan_bags(files, lambda f: records_per_bag(heads[f], config.bag_size), run_key)
                reports += compute(b for b in again if b.index in stale)
            store.remove_bags_beyond(outdir, len(refs))
            if not bar_shown and config.log_interval > 0:
                log.info("%s", progress.line())
            log.info("%d bags: %d computed now, %d reused from an earlier run",
                     len(refs), len(reports), len(refs) - len(reports))
            # the cluster shuts down (seconds) while the tables are finished
            stopping = threading.Thread(target=stack.close, name="virnuc-cluster-stop", daemon=True)
            stopping.start()
            stage = new_tmpdir(outdir)  # the tables wait here until run.json can follow them
            held.callback(remove_tmpdir, stage)
            with timer("finalize"):
                counts, files_written = write_tables(outdir, samples, refs, classify=classify,
                                                     skip_invalid=config.skip_invalid,
                                                     random_weights=random_weights, stage=stage,
                                                     sequences=SequenceOptions.of(config))
            inputs_meta = _inputs_meta(files, read)
    finally:
        if stopping is None:
            stack.close()
        else:
            with timer("cluster_stop"):  # what is left of it after finalize
                stopping.join()
    counts["bags"] = len(refs)
    payload = {
        "tool": "virnuc-hpc", "version": __version__, "command": "predict" if classify else "embed",
        "command_line": run_log.command_line,
        "random_weights": random_weights,
        **({"warning": store.RANDOM_WEIGHTS_WARNING} if random_weights else {}),
        "started": started.isoformat(), "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "run_key": run_key, "inputs": inputs_meta, "models": {r: m.as_dict() for r, m in models.items()},
        "samples": [{"name": s.name, "files": [f.path for f in s.files], "paired": s.paired} for s in samples],
        "config": config.model_dump(mode="json"), "counts": counts, "seconds": timer.seconds,
        "milestones_s": marks,
        # the client process alone (workers are other processes): bounded whatever the input size
        "client_peak_rss_mb": peak_rss_mb(),
        "client_peak_rss_mb_after_stage": timer.peak_rss_mb,  # where it grew
        "features": {"mode": config.features, "compression": config.compression,
                     "bytes_per_frame": _bytes_per_frame(outdir, counts.get("frames", 0))},
        # longest load + compile of the models on a worker, mostly hidden behind the client's reading
        "model_load_on_workers_s": worker_load_s,
        "model_load_on_workers_phases_s": worker_load_phases,  # of the slowest worker
        "bags": {"total": len(refs), "computed_now": len(reports), "reused": len(refs) - len(reports)},
        "warnings": warnings, "guards": _guard_totals(reports),
        "workers": _worker_summary(reports), "environment": _environment(),
        # torch threads per worker (none when every bag was kept from an earlier run: no worker ran)
        "threads": workers.threads.as_dict() if workers is not None else None,
        "int8_check": int8_decision.as_dict() if int8_decision is not None else _kept_int8_decision(outdir),
        **_timeline(reports, started.timestamp()),
    }
    report_files = _publish(stage, outdir, files_written, payload)
    return RunResult(outdir=outdir, counts=counts, seconds=timer.seconds,
                     random_weights=random_weights, dashboard=dashboard,
                     files=files_written + [store.RUN_JSON, *report_files],
                     model_load_on_workers_s=worker_load_s,
                     bytes_per_frame=payload["features"]["bytes_per_frame"])


#: Kept bags whose checksums are read at once on a resume (hashlib and file reads release the GIL).
RESUME_HASH_THREADS = max(1, min(4, available_cpus()))


def _checked_ahead(bags: Iterable[Bag], check: Callable[[Bag], str | None],
                   threads: int = RESUME_HASH_THREADS) -> Iterator[tuple[Bag, str | None]]:
    """Each bag, in order, with ``check(bag)``, the checks run in a thread pool a few bags ahead:
    a resume reads every kept bag back to verify its checksum, gigabytes on a big run, which one
    thread would read one file after the other. The look-ahead (2 per thread) bounds the bags
    held at once."""
    pending: deque[tuple[Bag, Future[str | None]]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="virnuc-bag-sha256") as pool:
        for bag in bags:
            pending.append((bag, pool.submit(check, bag)))
            if len(pending) >= 2 * threads:
                first, result = pending.popleft()
                yield first, result.result()
        while pending:
            first, result = pending.popleft()
            yield first, result.result()


def _inputs_meta(files: list[InputFile],
                 read: dict[InputFile, ReadDigest] | None = None) -> list[dict[str, Any]]:
    """Each input's sample, path, size and (given ``read``, once its bags are cut) sha256: with
    ``read``, size and sha256 are those of exactly the bytes read, even if the file grew meanwhile."""
    meta = []
    for f in files:
        entry: dict[str, Any] = {"sample": f.sample, "path": f.path, "mate": f.mate}
        digest = (read or {}).get(f)
        if read is None:
            entry["size"] = Path(f.path).stat().st_size
        elif digest is None or digest.sha256 is None:  # every bag is cut before the tables are written
            raise RuntimeError(f"{f.path} was not read to its end")
        else:
            entry.update(size=digest.size, sha256=digest.sha256)
        meta.append(entry)
    return meta


def _bytes_per_frame(outdir: Path, frames: int) -> float | None:
    """Bag bytes on disk per frame (everything a frame costs: features, ids, table parts)."""
    if not frames:
        return None
    return sum(p.stat().st_size for p in store.bag_files(outdir)) / frames


def _publish(stage: Path, outdir: Path, names: list[str], payload: dict[str, Any]) -> list[str]:
    """Move the staged tables into OUTDIR, write the report and MultiQC table, then run.json: the
    tables never stand without it, and a run.json that stands says everything was written. Any
    failure removes what was written (a kill in between leaves tables that the next run clears).
    Returns the report files written."""
    store.refuse_links(outdir)  # none placed while the run went on: the tables go into OUTDIR only
    moved: list[Path] = [outdir / name for name in REPORT_FILES]  # removed on failure: this run's own
    try:
        for name in names:
            target = outdir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / name, target)
            moved.append(target)
        report_files = _write_report(outdir, payload)
        store.write_json(outdir / store.RUN_JSON, payload)  # last: marks the run finished
    except BaseException as err:
        for path in moved:
            path.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise store.OutputError(f"cannot write the final tables in {outdir}: {err.strerror or err}") from err
        raise
    return report_files


def write_tables(outdir: Path, samples: list[Sample], refs: list[BagRef], *, classify: bool,
                 skip_invalid: bool, random_weights: bool, stage: Path,
                 sequences: SequenceOptions | None = None) -> tuple[dict[str, int], list[str]]:
    """Each sample's tables and sequence files (viral.fna, --write-frames) from its bags, written
    into ``stage`` (a folder in OUTDIR) with the layout they will have in OUTDIR: in its top for one
    sample, else in samples/<name>/ with samples.tsv summing them up. Returns the counts and the
    file names, relative to OUTDIR."""
    comment = store.RANDOM_WEIGHTS_WARNING if random_weights else None
    tmpdir = new_tmpdir(stage)
    single = len(samples) == 1
    totals: dict[str, int] = {}
    written: list[str] = []
    rows = []
    try:
        for sample in samples:
            folder = stage if single else stage / store.SAMPLES_DIR / sample.name
            folder.mkdir(parents=True, exist_ok=True)
            mine = [r for r in refs if r.sample == sample.name]
            tables = SampleTables(outdir, folder, mine, classify=classify, skip_invalid=skip_invalid,
                                  comment=comment, tmpdir=tmpdir)
            counts, names = tables.write()
            pairs = None
            if sample.paired:
                by_mate: dict[int, list[BagRef]] = {}
                for ref in mine:
                    by_mate.setdefault(ref.mate or 0, []).append(ref)
                pairs = tables.pairs(by_mate)
                names += [pairs] if pairs else []
            names += SampleSequences(outdir, folder, sample, mine, sequences or SequenceOptions(),
                                     tables.dropped).write(classify=classify, pairs_written=pairs is not None)
            prefix = "" if single else f"{store.SAMPLES_DIR}/{sample.name}/"
            written += [prefix + n for n in names]
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
            rows.append({"sample": sample.name, **counts})
        if not single:
            keys = list(rows[0].keys())
            text = store.format_columns(keys, [[row.get(k, "-") for row in rows] for k in keys], comment)
            store.write_text_atomic(stage / store.SAMPLES_TSV, text)
            written.append(store.SAMPLES_TSV)
    finally:
        remove_tmpdir(tmpdir)
    return totals, written


def _model_spec(config: RunConfig, located: dict[str, ModelFile]) -> ModelSpec:
    """What every worker needs to load the models: local paths and how to run them."""
    return ModelSpec(esm2_path=located["esm2"].path, dnabert_path=located["dnabert"].path,
                     classifier_path=located["classifier"].path if "classifier" in located else None,
                     device=config.device, precision=config.precision, engine=config.engine,
                     zero_offload=config.zero_offload, nvme_path=config.nvme_path,
                     exact_gelu=config.exact_gelu,
                     esm2_max_tokens=config.esm2_max_tokens, dnabert_max_tokens=config.dnabert_max_tokens,
                     threads=config.threads_per_worker, offline=config.offline,
                     compile_cache=config.compile_cache, dnabert_layout=config.dnabert_layout,
                     int8_smoothing=config.int8_smoothing)


def _chunk_size_warnings(config: RunConfig, models: dict[str, ModelFile]) -> list[str]:
    """A classifier file named for the other chunk size (300_model vs 500) is almost surely a mistake."""
    if models.get("classifier") is None or models["classifier"].spec == "demo":
        return []  # classifier.py (torch) is imported only when there is a file to check
    from virnuc_hpc.models.classifier import chunk_size_warnings
    warnings = chunk_size_warnings(models, config.expected_length)
    for warning in warnings:
        log.warning("warning: %s", warning)
    return warnings


def _bag_attributes(run_key: str, config: RunConfig, models: dict[str, ModelFile],
                    random_weights: bool) -> dict[str, Any]:
    """NetCDF attributes of every bag: provenance, and the random-weights warning where it applies."""
    attrs: dict[str, Any] = {
        "virnuc_hpc_version": __version__, "run_key": run_key, "random_weights": int(random_weights),
        "expected_length": config.expected_length,
        **{f"{role}_sha256": m.sha256 for role, m in models.items()},
        **{f"{role}_model": m.spec for role, m in models.items()}}
    if random_weights:
        attrs["warning"] = store.RANDOM_WEIGHTS_WARNING
    return attrs


def _previous_run(outdir: Path) -> dict[str, Any] | None:
    """The manifest of the run OUTDIR holds (``{}`` if unreadable), None for a fresh directory.

    A directory without our manifest must be empty (or hold only what a run of ours leaves before
    its manifest): we never write over files we did not write. A manifest without any bag is a
    start that failed (a wrong model file, say): there are no results to protect, so it is
    treated as fresh and the corrected rerun goes ahead."""
    store.refuse_links(outdir)  # before anything in OUTDIR is read, removed or written
    previous = store.read_manifest(outdir)
    if previous is None:
        found = sorted(set(store.foreign_entries(outdir)) | set(store.owned_files(outdir)))
        if found:
            shown = ", ".join(str(p.relative_to(outdir)) for p in found[:5]) + (", ..." if len(found) > 5 else "")
            raise store.OutputError(
                f"{outdir} is not empty and was not written by virnuc-hpc (it holds {shown}); give a new "
                "or empty output directory (--overwrite only replaces a directory virnuc-hpc wrote)")
        return None
    if not store.bag_files(outdir):
        log.info("%s holds a run that never finished a bag: starting afresh", outdir)
        store.clear_outputs(outdir, bags=True)
        return None
    return previous


def _claim_outdir(outdir: Path, previous: dict[str, Any] | None, run_key: str, config: RunConfig,
                  models: dict[str, ModelFile], inputs_meta: list[dict[str, Any]], classify: bool) -> None:
    """Refuse an OUTDIR holding another run (unless overwrite); clear finished-looking outputs."""
    models_meta = {role: m.as_dict() for role, m in models.items()}
    if previous is not None and previous.get("run_key") != run_key:
        changes = _changes(previous, _previous_config(outdir), config, models_meta, inputs_meta, classify)
        listed = "".join(f"\n  {line}" for line in changes)
        if not config.overwrite:
            raise store.OutputError(
                f"{outdir} holds results of a run with other inputs or settings{':' if changes else ''}"
                f"{listed}\nuse --overwrite to replace them, or choose another output directory")
        log.warning("--overwrite: removing the previous run in %s%s", outdir, listed)
        store.clear_outputs(outdir, bags=True)
    store.clear_outputs(outdir, bags=False)
    store.remove_stale_temporaries(outdir)
    store.write_json(outdir / store.MANIFEST, {"run_key": run_key, "classify": classify,
                                               "inputs": inputs_meta, "models": models_meta})
    store.write_text_atomic(outdir / store.CONFIG, dump_config(config))


def _previous_config(outdir: Path) -> dict[str, Any]:
    """The settings the run in OUTDIR recorded (``{}`` where unreadable: its changes go unnamed)."""
    try:
        loaded = read_yaml(outdir / store.CONFIG)  # with limits: OUTDIR may hold anything
    except ConfigError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _input_list(meta: list[dict[str, Any]]) -> str:
    return ", ".join(f"{m.get('sample')}={m.get('path')}" + (f" (mate {m['mate']})" if m.get("mate") else "")
                     for m in meta)


def _model_text(meta: dict[str, Any]) -> str:
    return f"{meta['spec']} (sha256 {meta.get('sha256', '')[:12]})" if meta.get("spec") else "none"


def _changes(previous: dict[str, Any], old_config: dict[str, Any], config: RunConfig,
             models_meta: dict[str, dict[str, Any]], inputs_meta: list[dict[str, Any]],
             classify: bool) -> list[str]:
    """What differs from the run in OUTDIR, one ``what: old -> new`` line each, for what the run key
    covers: the command, the inputs, the model files and the RESULT_FIELDS settings."""
    lines = []
    if "classify" in previous and previous["classify"] != classify:
        names = {True: "predict", False: "embed"}
        lines.append(f"command: {names[bool(previous['classify'])]} -> {names[classify]}")
    if "inputs" in previous and _input_list(previous["inputs"]) != _input_list(inputs_meta):
        lines.append(f"inputs: {_input_list(previous['inputs'])} -> {_input_list(inputs_meta)}")
    old_models = previous.get("models") or {}
    for role in sorted(set(old_models) | set(models_meta)):
        old, new = old_models.get(role) or {}, models_meta.get(role) or {}
        if old.get("sha256") != new.get("sha256"):
            lines.append(f"{role} model: {_model_text(old)} -> {_model_text(new)}")
    now = config.model_dump(mode="json")
    lines += [f"{key}: {_shown(old_config[key])} -> {_shown(now[key])}"
              for key in RESULT_FIELDS if key in old_config and old_config[key] != now[key]]
    return lines


@dataclass
class _Workers:
    client: Client
    warm_up: list[Any]            # futures: each worker's seconds to load and compile, per phase
    dashboard: str | None
    threads: ThreadPlan           # torch threads per worker, as told to every worker


def _start_workers(stack: ExitStack, timer: StageTimer, config: RunConfig, client: Client | None,
                   spec: ModelSpec) -> _Workers:
    """Connect (or start the local cluster), register the encoder plugin and have every current
    worker load and compile the models, in parallel and without waiting: model errors surface when
    the warm-ups are gathered, before any bag; workers that join later load with their first bag."""
    with timer("cluster_start"):
        dask_client = stack.enter_context(connect(config, client))
        dashboard = dashboard_link(dask_client)
        log.info("Dask scheduler: %s (more workers can join: virnuc-hpc worker "
                 "--scheduler-address ...)", dask_client.scheduler.address)
        if dashboard:
            log.info("Dask dashboard: %s", dashboard)
        found = dask_client.scheduler_info(n_workers=-1).get("workers", {})
        threads = plan_threads(config, busiest_node(str(w.get("host")) for w in found.values()))
        warn_if_oversubscribed(threads)
        log.debug("threads: %s", threads.as_dict())
        spec = dataclasses.replace(spec, threads=threads.per_worker)
        dask_client.register_plugin(EncoderPlugin(spec), name=EncoderPlugin.name)  # waits for setup()
        stack.callback(_remove_plugin, dask_client)  # the caller's workers do not keep our models
        addresses = list(dask_client.scheduler_info(n_workers=-1).get("workers", {}))
        futures = [dask_client.submit(warm_up, workers=[w], allow_other_workers=False, pure=False,
                                      key=f"virnuc-warm-up-{i}") for i, w in enumerate(addresses)]
        stack.callback(dask_client.cancel, futures)  # an input error while they load: stop them
    return _Workers(dask_client, futures, dashboard, threads)


def _checks_int8(config: RunConfig, outdir: Path) -> bool:
    """An int8 run with the check on, and no decision kept from an earlier attempt."""
    return (config.precision == "int8" and config.int8_check_cosine > 0
            and _kept_int8_decision(outdir) is None)


def _kept_int8_decision(outdir: Path) -> dict[str, Any] | None:
    decision = read_decision(outdir / store.INT8_CHECK)
    return decision.as_dict() if decision is not None else None


def _int8_sample(bag: Bag, rules: BagRules) -> list[str]:
    """The frames every worker embeds twice: the first bag's, spread over it."""
    return sample_proteins(translate_bag(bag, rules)[3].protein)


def _int8_decision(workers: _Workers, config: RunConfig, outdir: Path,
                   sample: Future[list[str]] | None) -> Int8Decision | None:
    """int8 or fp16 for the whole run: kept from an earlier attempt, else checked on every worker
    now (before any bag), logged once and kept in OUTDIR. None for a run that is not int8."""
    if config.precision != "int8":
        return None
    kept = read_decision(outdir / store.INT8_CHECK)
    if kept is not None:
        if kept.fell_back:
            log.warning("int8: an earlier attempt of this run found int8 drifting; it goes on in %s",
                        kept.precision)
        return kept
    if sample is None:  # the check is off (int8_check_cosine: 0)
        return None
    proteins = sample.result()
    addresses = list(workers.client.scheduler_info(n_workers=-1).get("workers", {}))
    futures = [workers.client.submit(check_int8, proteins, workers=[w], allow_other_workers=False,
                                     pure=False, key=f"virnuc-int8-check-{i}") for i, w in enumerate(addresses)]
    checks = workers.client.gather(futures)
    decision = decide(checks, config.int8_check_cosine)
    (log.warning if decision.fell_back else log.info)("%s", decision.message())
    write_decision(outdir / store.INT8_CHECK, decision)
    return decision


def _remove_plugin(client: Client) -> None:
    """Take the encoders off the workers when the run ends: workers of a client the caller brought
    (or of a scheduler we joined) live on and would otherwise hold the models' memory."""
    try:
        client.unregister_worker_plugin(EncoderPlugin.name)
    except Exception as err:  # the scheduler may be gone already (a failed or interrupted run)
        log.debug("could not remove the encoder plugin: %s", err)


def _schedule(client: Client, todo: Iterator[Bag], outdir: Path, attrs: dict[str, Any], rules: BagRules,
              config: RunConfig, *, marks: dict[str, float] | None = None, t_start: float = 0.0,
              timer: StageTimer | None = None, progress: Progress | None = None) -> list[BagReport]:
    """Submit bags as they are cut from the input, with bounded look-ahead (a few per worker).

    Dynamic scheduling: a worker that finishes gets the next bag, so faster or joining workers take
    more. A bag whose worker dies is recomputed elsewhere by Dask. Dask blames every bag that was on
    a dying worker, so a bag given up on (KilledWorker) is a suspect, not a culprit: suspects are
    rerun one at a time at the end, where a death can only be their own, and only a bag that then
    kills its worker again is reported with its records. A bag with invalid input stops the run:
    its error is raised here and every other bag is cancelled.
    """
    from distributed import KilledWorker
    from tqdm.auto import tqdm

    reports: list[BagReport] = []
    suspects: list[Bag] = []
    failed: list[BagRef] = []
    held: dict[str, Bag] = {}  # bags in flight, kept until done in case one must be rerun alone

    def in_flight_limit() -> int:
        workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
        return workers * config.bags_in_flight_per_worker

    def submit(bag: Bag, attempt: str = "") -> Any:
        key = f"{bag.name}-{bag.digest[:12]}{attempt}"
        held[key] = bag
        light, text = bag.for_transfer()
        with warnings.catch_warnings():  # a bag carries megabytes of reads by design
            warnings.filterwarnings("ignore", message=".*large graph.*", category=UserWarning)
            return client.submit(run_bag, light, text, str(outdir), attrs, rules, pure=False, key=key)

    marks = {} if marks is None else marks
    timer = timer or StageTimer()
    futures = as_completed([submit(bag) for bag in itertools.islice(todo, in_flight_limit())], loop=client.loop)
    marks["first_bag_submitted"] = time.perf_counter() - t_start
    t0, tokens = time.perf_counter(), 0
    try:
        # disable=None: tqdm shows the bar only on a terminal (no carriage-return noise in log files)
        with timer("embed_classify"), tqdm(unit="read", disable=True if not config.progress else None,
                                           dynamic_ncols=True, desc="embedding") as bar:
            for future in futures:
                bag = held.pop(future.key)
                try:
                    report = future.result()
                except KilledWorker:
                    suspects.append(bag)
                    log.warning("%s was on two workers that died; it is retried alone at the end", bag.name)
                else:
                    marks.setdefault("first_bag_done", time.perf_counter() - t_start)
                    reports.append(report)
                    tokens += report.protein_tokens
                    if progress is not None:
                        progress.bag_done(report.frames, report.protein_tokens)
                    bar.update(report.records)
                    bar.set_postfix_str(f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f} ESM tok/s")
                limit = in_flight_limit()  # one scheduler query per finished bag
                while futures.count() < limit:
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    futures.add(submit(nxt))
            for bag in suspects:  # alone on the cluster: a worker death now is this bag's own doing
                key = f"{bag.name}-{bag.digest[:12]}-alone"
                try:
                    report = submit(bag, attempt="-alone").result()
                except KilledWorker:
                    failed.append(bag.ref)
                    log.error("%s killed its worker again when run alone; giving up on it", bag.name)
                else:
                    reports.append(report)
                    bar.update(report.records)
                held.pop(key, None)
    except BaseException:
        client.cancel(list(futures.futures))  # e.g. invalid input in one bag: stop the others
        raise
    if failed:
        rows = [(r.name, r.sample, r.path, r.first_record, r.first_record + r.n_records - 1) for r in failed]
        store.write_text_atomic(outdir / store.FAILED_BAGS, store.format_columns(
            ("bag", "sample", "file", "first_record", "last_record"), list(zip(*rows))))
        raise BagsFailedError(f"{len(failed)} bag(s) ({', '.join(r.name for r in failed)}) kept killing "
                              f"their worker, also when run alone; their records are listed in "
                              f"{outdir / store.FAILED_BAGS}. The other bags are kept: rerun to retry.")
    return reports


def _stale_bags(reused: dict[int, str], reports: list[BagReport]) -> set[int]:
    """Kept bags whose numerics differ from those of the bags computed now: mixing them would
    give outputs equal to no uninterrupted run. With nothing computed now, the kept bags must
    agree among themselves (the most common numerics win)."""
    if not reused:
        return set()
    current = {r.numerics for r in reports}
    if not current:
        counts = Counter(reused.values())
        if len(counts) <= 1:
            return set()
        current = {counts.most_common(1)[0][0]}
    return {index for index, value in reused.items() if value not in current}


def _encoder_totals(reports: list[BagReport]) -> dict[str, EncoderStats]:
    """Each encoder's work summed over ``reports``."""
    totals = {"esm2": EncoderStats(), "dnabert": EncoderStats()}
    for r in reports:
        for name, stats in r.encoder_stats().items():
            totals[name] = totals[name] + stats
    return totals


def _flat(per_encoder: dict[str, dict[str, int]]) -> dict[str, int]:
    """``{"esm2": {"batches": 3}}`` -> ``{"esm2_batches": 3}``: run.json's spelling."""
    return {f"{name}_{key}": value for name, values in per_encoder.items() for key, value in values.items()}


def _guard_totals(reports: list[BagReport]) -> dict[str, int]:
    """Batches recomputed in fp32 (NaN/Inf) or split after CUDA OOM, summed over this run's bags."""
    return _flat({name: stats.guards() for name, stats in _encoder_totals(reports).items()})


def _busy_fraction(intervals: list[tuple[float, float]]) -> float | None:
    """Fraction of the span from the first interval's start to the last one's end that the
    device was busy (intervals of one worker never overlap: they are taken under a lock)."""
    if not intervals:
        return None
    span = max(e for _, e in intervals) - min(s for s, _ in intervals)
    return sum(e - s for s, e in intervals) / span if span > 0 else 1.0


def _estimated_bags(files: Sequence[InputFile], heads: dict[InputFile, HeadStats], bag_size: int) -> int | None:
    """Bags the inputs will make, judged from their heads (the progress lines' total until the
    whole input is cut); None when a file cannot be sized."""
    try:
        return estimated_run_bags([FileEstimate(f, heads[f], Path(f.path).stat().st_size,
                                                *decompressed_size(f.path)) for f in files], bag_size)
    except (OSError, ValueError, EOFError) as err:
        log.debug("no estimate of the run's bags: %s", err)
        return None


def _write_report(outdir: Path, payload: dict[str, Any]) -> list[str]:
    """report.html and the MultiQC table, made from the published tables and the run.json about to
    be written (as it will read back). A report that cannot be drawn is a warning: the results
    stand without it (``write_report(OUTDIR)`` makes it again). One that cannot be written (a full
    disk) fails the run like any other output, before run.json could say it finished."""
    try:
        write_report(outdir, run=json.loads(json.dumps(payload, default=str)))
    except ValueError as err:
        log.warning("report not written: %s (the results are complete; "
                    "virnuc_hpc.outputs.report.write_report(OUTDIR) makes it again)", err)
        return []
    return list(REPORT_FILES)


#: GPU utilisation samples kept per worker in run.json (every n-th, for the report's chart).
TIMELINE_GPU_POINTS = 2_000


def _timeline(reports: list[BagReport], t0: float) -> dict[str, Any]:
    """When each bag held its worker's device, and NVML's utilisation over time per worker, in
    seconds since the run started (both are wall-clock times taken on the workers)."""
    bags = [{"bag": r.bag, "worker": r.worker, "start": round(r.device_interval[0] - t0, 3),
             "end": round(r.device_interval[1] - t0, 3)} for r in sorted(reports, key=lambda r: r.bag)]
    gpu: dict[str, list[list[float]]] = {}
    for r in reports:
        gpu.setdefault(r.worker, []).extend([round(t - t0, 3), u] for t, u in r.gpu_utilization)
    for worker, samples in gpu.items():
        samples.sort()
        gpu[worker] = samples[::max(1, -(-len(samples) // TIMELINE_GPU_POINTS))]
    return {"bag_timeline": bags, "gpu_utilization": {w: s for w, s in gpu.items() if s}}


def _worker_summary(reports: list[BagReport]) -> dict[str, Any]:
    """Per worker: bags, frames, tokens, summed stage seconds, counters, and how busy the device was:
    the device lock's hold time (an upper bound; overall, and in the steady state after the worker's
    first bag) and, on GPUs, NVML's utilization averaged over the steady state."""
    by_worker: dict[str, list[BagReport]] = {}
    for r in reports:
        by_worker.setdefault(r.worker, []).append(r)
    return {worker: _one_worker(mine) for worker, mine in by_worker.items()}


def _one_worker(reports: list[BagReport]) -> dict[str, Any]:
    """``_worker_summary`` of one worker's reports."""
    seconds = BagSeconds()
    for r in reports:
        seconds = seconds + r.seconds
    encoders = _encoder_totals(reports)
    spans = sorted(tuple(r.device_interval) for r in reports)
    samples = [s for r in reports for s in r.gpu_utilization]
    steady = spans[1:] or spans
    return {
        "bags": len(reports), "records": sum(r.records for r in reports),
        "frames": sum(r.frames for r in reports),
        "protein_tokens": sum(r.protein_tokens for r in reports),
        "seconds": seconds.as_dict(),
        "counters": _flat({name: stats.as_dict() for name, stats in encoders.items()}),
        "device_busy_fraction": _busy_fraction(spans),
        "device_busy_fraction_steady": _busy_fraction(spans[1:]),
        # NVML: None without a GPU
        "gpu_utilization_steady": mean_utilization(samples, min(s for s, _ in steady),
                                                   max(e for _, e in steady)),
    }


def _environment() -> dict[str, Any]:
    import importlib.metadata as md
    versions = {}
    for pkg in ("torch", "numpy", "xarray", "h5netcdf", "h5py", "dask", "distributed", "dask-cuda",
                "tokenizers", "pydantic", "deepspeed"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"host": socket.gethostname(), "python": platform.python_version(), "packages": versions}
