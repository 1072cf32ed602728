"""What runs inside a Dask worker: encoders loaded once, then bag after bag.

The plugin holds the model *specification*; the models themselves are loaded on first use inside
the worker process (so a worker that joins late loads them too) and stay resident. ``run_bag`` is
the only task: embed with each encoder of the roster, classify, write the bag file, return a
``BagReport``.
No tensors ever leave the worker: what crosses the Dask boundary is typed (``BagReport``,
``BagSeconds``, ``EncoderStats``), so the client reads fields, never guesses at string keys.
"""

from __future__ import annotations

import gc
import json
import platform
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from distributed import WorkerPlugin, get_worker
from distributed.core import Status

from virnuc_hpc.reads.bags import Bag
from virnuc_hpc.spec import Encoders, ModelSpec  # defined in spec.py (engines use them too); re-exported here
from virnuc_hpc.timing import StageTimer

# Nothing heavy (torch, xarray) is imported at module level: unpickling the plugin, which the client
# waits for when registering it, then takes milliseconds, and the imports happen in the warm-up task,
# beside the client's reading of the input.

PLUGIN_NAME = "virnuc-hpc-encoders"


def load_encoders(spec: ModelSpec, timer: StageTimer | None = None) -> Encoders:
    """Load the roster's encoders (and the classifier) through the configured engine; ``timer`` gets
    the time of each phase (imports, CUDA start, encoders, classifier): startup is stated, not guessed."""
    timer = timer or StageTimer()
    with timer("imports"):
        import torch

        from virnuc_hpc.models.classifier import load_classifier
        from virnuc_hpc.engines import load_engine_encoders
    if spec.device != "cpu" and torch.cuda.is_available():
        with timer("cuda_start"):
            torch.empty(0, device="cuda")
    with timer("encoders_load"):
        encoders = load_engine_encoders(spec)
    classifier = None
    if spec.classifier_path:  # its input is the roster's columns, of exactly these encoders
        with timer("classifier_load"):
            classifier = load_classifier(spec.classifier_path,
                                         input_dim=sum(e.dim for e in encoders.values()))
    int8 = next((e.role for e in spec.encoders if e.int8), None)
    # the int8-capable encoder's precision is the run's (int8, or what it fell back to)
    leading = encoders[int8] if int8 is not None else next(iter(encoders.values()))
    return Encoders(encoders=encoders, classifier=classifier,
                    precision=getattr(leading, "precision", spec.precision),
                    device=str(getattr(leading, "device", spec.device)), int8_role=int8)


class EncoderPlugin(WorkerPlugin):
    """Keeps one set of encoders per worker process."""

    name = PLUGIN_NAME

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self._encoders: Encoders | None = None
        self._lock: threading.Lock | None = None
        self.utilization: Any = None
        self.load_timer = StageTimer()  # seconds per phase, filled when the encoders are loaded

    def setup(self, worker: Any = None) -> None:
        self._lock = threading.Lock()
        # One bag at a time on the accelerator; a second task thread meanwhile does the CPU work
        # (classification, NetCDF writing) of another bag, so the GPU does not wait for it.
        self.device_lock = threading.Lock()
        if self.spec.threads:
            import torch
            torch.set_num_threads(self.spec.threads)

    def teardown(self, worker: Any = None) -> None:
        if self.utilization is not None:
            self.utilization.close()
        # When the worker is closing, its process exits next: freezing the heap spares the
        # interpreter's final garbage collection of torch's and Inductor's object graphs (about 1 s
        # per worker). Not when the plugin alone is removed from a worker that lives on.
        if worker is not None and worker.status in (Status.closing, Status.closing_gracefully, Status.closed):
            gc.freeze()

    @property
    def loaded(self) -> bool:
        return self._encoders is not None

    def encoders(self) -> Encoders:
        assert self._lock is not None, "plugin used before setup()"
        with self._lock:
            if self._encoders is None:
                self._encoders = load_encoders(self.spec, self.load_timer)
                if self.spec.device != "cpu":  # here, not in setup(): keeps registration quick
                    from virnuc_hpc.runtime.gpu_monitor import UtilizationSampler
                    self.utilization = UtilizationSampler.for_current_device()
            return self._encoders

    def fall_back_from_int8(self) -> Encoders:
        """The int8 encoder (ESM-2) in fp16 from now on (an int8 run whose self-check failed);
        idempotent."""
        enc = self.encoders()
        with self._lock:
            if enc.precision == "int8" and enc.int8_role is not None:
                quantized = enc.encoders[enc.int8_role]
                quantized.fall_back_from_int8()
                enc.precision = quantized.precision
        return enc


