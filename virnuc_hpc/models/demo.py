"""Random-weight demo models, made once per machine in the cache directory.

They have the real file formats (fair-esm checkpoint, DNABERT-2 HF directory with a BPE tokenizer,
classifier state dict), so the demo exercises exactly the code a real run uses. Their outputs are
labelled as random-weight results everywhere a user can see them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEMO_VERSION = "v2"  # v2: the classifier is calibrated on the demo encoders' features (confident)
#: Calibration reads for the demo classifier: open reading frames, as in examples/demo.fasta but
#: from another seed, so the demo input is not what the classifier was calibrated on.
CALIBRATION_READS = 128
CALIBRATION_SEED = 20240


@dataclass(frozen=True)
class DemoModels:
    esm2: Path
    dnabert: Path
    classifier: Path


def cache_dir(root: str | Path | None = None) -> Path:
    """The demo models' folder under ``root`` (RunConfig.cache_dir); without one, under the
    configured default (``load_config().cache_dir``, which config.py may take from the environment,
    else ~/.cache/virnuc-hpc)."""
    if root is None:
        from virnuc_hpc.config import load_config
        root = load_config().cache_dir
    return Path(root or Path.home() / ".cache" / "virnuc-hpc") / f"demo-{DEMO_VERSION}"


def ensure_demo_models(directory: Path | None = None, *, root: str | Path | None = None) -> DemoModels:
    """Create (once, atomically) and return the demo models, in ``directory`` or else in
    ``cache_dir(root)``."""
    from virnuc_hpc.models.random_weights import (write_random_classifier, write_random_dnabert_dir,
                                write_random_esm2_checkpoint)

    directory = directory or cache_dir(root)
    models = DemoModels(esm2=directory / "esm2_t6_8M_random.pt", dnabert=directory / "dnabert2_tiny_random",
                        classifier=directory / "classifier_random_state_dict.pth")
    if directory.is_dir():
        return models
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=directory.parent))
    try:
        write_random_esm2_checkpoint(tmp / models.esm2.name, layers=6, embed_dim=320, heads=20, seed=0)
        write_random_dnabert_dir(tmp / models.dnabert.name, layers=2, hidden=128, heads=4,
                                 intermediate=512, vocab_size=512, seed=0)
        # features = [DNABERT 128 | ESM-2 8M 320]: the real 3328 layout, scaled down
        features = calibration_features(tmp / models.esm2.name, tmp / models.dnabert.name)
        write_random_classifier(tmp / models.classifier.name, input_dim=128 + 320, hidden_dim=512, seed=0,
                                calibration=features)
        try:
            os.rename(tmp, directory)
        except OSError:  # another process won the race: use its copy
            if not directory.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return models


def random_orf_reads(count: int, seed: int) -> list[str]:
    """Seeded random reads of 150-300 bases made of sense codons, so their first frame is kept."""
    import numpy as np

    codons = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"
              if a + b + c not in ("TAA", "TAG", "TGA")]
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(codons, int(rng.choice([50, 84, 100])))) for _ in range(count)]


def calibration_features(esm2: Path, dnabert: Path, *, reads: int = CALIBRATION_READS,
                         seed: int = CALIBRATION_SEED) -> "np.ndarray":
    """[DNABERT | ESM-2] features of seeded random reads' kept frames, embedded on CPU in fp32 by
    the given encoders as a run embeds them: what the demo classifier is calibrated on."""
    import numpy as np

    from virnuc_hpc.engines import load_engine_encoders
    from virnuc_hpc.reads.fasta import Record
    from virnuc_hpc.reads.frames import frames_for_records
    from virnuc_hpc.config import RunConfig
    from virnuc_hpc.encoders.roster import STANDARD_ROSTER
    from virnuc_hpc.spec import ModelSpec

    sequences = random_orf_reads(reads, seed)
    records = [Record(f"calibration_{i}", seq, "", i + 1) for i, seq in enumerate(sequences)]
    table = frames_for_records(records, 300)
    paths = {"esm2": str(esm2), "dnabert": str(dnabert)}
    spec = ModelSpec(encoders=tuple(e.encoder_spec(RunConfig(), paths[e.role]) for e in STANDARD_ROSTER),
                     device="cpu", precision="fp32", offline=True)
    encoders = load_engine_encoders(spec)
    return np.concatenate([encoders[e.role].embed(getattr(table, e.sequences)) for e in spec.encoders], axis=1)
