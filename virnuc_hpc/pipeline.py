"""The whole run: FASTA -> frames -> bags -> Dask workers -> NetCDF bags -> VirNucPro tables.

``predict`` and ``embed`` are the Python entry points (the CLI calls them too). Pass your own
``distributed.Client`` to run inside an interactive Dask session.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
import platform
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, as_completed

from . import __version__, store
from .bags import Bag, make_bags
from .cluster import connect, dashboard_link
from .config import RESULT_FIELDS, RunConfig, fingerprint, dump_config, load_config
from .fasta import load_records
from .gpu_monitor import mean_utilization
from .frames import frames_for_records
from .tables import Tables
from .timing import StageTimer
from .models import ModelFile, file_sha256, hash_models, locate_models
from .worker import EncoderPlugin, ModelSpec, run_bag, warm_up

log = logging.getLogger("virnuc_hpc")
FORMAT_VERSION = 1


@dataclass
class RunResult:
    outdir: Path
    counts: dict[str, int]
    seconds: dict[str, float]
    random_weights: bool
    dashboard: str | None = None
    files: list[str] = field(default_factory=list)
    model_load_on_workers_s: float | None = None


def predict(inputs: Sequence[str | Path] | str | Path, outdir: str | Path, client: Client | None = None,
            config: RunConfig | None = None, **overrides: Any) -> RunResult:
    """VirNucPro prediction: features, probabilities and the two compatible tables."""
    return run(inputs, outdir, client=client, config=config, classify=True, **overrides)


def embed(inputs: Sequence[str | Path] | str | Path, outdir: str | Path, client: Client | None = None,
          config: RunConfig | None = None, **overrides: Any) -> RunResult:
    """Features only (DNABERT-S | ESM-2 per kept frame), as NetCDF bags."""
    return run(inputs, outdir, client=client, config=config, classify=False, **overrides)


def _inputs(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    if not paths:
        raise ValueError("no input FASTA given")
    return paths


def run(inputs: Sequence[str | Path] | str | Path, outdir: str | Path, *, client: Client | None = None,
        config: RunConfig | None = None, classify: bool = True, **overrides: Any) -> RunResult:
    timer = StageTimer()
    started = _dt.datetime.now(_dt.timezone.utc)
    with timer("setup"):
        config = (config or load_config()).model_copy(update={k: v for k, v in overrides.items()
                                                              if v is not None})
        config = RunConfig(**config.model_dump())  # re-validate the overrides
        paths, outdir = _inputs(inputs), Path(outdir)
        previous = store.read_manifest(outdir)
        located = locate_models(config, classify=classify)  # fast: a missing model fails right away
        spec = _model_spec(config, located)

    results: list[dict[str, Any]] = []
    dashboard, worker_load_s, worker_load_phases = None, None, {}
    stack = ExitStack()  # our cluster or the caller's client, and the warm-up futures
    stopping: threading.Thread | None = None
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="virnuc-sha256") as hasher:
            # Checksums (gigabytes for ESM-2 3B) are read beside the input parsing: hashlib and file
            # reads release the GIL.
            hashed = hasher.submit(lambda: (hash_models(located, (previous or {}).get("models")),
                                            [{"path": str(p), "sha256": file_sha256(p)} for p in paths]))
            workers: _Workers | None = None
            if previous is None:  # a fresh run: workers start and load models while the client reads
                workers = _start_workers(stack, timer, config, client, spec)
            with timer("read_validate"):
                loaded = load_records(paths, skip_invalid=config.skip_invalid)
            with timer("chunk_translate"):
                table = frames_for_records(loaded.records, config.expected_length)
            with timer("checksums"):
                store.check_writable(outdir)
                models, inputs_meta = hashed.result()
        with timer("plan"):
            run_key = fingerprint({
                "format": FORMAT_VERSION, "classify": classify,
                "inputs": [m["sha256"] for m in inputs_meta],
                "config": {k: getattr(config, k) for k in RESULT_FIELDS},
                "models": {role: m.sha256 for role, m in models.items()},
            })
            _claim_outdir(outdir, previous, run_key, config, models, inputs_meta, classify)
            bags = make_bags(table, config.bag_size, run_key)
            todo = [b for b in bags if not store.bag_is_complete(outdir, b, with_probability=classify)]
            log.info("%d frames in %d bags; %d already done, %d to compute",
                     len(table.frame_id), len(bags), len(bags) - len(todo), len(todo))
            warnings = _chunk_size_warnings(config, models)
            random_weights = any(m.random_weights for m in models.values())
            attrs = _bag_attributes(run_key, config, models, random_weights)

        with Tables(outdir, bags, table, loaded, classify) as tables:  # built while the bags run
            computing = {b.index for b in todo}
            for bag in bags:
                if bag.index not in computing:  # finished by an earlier run
                    tables.add(bag)
            if todo:
                workers = workers or _start_workers(stack, timer, config, client, spec)
                dashboard = workers.dashboard
                with timer("model_load"):  # what is left of it once the client is ready
                    phases = workers.client.gather(workers.warm_up)
                slowest = max(phases, key=lambda p: sum(p.values()), default={})
                worker_load_s, worker_load_phases = sum(slowest.values()), slowest
                with timer("embed_classify"):
                    results = _schedule(workers.client, todo, outdir, attrs, config, on_done=tables.add)
            # the cluster shuts down (seconds) while the tables are finished
            stopping = threading.Thread(target=stack.close, name="virnuc-cluster-stop", daemon=True)
            stopping.start()
            with timer("finalize"):
                counts, files = tables.write(random_weights)
    finally:
        if stopping is None:
            stack.close()
        else:
            with timer("cluster_stop"):  # what is left of it after finalize
                stopping.join()
    payload = {
        "tool": "virnuc-hpc", "version": __version__, "command": "predict" if classify else "embed",
        "random_weights": random_weights,
        **({"warning": store.RANDOM_WEIGHTS_WARNING} if random_weights else {}),
        "started": started.isoformat(), "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "run_key": run_key, "inputs": inputs_meta, "models": {r: m.as_dict() for r, m in models.items()},
        "config": config.model_dump(mode="json"), "counts": counts, "seconds": timer.seconds,
        # longest load + compile of the models on a worker, mostly hidden behind the client's reading
        "model_load_on_workers_s": worker_load_s,
        "model_load_on_workers_phases_s": worker_load_phases,  # of the slowest worker
        "bags": {"total": len(bags), "computed_now": len(todo), "reused": len(bags) - len(todo)},
        "warnings": warnings, "guards": _guard_totals(results),
        "workers": _worker_summary(results), "environment": _environment(),
    }
    store.write_json(outdir / store.RUN_JSON, payload)  # last: marks the run finished
    return RunResult(outdir=outdir, counts=counts, seconds=timer.seconds,
                     random_weights=random_weights, dashboard=dashboard, files=files + [store.RUN_JSON],
                     model_load_on_workers_s=worker_load_s)


def _model_spec(config: RunConfig, located: dict[str, ModelFile]) -> ModelSpec:
    """What every worker needs to load the models: local paths and how to run them."""
    return ModelSpec(esm2_path=located["esm2"].path, dnabert_path=located["dnabert"].path,
                     classifier_path=located["classifier"].path if "classifier" in located else None,
                     device=config.device, precision=config.precision, engine=config.engine,
                     zero_offload=config.zero_offload, nvme_path=config.nvme_path,
                     exact_gelu=config.exact_gelu,
                     esm2_max_tokens=config.esm2_max_tokens, dnabert_max_tokens=config.dnabert_max_tokens,
                     threads=config.threads_per_worker)


def _chunk_size_warnings(config: RunConfig, models: dict[str, ModelFile]) -> list[str]:
    """A classifier file named for the other chunk size (300_model vs 500) is almost surely a mistake."""
    classifier = models.get("classifier")
    if classifier is None or classifier.spec == "demo":
        return []
    from .classifier import check_chunk_size
    warnings = [w for w in [check_chunk_size(classifier.path, config.expected_length)] if w]
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


def _claim_outdir(outdir: Path, previous: dict[str, Any] | None, run_key: str, config: RunConfig,
                  models: dict[str, ModelFile], inputs_meta: list[dict[str, Any]], classify: bool) -> None:
    """Refuse an OUTDIR holding another run (unless overwrite); clear finished-looking outputs."""
    if previous is not None and previous.get("run_key") != run_key:
        if not config.overwrite:
            raise store.OutputError(
                f"{outdir} holds results of a run with other inputs or settings; "
                "use --overwrite to replace them, or choose another output directory")
        log.warning("--overwrite: removing the previous run in %s", outdir)
        store.clear_outputs(outdir, bags=True)
    store.clear_outputs(outdir, bags=False)
    store.remove_stale_temporaries(outdir)
    models_meta = {}
    for role, m in models.items():
        st = Path(m.weights).stat()
        models_meta[role] = {**m.as_dict(), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    store.write_json(outdir / store.MANIFEST, {"run_key": run_key, "classify": classify,
                                               "inputs": inputs_meta, "models": models_meta})
    store.write_text_atomic(outdir / store.CONFIG, dump_config(config))


class BagsFailedError(RuntimeError):
    """Bags that killed their worker even when run alone; frame ids are listed in failed_bags.tsv."""


@dataclass
class _Workers:
    client: Client
    warm_up: list[Any]            # futures: each worker's seconds to load and compile, per phase
    dashboard: str | None


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
        dask_client.register_plugin(EncoderPlugin(spec), name=EncoderPlugin.name)  # waits for setup()
        addresses = list(dask_client.scheduler_info(n_workers=-1).get("workers", {}))
        futures = [dask_client.submit(warm_up, workers=[w], allow_other_workers=False, pure=False,
                                      key=f"virnuc-warm-up-{i}") for i, w in enumerate(addresses)]
        stack.callback(dask_client.cancel, futures)  # an input error while they load: stop them
    return _Workers(dask_client, futures, dashboard)


def _schedule(client: Client, todo: list[Bag], outdir: Path, attrs: dict[str, Any],
              config: RunConfig, on_done: Callable[[Bag], None] = lambda bag: None) -> list[dict[str, Any]]:
    """Submit bags with bounded look-ahead (a few per worker); results as they complete, each bag
    handed to ``on_done`` once its file is written.

    Dynamic scheduling: a worker that finishes gets the next bag, so faster or joining workers take
    more. A bag whose worker dies is recomputed elsewhere by Dask. Dask blames every bag that was on
    a dying worker, so a bag given up on (KilledWorker) is a suspect, not a culprit: suspects are
    rerun one at a time at the end, where a death can only be their own, and only a bag that then
    kills its worker again is reported with its frame ids.
    """
    from distributed import KilledWorker
    from tqdm.auto import tqdm

    pending = iter(todo)
    by_key: dict[str, Bag] = {}
    results: list[dict[str, Any]] = []
    suspects: list[Bag] = []
    failed: list[Bag] = []

    def in_flight_limit() -> int:
        workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
        return workers * config.bags_in_flight_per_worker

    def submit(bag: Bag, attempt: str = "") -> Any:
        key = f"{bag.name}-{bag.digest[:12]}{attempt}"
        by_key[key] = bag
        return client.submit(run_bag, bag, str(outdir), attrs, pure=False, key=key)

    first = [submit(bag) for bag in itertools.islice(pending, in_flight_limit())]
    futures = as_completed(first, loop=client.loop)
    total = sum(len(b) for b in todo)
    t0, tokens = time.perf_counter(), 0
    # disable=None: tqdm shows the bar only on a terminal (no carriage-return noise in log files)
    with tqdm(total=total, unit="frame", disable=True if not config.progress else None,
              dynamic_ncols=True, desc="embedding") as bar:
        for future in futures:
            try:
                result = future.result()
            except KilledWorker:
                suspects.append(by_key[future.key])
                log.warning("%s was on two workers that died; it is retried alone at the end",
                            by_key[future.key].name)
            else:
                results.append(result)
                on_done(by_key[future.key])
                tokens += result["protein_tokens"]
                bar.update(result["frames"])
                bar.set_postfix_str(f"{tokens / max(time.perf_counter() - t0, 1e-9):,.0f} ESM tok/s")
            limit = in_flight_limit()  # one scheduler query per finished bag
            while futures.count() < limit:
                bag = next(pending, None)
                if bag is None:
                    break
                futures.add(submit(bag))
        for bag in suspects:  # alone on the cluster: a worker death now is this bag's own doing
            try:
                result = submit(bag, attempt="-alone").result()
            except KilledWorker:
                failed.append(bag)
                log.error("%s killed its worker again when run alone; giving up on it", bag.name)
            else:
                results.append(result)
                on_done(bag)
                bar.update(result["frames"])
    if failed:
        rows = [(b.name, fid) for b in failed for fid in b.frame_ids]
        store.write_text_atomic(outdir / store.FAILED_BAGS,
                                store.format_columns(("bag", "frame_id"), list(zip(*rows))))
        raise BagsFailedError(f"{len(failed)} bag(s) ({', '.join(b.name for b in failed)}; "
                              f"{len(rows)} frames) kept killing their worker, also when run alone; "
                              f"frame ids in {outdir / store.FAILED_BAGS}. The other bags are kept: "
                              "rerun to retry.")
    return results


def _guard_totals(results: list[dict[str, Any]]) -> dict[str, int]:
    """Batches recomputed in fp32 (NaN/Inf) or split after CUDA OOM, summed over this run's bags."""
    totals: dict[str, int] = {}
    for r in results:
        for key, value in r["counters"].items():
            if "nonfinite" in key or "oom" in key:
                totals[key] = totals.get(key, 0) + int(value)
    return totals


