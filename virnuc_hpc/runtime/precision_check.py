"""``virnuc-hpc check-precision``: how far a faster precision moves the user's own embeddings and calls.

Why a separate check: fidelity depends on the weights. Random weights (the demo models, the
benchmarks) give activations unlike a trained model's, so what they show about fp16 or bf16 says
nothing about real models (int8 above all: its error depends on how outlying a trained model's
activations are). This embeds a sample of the user's reads with fp32 (the reference) and
with each faster precision, on the configured device, with the models a run would use, and states
per precision the cosine to fp32 per encoder, the labels kept (on all frames, and on the frames whose
fp32 score is far from 0.5, which a small drift cannot flip) and the speed; then it recommends one.

The reads go through the same readers, chunking and six-frame selection a run uses, and the encoders
load through the configured engine exactly as a worker loads them. The maths of the comparison (cosine
statistics, label agreement, the recommendation, the table) are pure functions of arrays and rows.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from virnuc_hpc.config import RunConfig
from virnuc_hpc.encoders.roster import STANDARD_ROSTER, Roster
from virnuc_hpc.errors import ConfigError, UserError
from virnuc_hpc.runtime.cosines import row_cosines
from virnuc_hpc.runtime.encoding import chunk_size_warnings, model_spec
from virnuc_hpc.spec import ModelSpec

log = logging.getLogger(__name__)

REFERENCE = "fp32"
#: Precisions the check can compare with fp32 (what RunConfig.precision offers, but "auto").
CHECKABLE = ("fp16", "bf16", "int8")
DEFAULT_PRECISIONS = ("fp16", "bf16", "int8")
DEFAULT_SAMPLE = 2000
MIN_COSINE = 0.999          # per encoder, the worst frame of the sample
MIN_EQUAL_LABELS = 99.9     # percent of frames whose classifier label is fp32's
# A trained classifier puts most frames far from 0.5, where a small drift cannot flip the label;
# frames near 0.5 flip under any drift. Labels are judged on the confident frames (fp32 virus score
# below CONFIDENT_LOW or above CONFIDENT_HIGH) when there are enough of them, else on all frames.
CONFIDENT_LOW, CONFIDENT_HIGH = 0.1, 0.9
MIN_CONFIDENT_FRAMES = 100  # enough confident frames: this many ...
MIN_CONFIDENT_SHARE = 0.5   # ... or this share of the sample
WARM_UP_SEQUENCES = 16      # the warm-up call's batch: compiles and allocates before the timing
ENCODERS = tuple(e.role for e in STANDARD_ROSTER)
ENCODER_NAMES = {e.role: e.name for e in STANDARD_ROSTER}


# --- results --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CosineStats:
    """Per-frame cosine to fp32, summarised: the worst frame and the typical one."""

    min: float
    median: float


@dataclass(frozen=True)
class PrecisionRow:
    """One precision's comparison with fp32; ``refused`` says why it did not run (then no numbers)."""

    precision: str
    cosine: dict[str, CosineStats] | None = None   # by encoder role, in roster order
    equal_labels: float | None = None              # percent of all frames; None without a classifier
    equal_labels_confident: float | None = None    # percent of the confident frames; None without any
    labels_basis: str = "all"                      # which of the two decides: "confident" or "all"
    frames_per_s: float | None = None
    seconds: dict[str, float] | None = None        # embedding seconds per encoder
    refused: str | None = None

    @property
    def ran(self) -> bool:
        return self.refused is None

    @property
    def deciding_labels(self) -> float | None:
        """The label agreement the recommendation uses (``labels_basis`` says which)."""
        return self.equal_labels_confident if self.labels_basis == "confident" else self.equal_labels


@dataclass(frozen=True)
class PrecisionReport:
    """Everything ``check-precision`` prints: the sample, the rows (fp32 first) and the advice."""

    rows: list[PrecisionRow]
    reads: int
    frames: int
    device: str
    configured: str
    classifier: bool
    random_weights: bool
    recommended: str
    warnings: tuple[str, ...] = ()  # what predict would warn about these models (chunk size)
    confident_frames: int | None = None  # frames with a confident fp32 score; None without a classifier
    labels_basis: str = "all"            # the frames the labels were judged on: "confident" or "all"


