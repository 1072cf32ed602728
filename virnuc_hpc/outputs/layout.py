"""The names a run gives its records in OUTDIR, and its bag files: what tells an output directory
of ours and its state (store.py holds the rest of the layout and its reasons).

Why a module of its own: store.py brings the NetCDF stack (xarray, h5py, pandas: a second or
more to import), and ``virnuc-hpc status`` must answer at once, also about a run still writing.
"""

from __future__ import annotations

import re
from pathlib import Path

from virnuc_hpc.outputs.lock import LOCK_NAME

BAGS_DIR = "bags"
MANIFEST = "manifest.json"
RUN_JSON = "run.json"
FAILED_BAGS = "failed_bags.tsv"  # only after bags that kept killing their worker
SAMPLES_DIR = "samples"          # several samples: one folder of tables each
BAG_NAME = re.compile(r"bag-\d{6}\.nc")
PROGRESS = LOCK_NAME + ".progress"  # a running run's progress, for `virnuc-hpc status` (runtime/progress.py)
#: The job registry `virnuc-hpc submit` writes first into its job folder: it tells that folder as
#: ours inside OUTDIR (store.py) and lists the jobs for `virnuc-hpc status` (runtime/slurm/registry.py).
JOB_REGISTRY = "virnuc-jobs.jsonl"


def bag_files(outdir: str | Path) -> list[Path]:
    """The bag files in OUTDIR, in bag order (written atomically: each one present is whole).

    Only regular files named exactly like ours (bag-NNNNNN.nc) in a real ``bags`` folder (not a
    link to one): a user's bags/bag-notes.nc or a folder named bag-x.nc is neither read nor removed."""
    folder = Path(outdir) / BAGS_DIR
    if not folder.is_dir() or folder.is_symlink():
        return []
    return sorted(p for p in folder.iterdir()
                  if BAG_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink())
