"""The whole run: FASTA -> frames -> bags -> Dask workers -> NetCDF bags -> VirNucPro tables.

``predict`` and ``embed`` are the Python entry points (the CLI calls them too). Pass your own
``distributed.Client`` to run inside an interactive Dask session.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shlex
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client

from virnuc_hpc import __version__
from virnuc_hpc.config import RESULT_FIELDS, RunConfig, fingerprint, load_config, with_environment
from virnuc_hpc.errors import ConfigError, SampleError
from virnuc_hpc.models.resolve import hash_models, locate_models
from virnuc_hpc.outputs import store
from virnuc_hpc.outputs.lock import locked
from virnuc_hpc.outputs.per_sample import write_tables
from virnuc_hpc.outputs.run_record import TOOL, RunRecord
from virnuc_hpc.outputs.sequences import SequenceOptions
from virnuc_hpc.outputs.tables import new_tmpdir, remove_tmpdir
from virnuc_hpc.reads.bags import Bag, head_stats, plan_bags, records_per_bag
from virnuc_hpc.reads.reading import ReadDigest, sniff
from virnuc_hpc.reads.samples import InputFile, Sample, read_samplesheet, samples_from_paths
from virnuc_hpc.runtime import summary
from virnuc_hpc.runtime.cluster import preflight
from virnuc_hpc.encoders.roster import STANDARD_ROSTER, Roster, identity
from virnuc_hpc.runtime.encoding import bag_attributes, chunk_size_warnings, model_spec
from virnuc_hpc.runtime.outdir import claim_outdir, previous_run, publish
from virnuc_hpc.runtime.progress import Progress, ProgressLog
from virnuc_hpc.runtime.runlog import RunLog
from virnuc_hpc.runtime.scheduling import BagRunner, BagStream, stale_bags
from virnuc_hpc.runtime.threads import io_threads
from virnuc_hpc.runtime.worker import BagRules
from virnuc_hpc.runtime.workers import Workers
from virnuc_hpc.timing import StageTimer, peak_rss_mb

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
            roster: Roster = STANDARD_ROSTER, **overrides: Any) -> RunResult:
    """VirNucPro prediction: features, probabilities and the compatible tables, per sample.

    What the run does (models, bags, progress lines every ``config.log_interval`` seconds, warnings)
    goes to the ``virnuc_hpc`` logger; in a notebook or script, ``logging.basicConfig(level=logging.INFO)``
    shows it. With ``client=``, the encoders are taken off your workers when the run returns.
    ``roster``: the encoders whose columns make the features (encoders/roster.py).
    """
    return run(inputs, outdir, client=client, config=config, classify=True, samplesheet=samplesheet,
               roster=roster, **overrides)


def embed(inputs: Sequence[str | Path] | str | Path, outdir: str | Path, client: Client | None = None,
          config: RunConfig | None = None, *, samplesheet: str | Path | None = None,
          roster: Roster = STANDARD_ROSTER, **overrides: Any) -> RunResult:
    """Features only (the roster's columns per kept frame: DNABERT-S | ESM-2), as NetCDF bags."""
    return run(inputs, outdir, client=client, config=config, classify=False, samplesheet=samplesheet,
               roster=roster, **overrides)


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
        command_line: str | None = None, roster: Roster = STANDARD_ROSTER, **overrides: Any) -> RunResult:
    """The whole run. OUTDIR's lock (lock.py) is held from before its manifest is read until
    run.json is written: a second run into the same OUTDIR is refused instead of mixing files.
    ``command_line`` goes into run.json and run.log (default: this process's ``sys.argv``)."""
    command_line = shlex.join(sys.argv) if command_line is None else command_line
    # the run log closes first, while OUTDIR is still locked (runlog.py)
    with ExitStack() as held, RunLog(command_line) as run_log:  # the lock, released when _run ends
        return _run(held, inputs, outdir, client=client, config=config, classify=classify,
                    samplesheet=samplesheet, run_log=run_log, roster=roster, **overrides)