def _busy_fraction(intervals: list[tuple[float, float]]) -> float | None:
    """Fraction of the span from the first interval's start to the last one's end that the
    device was busy (intervals of one worker never overlap: they are taken under a lock)."""
    if not intervals:
        return None
    span = max(e for _, e in intervals) - min(s for s, _ in intervals)
    return sum(e - s for s, e in intervals) / span if span > 0 else 1.0


def _worker_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per worker: bags, frames, tokens, summed stage seconds, counters, and how busy the device was:
    the device lock's hold time (an upper bound; overall, and in the steady state after the worker's
    first bag) and, on GPUs, NVML's utilization averaged over the steady state."""
    per: dict[str, dict[str, Any]] = {}
    intervals: dict[str, list[tuple[float, float]]] = {}
    samples: dict[str, list[tuple[float, int]]] = {}
    for r in results:
        samples.setdefault(r["worker"], []).extend(r.get("gpu_utilization", []))
        w = per.setdefault(r["worker"], {"bags": 0, "frames": 0, "protein_tokens": 0, "seconds": {},
                                         "counters": {}})
        w["bags"] += 1
        w["frames"] += r["frames"]
        w["protein_tokens"] += r["protein_tokens"]
        intervals.setdefault(r["worker"], []).append(tuple(r["device_interval"]))
        for group in ("seconds", "counters"):
            for k, v in r[group].items():
                w[group][k] = w[group].get(k, 0) + v
    for worker, spans in intervals.items():
        spans.sort()
        per[worker]["device_busy_fraction"] = _busy_fraction(spans)
        per[worker]["device_busy_fraction_steady"] = _busy_fraction(spans[1:])
        steady = spans[1:] or spans
        per[worker]["gpu_utilization_steady"] = mean_utilization(  # NVML: None without a GPU
            samples.get(worker, []), min(s for s, _ in steady), max(e for _, e in steady))
    return per


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