def prepare_distinct(encoder: Any, sequences: list[str]) -> tuple[Any, np.ndarray | None]:
    """A bag's input for ``encoder.embed``: its distinct sequences, tokenised and packed already
    where the encoder can (``encoder.prepare``), and the rows that expand the result back to input
    order (None when every sequence is distinct).

    Real samples repeat reads (PCR and optical duplicates, abundant genomes): each distinct frame is
    embedded once per bag, and identical frames get identical vectors whatever batch they land in.
    Preparing is host work done before the bag takes the device, while the GPU embeds another bag."""
    first: dict[str, int] = {}
    inverse = np.fromiter((first.setdefault(s, len(first)) for s in sequences), dtype=np.int64,
                          count=len(sequences))
    distinct = sequences if len(first) == len(sequences) else list(first)
    prepare = getattr(encoder, "prepare", None)  # the packed GPU encoders have it
    return (prepare(distinct) if prepare else distinct), (None if distinct is sequences else inverse)


def embed_prepared(encoder: Any, prepared: tuple[Any, np.ndarray | None]) -> np.ndarray:
    """(N, D) rows in input order from ``prepare_distinct``'s result."""
    inputs, inverse = prepared
    rows = encoder.embed(inputs)
    return rows if inverse is None else rows[inverse]


@dataclass(frozen=True)
class BagRules:
    """How every bag of a run is processed (the same for all bags)."""

    chunk_size: int
    skip_invalid: bool
    classify: bool
    features: str = "float32"
    compression: str = "none"
    int8_fallback: bool = False  # the run's int8 self-check failed: the int8 encoder runs in fp16
    write_frames: bool = False   # keep the frames' sequences for VirNucPro's frame files (sequences.py)

    def table_parts(self) -> tuple[str, ...]:
        """The table parts every bag of such a run holds (a kept bag lacking one is recomputed)."""
        from virnuc_hpc.outputs.store import FRAME_PARTS, TABLE_PARTS
        return (*TABLE_PARTS, *(FRAME_PARTS if self.write_frames else ()))


@dataclass(frozen=True)
class EncoderStats:
    """Work one encoder did (an encoder's ``stats`` counters, or their growth over one bag).

    The two guards are counted apart from the work: batches recomputed in fp32 because a
    half-precision result held NaN/Inf, and batches split in two after a CUDA out-of-memory error."""

    sequences: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    nonfinite_recomputed_batches: int = 0
    oom_split_batches: int = 0

    @classmethod
    def of(cls, encoder: Any) -> "EncoderStats":
        """The encoder's counters now (an encoder without one of them did none of that work)."""
        stats = getattr(encoder, "stats", None) or {}
        return cls(**{f.name: int(stats.get(f.name, 0)) for f in fields(cls)})

    def __add__(self, other: "EncoderStats") -> "EncoderStats":
        return EncoderStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __sub__(self, other: "EncoderStats") -> "EncoderStats":
        return EncoderStats(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def guards(self) -> dict[str, int]:
        """The guard counters alone (run.json's ``guards``)."""
        return {"nonfinite_recomputed_batches": self.nonfinite_recomputed_batches,
                "oom_split_batches": self.oom_split_batches}

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class BagSeconds:
    """Where a bag's time went on its worker, stage by stage, in order."""

    parse_translate: float = 0.0
    model_load: float = 0.0      # waiting for the worker's models (its first bag only, mostly)
    prepare: float = 0.0         # tokenising and packing, before the device is taken
    device_wait: float = 0.0     # waiting for another bag to release the device
    encoders: tuple[tuple[str, float], ...] = ()  # (role, seconds embedding), in roster order
    classifier: float = 0.0
    tables_write: float = 0.0

    def __add__(self, other: "BagSeconds") -> "BagSeconds":
        summed = dict(self.encoders)
        for role, seconds in other.encoders:
            summed[role] = summed.get(role, 0.0) + seconds
        return BagSeconds(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)
                             if f.name != "encoders"}, encoders=tuple(summed.items()))

    def as_dict(self) -> dict[str, float]:
        """Stage -> seconds, each encoder a stage of its own (run.json's ``dnabert``, ``esm2``)."""
        out: dict[str, float] = {}
        for f in fields(self):
            if f.name == "encoders":
                out.update(self.encoders)
            else:
                out[f.name] = getattr(self, f.name)
        return out