# --- pure maths -----------------------------------------------------------------------------------

def parse_precisions(text: str) -> tuple[str, ...]:
    """``"fp16,int8"`` -> ("fp16", "int8"): known names only, in order, once each; fp32 is always
    the reference, so naming it adds nothing."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in CHECKABLE and n != REFERENCE]
    if unknown or not names:
        what = f"unknown precision {', '.join(map(repr, unknown))}" if unknown else "no precision"
        raise ConfigError(f"--precisions {text!r}: {what}; give a comma-separated list of "
                          f"{', '.join(CHECKABLE)} (fp32 is always the reference)")
    return tuple(dict.fromkeys(n for n in names if n != REFERENCE))


def cosine_stats(reference: np.ndarray, other: np.ndarray) -> CosineStats:
    """Min and median of ``row_cosines``; NaN (a non-finite row) wins the min, so it is seen."""
    cos = row_cosines(reference, other)
    if cos.size == 0:
        raise ValueError("no rows to compare")
    worst = float("nan") if np.isnan(cos).any() else float(cos.min())
    return CosineStats(min=worst, median=float(np.nanmedian(cos)) if np.isfinite(cos).any() else float("nan"))


def label_agreement(reference_proba: np.ndarray, other_proba: np.ndarray) -> float:
    """Percent of frames whose argmax label is the reference's."""
    ref, other = np.asarray(reference_proba), np.asarray(other_proba)
    if ref.shape != other.shape or ref.ndim != 2 or len(ref) == 0:
        raise ValueError("expected two non-empty (N, classes) arrays of one shape, "
                         f"got {ref.shape} and {other.shape}")
    return float(np.mean(ref.argmax(axis=1) == other.argmax(axis=1)) * 100.0)


def confident_mask(reference_proba: np.ndarray, low: float = CONFIDENT_LOW,
                   high: float = CONFIDENT_HIGH) -> np.ndarray:
    """Frames whose reference virus score (column 1) is below ``low`` or above ``high``."""
    proba = np.asarray(reference_proba)
    if proba.ndim != 2 or proba.shape[1] < 2:
        raise ValueError(f"expected (N, classes) probabilities, got {proba.shape}")
    return (proba[:, 1] < low) | (proba[:, 1] > high)


def labels_basis(confident: int, frames: int, min_frames: int = MIN_CONFIDENT_FRAMES,
                 min_share: float = MIN_CONFIDENT_SHARE) -> str:
    """The frames labels are judged on: "confident" when there are enough confident ones (at least
    ``min_frames``, or at least ``min_share`` of the sample, and at least one), else "all"."""
    if not 0 <= confident <= frames:
        raise ValueError(f"{confident} confident frames out of {frames}")
    enough = confident >= min_frames or confident >= min_share * frames
    return "confident" if confident >= 1 and enough else "all"


def label_agreements(reference_proba: np.ndarray, other_proba: np.ndarray) -> tuple[float, float | None, str]:
    """(percent equal on all frames, percent equal on the confident ones or None without any,
    the basis that decides: ``labels_basis`` of the confident frames' count)."""
    confident = confident_mask(reference_proba)
    every = label_agreement(reference_proba, other_proba)
    ref, other = np.asarray(reference_proba), np.asarray(other_proba)
    on_confident = label_agreement(ref[confident], other[confident]) if confident.any() else None
    return every, on_confident, labels_basis(int(confident.sum()), len(confident))


def passes(row: PrecisionRow, min_cosine: float = MIN_COSINE, min_labels: float = MIN_EQUAL_LABELS) -> bool:
    """Both encoders' worst cosine and, with a classifier, the labels kept meet the bar."""
    if not row.ran or row.cosine is None or row.frames_per_s is None:
        return False
    if not all(stats.min >= min_cosine for stats in row.cosine.values()):  # NaN fails too
        return False
    labels = row.deciding_labels
    return labels is None or labels >= min_labels