def _run(held: ExitStack, inputs: Sequence[str | Path] | str | Path, outdir: str | Path, *,
         client: Client | None = None, config: RunConfig | None = None, classify: bool = True,
         samplesheet: str | Path | None = None, run_log: RunLog, roster: Roster = STANDARD_ROSTER,
         **overrides: Any) -> RunResult:
    timer, clock = StageTimer(), summary.Milestones()
    with timer("setup"):  # resolve the samples and models; lock the output directory
        config = _settled_config(config, overrides, client, classify)
        samples = resolve_samples(inputs, samplesheet)
        files = [f for sample in samples for f in sample.files]
        for f in files:  # empty, binary or not FASTA/FASTQ: refused before anything starts
            sniff(f.path)
        outdir = Path(outdir)
        held.enter_context(locked(outdir, command=run_log.command_line))
        previous = previous_run(outdir)
        located = locate_models(config, classify=classify)  # fast: a missing model fails right away

    # start the workers: at once for a fresh run, with the first bag to compute for a resume
    stack = ExitStack()  # our cluster or the caller's client, and the warm-up futures
    workers = Workers(stack, timer, config, client, model_spec(config, located, roster), outdir)
    stopping: threading.Thread | None = None
    try:
        with ThreadPoolExecutor(2, thread_name_prefix="virnuc-sha256") as hasher:
            # Model checksums (gigabytes for ESM-2 3B) are read beside the planning; hashlib and
            # file reads release the GIL. Inputs are hashed while the bags are cut from them
            # (plan_bags' digests), so run.json describes the very bytes that were classified.
            hashed_models = hasher.submit(hash_models, located)
            if previous is None:  # a fresh run: workers start and load models while the client plans
                workers.start()
            with timer("checksums"):
                store.check_writable(outdir)
                models = hashed_models.result()
            with timer("plan"):  # open the output directory: claimed for this run's key
                run_key = fingerprint({
                    "format": FORMAT_VERSION, "classify": classify,
                    "samples": [[s.name, [[f.path, f.mate] for f in s.files]] for s in samples],
                    "config": {k: getattr(config, k) for k in RESULT_FIELDS},
                    "models": {role: m.sha256 for role, m in models.items()},
                    # another roster makes other bags; the standard one keeps today's keys
                    **({"roster": identity(roster)} if identity(roster) is not None else {}),
                })
                claim_outdir(outdir, previous, run_key, config, models, summary.inputs_meta(files), classify)
                run_log.open(outdir / store.RUN_LOG)  # OUTDIR is ours now
                heads = {f: head_stats(f, config.expected_length) for f in files}
                warnings = chunk_size_warnings(config, models)
                random_weights = any(m.random_weights for m in models.values())
                rules = BagRules(chunk_size=config.expected_length, skip_invalid=config.skip_invalid,
                                 classify=classify, features=config.features, compression=config.compression,
                                 write_frames=config.write_frames)

            # stream the bags: cut from the input, kept ones (a resume) skipped, the rest computed
            read: dict[InputFile, ReadDigest] = {}  # what the bags were cut from, file by file
            progress = Progress(summary.estimated_bags(files, heads, config.bag_size))
            bags = BagStream(plan_bags(files, lambda f: records_per_bag(heads[f], config.bag_size), run_key,
                                       digests=read), progress, threads=io_threads(config),
                             check=_kept_bag_check(outdir, classify, rules) if previous is not None else None)
            runner = BagRunner(workers, outdir, bag_attributes(run_key, config, models, random_weights), rules,
                               hasher, clock, progress)
            bar_shown = config.progress and sys.stderr.isatty()  # tqdm's own test, on its stream
            held.enter_context(ProgressLog(progress, 0.0 if bar_shown else config.log_interval,
                                           path=outdir / store.PROGRESS))  # until the run ends
            reports = runner.compute(iter(bags))
            stale = stale_bags(bags.reused, reports)
            if stale:  # kept bags of other numerics (another card or budget): recompute them
                log.warning("%d bag(s) kept from an earlier run were computed with other numerics than "
                            "this run's (another card, precision or batch budget); they are recomputed "
                            "so that every bag matches", len(stale))
                again = plan_bags(files, lambda f: records_per_bag(heads[f], config.bag_size), run_key)
                reports += runner.compute(b for b in again if b.index in stale)
            refs = bags.refs
            store.remove_bags_beyond(outdir, len(refs))
            if not bar_shown and config.log_interval > 0:
                log.info("%s", progress.line())
            log.info("%d bags: %d computed now, %d reused from an earlier run",
                     len(refs), len(reports), len(refs) - len(reports))

            # merge: the cluster shuts down (seconds) while the tables are finished
            stopping = threading.Thread(target=stack.close, name="virnuc-cluster-stop", daemon=True)
            stopping.start()
            stage = new_tmpdir(outdir)  # the tables wait here until run.json can follow them
            held.callback(remove_tmpdir, stage)
            with timer("finalize"):
                counts, files_written = write_tables(outdir, samples, refs, classify=classify,
                                                     skip_invalid=config.skip_invalid,
                                                     random_weights=random_weights, stage=stage,
                                                     sequences=SequenceOptions.of(config))
            inputs_meta = summary.inputs_meta(files, read)
    finally:
        if stopping is None:
            stack.close()
        else:
            with timer("cluster_stop"):  # what is left of it after finalize
                stopping.join()

    # finish: run.json, written last
    counts["bags"] = len(refs)
    bytes_per_frame = summary.bytes_per_frame(outdir, counts.get("frames", 0))
    record = RunRecord(
        tool=TOOL, version=__version__, command="predict" if classify else "embed",
        command_line=run_log.command_line, random_weights=random_weights,
        **({"warning": store.RANDOM_WEIGHTS_WARNING} if random_weights else {}),
        started=clock.started.isoformat(), finished=_dt.datetime.now(_dt.timezone.utc).isoformat(),
        run_key=run_key, inputs=inputs_meta, models={r: m.as_dict() for r, m in models.items()},
        samples=[{"name": s.name, "files": [f.path for f in s.files], "paired": s.paired} for s in samples],
        config=config.model_dump(mode="json"), counts=counts, seconds=timer.seconds,
        milestones_s=clock.marks,
        # the client process alone (workers are other processes): bounded whatever the input size
        client_peak_rss_mb=peak_rss_mb(),
        client_peak_rss_mb_after_stage=timer.peak_rss_mb,  # where it grew
        features={"mode": config.features, "compression": config.compression, "bytes_per_frame": bytes_per_frame},
        # longest load + compile of the models on a worker, mostly hidden behind the client's reading
        model_load_on_workers_s=workers.load_s,
        model_load_on_workers_phases_s=workers.load_phases,  # of the slowest worker
        bags={"total": len(refs), "computed_now": len(reports), "reused": len(refs) - len(reports)},
        warnings=warnings, guards=summary.guard_totals(reports),
        workers=summary.worker_summary(reports), environment=summary.environment(),
        threads=workers.threads(), int8_check=workers.int8_record(),
        **summary.timeline(reports, clock.started.timestamp()),
    )
    report_files = publish(stage, outdir, files_written, record)
    return RunResult(outdir=outdir, counts=counts, seconds=timer.seconds,
                     random_weights=random_weights, dashboard=workers.dashboard,
                     files=files_written + [store.RUN_JSON, *report_files],
                     model_load_on_workers_s=workers.load_s, bytes_per_frame=bytes_per_frame)


def _settled_config(config: RunConfig | None, overrides: dict[str, Any], client: Client | None,
                    classify: bool) -> RunConfig:
    """The run's settings: the config (or the defaults) with the overrides given and the environment,
    validated again; refused before any process starts where a package or GPU is missing."""
    config = with_environment((config or load_config()).model_copy(
        update={k: v for k, v in overrides.items() if v is not None}))
    config = RunConfig(**config.model_dump())  # re-validate the overrides
    preflight(config, client)
    if not classify and config.features == "none":
        raise ConfigError("features: none keeps no features; `embed` needs float32 or float16")
    return config


def _kept_bag_check(outdir: Path, classify: bool, rules: BagRules) -> Callable[[Bag], str | None]:
    """A resume's test of a bag: the numerics of its kept, whole file in OUTDIR, or None."""
    def check(bag: Bag) -> str | None:
        return store.reusable_bag(outdir, bag.ref, with_probability=classify, parts=rules.table_parts())
    return check