@dataclass(frozen=True)
class BagReport:
    """What a finished bag tells the client: sizes, timings, counters; never tensors or rows."""

    bag: int
    records: int
    frames: int
    protein_tokens: int
    worker: str
    device_interval: tuple[float, float]
    seconds: BagSeconds
    encoders: dict[str, EncoderStats]  # each encoder's work on this bag, by role, in roster order
    gpu_utilization: list[tuple[float, int]]
    numerics: str = ""  # see ``bag_numerics``

    def encoder_stats(self) -> dict[str, EncoderStats]:
        """Each encoder's work on this bag, by its role."""
        return dict(self.encoders)


def bag_numerics(enc: Encoders) -> str:
    """What decides a bag's bytes besides the run's settings, as the worker resolved it: the
    processor (its kernels), precision, torch threads on a CPU, and the batch budgets, which are
    derived from the card's memory when left unset. Recorded in every bag; a resume recomputes
    reused bags whose value differs from the bags it computes (pipeline.py)."""
    import torch

    device = torch.device(enc.device)
    if device.type == "cuda":
        processor = torch.cuda.get_device_name(device)
    else:
        processor = _cpu_model()
    quantized = enc.encoders[enc.int8_role] if enc.int8_role is not None else None
    return json.dumps({"device": device.type, "processor": processor, "precision": enc.precision,
                       "int8_smoothing": getattr(quantized, "int8_smoothing", None),
                       "torch_threads": torch.get_num_threads() if device.type == "cpu" else None,
                       **{f"{role}_max_tokens": getattr(encoder, "max_tokens", None)
                          for role, encoder in enc.encoders.items()}}, sort_keys=True)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "cpu")
    except OSError:
        return platform.processor() or "cpu"


@dataclass(frozen=True)
class _FrameColumns:
    frame_id: list[str]
    chunk_id: list[str]
    read_id: list[str]
    record: list[int]


def parse_bag(bag: Bag, rules: BagRules) -> tuple[list[Any], list[bool], list[tuple[int, Any]]]:
    """A bag's records, which of them are valid, and (position, problem) of the others.

    Structural problems always stop the run; record problems do unless ``skip_invalid`` (ids
    repeated across bags are found when the tables are merged)."""
    from virnuc_hpc.reads.validation import checked_block

    return checked_block(bag.block, rules.skip_invalid)


def translate_bag(bag: Bag, rules: BagRules) -> tuple[list[Any], list[bool], list[tuple[int, Any]], Any]:
    """A bag's host work before the GPU: ``parse_bag``, then the six-frame table of its valid records."""
    from virnuc_hpc.reads.frames import frames_for_records

    records, valid, problems = parse_bag(bag, rules)
    table = frames_for_records([r for r, ok in zip(records, valid) if ok], rules.chunk_size)
    return records, valid, problems, table