def recommend(rows: Sequence[PrecisionRow], min_cosine: float = MIN_COSINE,
              min_labels: float = MIN_EQUAL_LABELS) -> str:
    """The fastest precision that passes; fp32 when none does (fp32 is exact by definition)."""
    passing = [r for r in rows if r.precision != REFERENCE and passes(r, min_cosine, min_labels)]
    reference = next((r for r in rows if r.precision == REFERENCE and r.frames_per_s is not None), None)
    candidates = passing + ([reference] if reference is not None else [])
    if not candidates:
        return REFERENCE
    return max(candidates, key=lambda r: r.frames_per_s or 0.0).precision


# --- the table ------------------------------------------------------------------------------------

def _cosine_width(role: str) -> int:
    return max(14, len(f"{ENCODER_NAMES.get(role, role)} cos min"))


def _header(roles: Sequence[str] = ENCODERS) -> str:
    """The table's header: two cosine columns per encoder, in roster order."""
    cosines = " ".join(f"{ENCODER_NAMES.get(r, r) + ' cos min':>{_cosine_width(r)}} {'median':>9}" for r in roles)
    return (f"{'precision':<10} {cosines} "
            f"{'equal labels':>13} {'confident':>10} {'frames/s':>10} {'vs fp32':>8}")


_HEADER = _header()


