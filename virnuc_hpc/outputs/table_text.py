"""The text of the run's tables: VirNucPro's two (byte for byte as VirNucPro writes them for the
same probabilities) and the TSV rows every other table is made of.

Pure functions of ids and probabilities: workers format their bag's rows with them, and the tests
pin VirNucPro's bytes here, without any file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from virnuc_hpc.outputs.calls import labels_from_proba

PREDICTION_HEADER = "Sequence_ID\tPrediction\tscore1\tscore2\n"


def format_prediction_rows(frame_ids: Sequence[str], probability: np.ndarray) -> str:
    """prediction_results.txt's rows (no header): frames of consecutive bags concatenate."""
    prob = np.asarray(probability, dtype=np.float32)
    return "".join(f"{fid}\t{label}\t{str(p[0])}\t{str(p[1])}\n"
                   for fid, label, p in zip(frame_ids, labels_from_proba(prob), prob))


def format_prediction_results(frame_ids: Sequence[str], probability: np.ndarray) -> str:
    return PREDICTION_HEADER + format_prediction_rows(frame_ids, probability)


def chunk_calls(frame_ids: Sequence[str], probability: np.ndarray) -> dict[str, bool]:
    """Chunk id (frame id minus its last 2 characters) -> max P(virus) >= max P(others)."""
    prob = np.asarray(probability, dtype=np.float32).reshape(-1, 2)
    best = pd.DataFrame({"others": prob[:, 0], "virus": prob[:, 1]},
                        index=pd.Index([fid[:-2] for fid in frame_ids])).groupby(level=0, sort=False).max()
    return dict(zip(best.index.tolist(), (best["virus"].to_numpy() >= best["others"].to_numpy()).tolist()))


def format_highest_scores(calls: dict[str, bool]) -> str:
    lines = ["Modified_ID\tIs_Virus\n"]
    lines += [f"{chunk}\t{calls[chunk]}\n" for chunk in sorted(calls)]
    return "".join(lines)


def format_columns(header: Iterable[str], columns: Sequence[Sequence[Any]],
                   comment: str | None = None) -> str:
    """A TSV (optional '# comment' line, header, rows) from data held as columns: each column is
    converted to text once, then joined row-wise."""
    head = ([f"# {comment}\n"] if comment else []) + ["\t".join(header) + "\n"]
    return "".join(head) + format_rows(columns)


def format_rows(columns: Sequence[Sequence[Any]]) -> str:
    """TSV rows (no header) from columns; '' when there are none."""
    text = [list(map(str, column)) for column in columns]
    body = "\n".join(map("\t".join, zip(*text)))
    return body + "\n" if body else ""