def run_bag(bag: Bag, text: np.ndarray, outdir: str, attrs: dict[str, Any], rules: BagRules) -> BagReport:
    """Parse, translate, embed, classify and store one bag (its text shipped apart, see
    ``Bag.for_transfer``); returns what the client needs to know."""
    from virnuc_hpc.outputs import store
    from virnuc_hpc.outputs.tables import bag_tables

    plugin: EncoderPlugin = get_worker().plugins[PLUGIN_NAME]
    t0 = time.perf_counter()
    # host work first: while the worker's first bag waits for the models to load, it is parsed
    bag = bag.with_text(text)
    records, valid, problems, table = translate_bag(bag, rules)
    position = {r.id: i for i, r in enumerate(records) if valid[i]}
    frames = _FrameColumns(table.frame_id, table.chunk_id, table.read_id,
                           [bag.ref.first_record + position[r] for r in table.read_id])
    t1 = time.perf_counter()
    enc = plugin.fall_back_from_int8() if rules.int8_fallback else plugin.encoders()
    tparse = time.perf_counter()
    roster = plugin.spec.encoders  # feature-column order
    inputs = {e.role: prepare_distinct(enc.encoders[e.role], getattr(table, e.sequences))
              for e in roster} if len(table) else {}
    tp = time.perf_counter()
    vectors: list[tuple[str, np.ndarray]] = []
    work: dict[str, EncoderStats] = {}
    embedding: list[tuple[str, float]] = []
    with plugin.device_lock:
        device_start = time.time()
        td = time.perf_counter()
        for e in roster:
            encoder = enc.encoders[e.role]
            before, start = EncoderStats.of(encoder), time.perf_counter()
            rows = (embed_prepared(encoder, inputs[e.role]) if len(table)
                    else np.zeros((0, encoder.dim), np.float32))
            vectors.append((e.role, rows))
            embedding.append((e.role, time.perf_counter() - start))
            work[e.role] = EncoderStats.of(encoder) - before
        t3 = time.perf_counter()
        device_end = time.time()
    proba = None
    if enc.classifier is not None and rules.classify:
        proba = (enc.classifier.predict_proba(np.concatenate([v for _, v in vectors], axis=1)) if len(table)
                 else np.zeros((0, 2), np.float32))
    t4 = time.perf_counter()
    parts, counts = bag_tables(bag.index, records, valid, problems, table, proba, rules.classify,
                               block=bag.block, write_frames=rules.write_frames)
    settled = bag_numerics(enc)
    attrs = {**attrs, "precision": enc.precision, "device": enc.device, "numerics": settled}
    store.write_bag(Path(outdir), bag.ref, frames, vectors, proba, attrs, features=rules.features,
                    compression=rules.compression, tables=parts, counts=counts,
                    sources={e.role: e.source for e in roster})
    t5 = time.perf_counter()
    return BagReport(
        bag=bag.index, records=len(records), frames=len(table),
        protein_tokens=sum(map(len, table.protein)) + 2 * len(table), worker=get_worker().address,
        device_interval=(device_start, device_end),
        seconds=BagSeconds(parse_translate=t1 - t0, model_load=tparse - t1, prepare=tp - tparse,
                           device_wait=td - tp, encoders=tuple(embedding), classifier=t4 - t3,
                           tables_write=t5 - t4),
        encoders=work,
        # NVML samples since the previous drain on this worker (any bag's): GPU-side busy
        gpu_utilization=plugin.utilization.drain() if plugin.utilization is not None else [],
        numerics=settled,
    )


def check_int8(proteins: list[str]) -> Any:
    """This worker's int8 self-check (runtime/int8_check.py): the sample embedded in int8 and in
    half precision, compared frame by frame. A task, holding the device like a bag."""
    from virnuc_hpc.runtime.int8_check import compare

    plugin: EncoderPlugin = get_worker().plugins[PLUGIN_NAME]
    enc = plugin.encoders()
    if enc.int8_role is None:
        raise RuntimeError("the int8 check needs an encoder with int8 kernels in the roster")
    encoder = enc.encoders[enc.int8_role]
    with plugin.device_lock:
        quantized, half = encoder.embed_both(proteins)
    from virnuc_hpc.devices import activation_precision

    processor = json.loads(bag_numerics(enc))["processor"]
    fallback = activation_precision("int8", encoder.device)
    return compare(get_worker().address, processor, quantized, half, fallback)


def warm_up() -> dict[str, float]:
    """Load the encoders on this worker and compile their shapes (a task, so the worker's event
    loop stays responsive); startup is then timed apart from the bags. Returns seconds per phase."""
    t0 = time.perf_counter()
    plugin: EncoderPlugin = get_worker().plugins[PLUGIN_NAME]
    loaded_before = plugin.loaded
    enc = plugin.encoders()
    load = time.perf_counter() - t0
    timer = StageTimer({} if loaded_before else dict(plugin.load_timer.seconds))
    timer.seconds["load_other"] = max(0.0, load - sum(timer.seconds.values()))  # phases sum to the load
    with plugin.device_lock:
        for name, encoder in enc.encoders.items():
            with timer(f"{name}_warm_up"):
                getattr(encoder, "warm_up", lambda: None)()
    return timer.seconds