def _number(value: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def format_row(row: PrecisionRow, reference_speed: float | None) -> str:
    """One line of the table: the numbers, or why this precision did not run."""
    if not row.ran or row.cosine is None:
        return f"{row.precision:<10} not run: {row.refused}"
    labels = "-" if row.equal_labels is None else f"{row.equal_labels:.2f}%"
    confident = "-" if row.equal_labels_confident is None else f"{row.equal_labels_confident:.2f}%"
    ratio = (row.frames_per_s / reference_speed
             if row.frames_per_s is not None and reference_speed else None)
    cosines = " ".join(f"{stats.min:>{_cosine_width(role)}.6f} {stats.median:>9.6f}"
                       for role, stats in row.cosine.items())
    return (f"{row.precision:<10} {cosines} "
            f"{labels:>13} {confident:>10} {_number(row.frames_per_s, ',.1f', 10)} "
            f"{'-' if ratio is None else f'{ratio:.2f}x':>8}")


def format_report(report: PrecisionReport) -> str:
    """The whole printout: the warning for random weights, the sample, the table, the advice."""
    lines: list[str] = []
    if report.random_weights:
        from virnuc_hpc.outputs.store import RANDOM_WEIGHTS_WARNING
        lines += ["!" * 78, f"!! {RANDOM_WEIGHTS_WARNING}",
                  "!! Random weights tell nothing about real activations: run this check on your real "
                  "models.", "!" * 78, ""]
    lines += [f"warning: {w}" for w in report.warnings] + ([""] if report.warnings else [])
    lines.append(f"{report.reads:,} reads, {report.frames:,} frames, on {report.device}; "
                 f"each precision against fp32 (cosine per frame; labels: the classifier's argmax)")
    if report.classifier and report.confident_frames is not None:
        lines.append(f"equal labels: on all frames, and on the {report.confident_frames:,} confident "
                     f"frames (fp32 virus score below {CONFIDENT_LOW} or above {CONFIDENT_HIGH})")
    reference = next((r.frames_per_s for r in report.rows if r.precision == REFERENCE), None)
    roles = next((list(r.cosine) for r in report.rows if r.cosine), ENCODERS)
    lines += ["", _header(roles), *(format_row(r, reference) for r in report.rows), ""]
    bar = f"min cosine >= {MIN_COSINE} for both encoders"
    bar += (f" and >= {MIN_EQUAL_LABELS}% equal labels on {_basis_text(report.labels_basis)}"
            if report.classifier else " (no classifier: labels not compared)")
    lines.append(f"recommended: {report.recommended}  (the fastest with {bar}; "
                 f"configured: {report.configured})")
    if report.classifier:
        lines.append(f"labels decided on {_basis_text(report.labels_basis)}: the confident frames decide "
                     f"when there are at least {MIN_CONFIDENT_FRAMES} of them or at least "
                     f"{MIN_CONFIDENT_SHARE:.0%} of the sample, else all frames do")
    return "\n".join(lines)


def _basis_text(basis: str) -> str:
    return "the confident frames" if basis == "confident" else "all frames"


# --- running it -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrameSample:
    """The kept frames of the first reads of the inputs, as a run would embed them."""

    reads: int
    nucleotide: list[str]
    protein: list[str]


def sample_frames(inputs: Sequence[str], config: RunConfig, sample: int) -> FrameSample:
    """The first ``sample`` valid reads over the inputs in order, chunked and translated as a run
    does (``expected_length`` chunks, stop-free frames). Invalid records stop the check as they
    stop a run, unless ``skip_invalid``."""
    from virnuc_hpc.reads.frames import frames_for_records
    from virnuc_hpc.reads.reading import iter_blocks
    from virnuc_hpc.reads.samples import samples_from_paths
    from virnuc_hpc.reads.validation import checked_block

    if sample < 1:
        raise ConfigError(f"--sample must be at least 1, not {sample}")
    if not inputs:
        raise UserError("no input given (FASTA/FASTQ files)")
    records: list[Any] = []
    for file in (f for s in samples_from_paths(list(inputs)) for f in s.files):
        for block in iter_blocks(file, min(sample, 1 << 16)):
            parsed, valid, _ = checked_block(block, config.skip_invalid)
            records += [r for r, ok in zip(parsed, valid) if ok][: sample - len(records)]
            if len(records) >= sample:
                break
        if len(records) >= sample:
            break
    table = frames_for_records(records, config.expected_length)
    if not len(table):
        raise UserError(f"the first {len(records):,} reads keep no stop-free frame: nothing to compare")
    return FrameSample(reads=len(records), nucleotide=table.nucleotide, protein=table.protein)


@dataclass(frozen=True)
class Embedded:
    """Each roster encoder's rows for the sample at one precision (by role, in roster order), and
    the seconds each took."""

    features: dict[str, np.ndarray]
    seconds: dict[str, float]

    @property
    def frames_per_s(self) -> float:
        total = sum(self.seconds.values())
        return len(next(iter(self.features.values()))) / total if total > 0 else float("inf")

    def concatenated(self) -> np.ndarray:
        """The roster's columns per frame ([DNABERT-S | ESM-2]): the classifier's input, as in a run."""
        return np.concatenate(list(self.features.values()), axis=1)


def embed_sample(spec: ModelSpec, frames: FrameSample) -> Embedded:
    """Load the roster's encoders as a worker does, warm each up with one call, then time one embed each.

    The models are dropped before returning: one precision's weights are resident at a time."""
    from virnuc_hpc.engines import load_engine_encoders
    from virnuc_hpc.runtime.worker import embed_prepared, prepare_distinct

    encoders = load_engine_encoders(spec)
    inputs = {e.role: (encoders[e.role], getattr(frames, e.sequences)) for e in spec.encoders}
    features, seconds = {}, {}
    for name, (encoder, sequences) in inputs.items():
        encoder.warm_up()
        encoder.embed(sequences[:WARM_UP_SEQUENCES])
        prepared = prepare_distinct(encoder, sequences)  # host work, outside the timing (as in a run)
        start = time.perf_counter()
        features[name] = embed_prepared(encoder, prepared)  # numpy: the device has finished
        seconds[name] = time.perf_counter() - start
    del encoders, inputs
    _release_device()
    return Embedded(features, seconds)


def _release_device() -> None:
    """Free the dropped models' memory before the next precision loads its own."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def compare(precision: str, reference: Embedded, other: Embedded, classifier: Any | None,
            reference_proba: np.ndarray | None) -> PrecisionRow:
    """One row: cosine per encoder, labels kept (with a classifier), speed."""
    cosine = {name: cosine_stats(reference.features[name], other.features[name]) for name in reference.features}
    labels: tuple[float | None, float | None, str] = (None, None, "all")
    if classifier is not None and reference_proba is not None:
        labels = label_agreements(reference_proba, classifier.predict_proba(other.concatenated()))
    every, confident, basis = labels
    return PrecisionRow(precision, cosine=cosine, equal_labels=every, equal_labels_confident=confident,
                        labels_basis=basis, frames_per_s=other.frames_per_s, seconds=dict(other.seconds))


def _try_precision(precision: str, device: Any, config: RunConfig, located: dict[str, Any],
                   frames: FrameSample, roster: Roster = STANDARD_ROSTER) -> Embedded | str:
    """The precision's embeddings, or why the device cannot run it (a row, not a crash)."""
    from virnuc_hpc.devices import resolve_precision

    try:
        resolve_precision(precision, device)
        return embed_sample(model_spec(config, located, roster, precision=precision, classifier=False), frames)
    except ConfigError as err:
        return str(err)
    except RuntimeError as err:  # the device or its kernels refused (e.g. no bf16, out of memory)
        log.debug("precision %s failed", precision, exc_info=True)
        _release_device()
        return f"failed on {device}: {str(err).splitlines()[0] if str(err) else type(err).__name__}"


def check_precision(inputs: Sequence[str], config: RunConfig, sample: int = DEFAULT_SAMPLE,
                    precisions: Sequence[str] = DEFAULT_PRECISIONS,
                    roster: Roster = STANDARD_ROSTER) -> PrecisionReport:
    """Embed the first ``sample`` reads with fp32 and with each of ``precisions``; compare them."""
    import torch

    from virnuc_hpc.devices import resolve_device
    from virnuc_hpc.models.resolve import locate_models

    wanted = parse_precisions(",".join(precisions))
    frames = sample_frames(inputs, config, sample)
    located = locate_models(config, classify=config.classifier is not None)
    warnings = tuple(chunk_size_warnings(config, located))  # predict's, logged as predict logs them
    device = resolve_device(config.device)
    threads = torch.get_num_threads()
    if config.threads_per_worker and device.type == "cpu":
        torch.set_num_threads(config.threads_per_worker)  # as a CPU worker runs
    try:
        rows, confident = _rows(wanted, device, config, located, frames, roster)
    finally:
        torch.set_num_threads(threads)  # the caller's process is left as it was
    return PrecisionReport(rows=rows, reads=frames.reads, frames=len(frames.protein), device=str(device),
                           configured=config.precision, classifier=confident is not None,
                           random_weights=any(m.random_weights for m in located.values()),
                           recommended=recommend(rows), warnings=warnings, confident_frames=confident,
                           labels_basis=rows[0].labels_basis)


def _rows(wanted: Sequence[str], device: Any, config: RunConfig, located: dict[str, Any],
          frames: FrameSample, roster: Roster = STANDARD_ROSTER) -> tuple[list[PrecisionRow], int | None]:
    """fp32's row, then one per wanted precision; and how many frames have a confident fp32 score
    (None when labels were not compared: no classifier)."""
    from virnuc_hpc.models.classifier import load_classifier

    reference = embed_sample(model_spec(config, located, roster, precision=REFERENCE, classifier=False), frames)
    classifier, reference_proba = None, None
    if "classifier" in located:
        classifier = load_classifier(located["classifier"].path,
                                     input_dim=sum(f.shape[1] for f in reference.features.values()))
        reference_proba = classifier.predict_proba(reference.concatenated())
    rows = [compare(REFERENCE, reference, reference, classifier, reference_proba)]
    for precision in wanted:
        outcome = _try_precision(precision, device, config, located, frames, roster)
        rows.append(PrecisionRow(precision, refused=outcome) if isinstance(outcome, str)
                    else compare(precision, reference, outcome, classifier, reference_proba))
    return rows, None if reference_proba is None else int(confident_mask(reference_proba).sum())


__all__ = ["CosineStats", "PrecisionReport", "PrecisionRow", "check_precision", "confident_mask",
           "cosine_stats", "format_report", "label_agreement", "label_agreements", "labels_basis",
           "parse_precisions", "recommend"]
