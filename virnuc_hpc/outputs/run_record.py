"""run.json, the record of a finished run: one typed class writes it and every reader reads it.

Why one class: the pipeline writes run.json; ``status``, the report, the MultiQC table, the Slurm
job listing and ``open_features`` read it back. With one definition of its keys they cannot drift
apart. The file is read back without trust (``outputs.records``): a value of the wrong type is
left out (named in the problems) and the rest is kept, so an older or damaged run.json still says
what it can. Keys this class does not know are kept as they are (``extra="allow"``).

Light on purpose: no NetCDF stack, no torch (``virnuc-hpc status`` imports it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from virnuc_hpc.outputs.layout import RUN_JSON
from virnuc_hpc.outputs.records import read_json_object

TOOL = "virnuc-hpc"  # run.json's "tool": a run.json of ours
Number = int | float  # kept as written: an int stays an int
#: Fields whose entries are checked one by one when read back: a wrong entry drops, not the field.
ENTRYWISE = ("counts", "bags", "seconds")


class RunRecord(BaseModel):
    """run.json's keys, in the order they are written. Strict types: a value is kept as written
    (no "5" read as 5), so what is read back is what the run recorded."""

    model_config = ConfigDict(extra="allow", strict=True)

    tool: str | None = None
    version: str | None = None
    command: str | None = None                   # "predict" or "embed"
    command_line: str | None = None
    random_weights: bool = False
    warning: str | None = None                   # only with random weights
    started: str | None = None                   # ISO times, UTC
    finished: str | None = None
    run_key: str | None = None
    inputs: list[dict[str, Any]] = []            # sample, path, mate, size, sha256 per input file
    models: dict[str, dict[str, Any]] = {}       # role -> spec, path, sha256, ...
    samples: list[dict[str, Any]] = []           # name, files, paired
    config: dict[str, Any] = {}
    counts: dict[str, int] = {}
    seconds: dict[str, Number] = {}              # per stage, on the client
    milestones_s: dict[str, Number] = {}
    client_peak_rss_mb: Number | None = None
    client_peak_rss_mb_after_stage: dict[str, Number] = {}
    features: dict[str, Any] = {}                # mode, compression, bytes_per_frame
    model_load_on_workers_s: Number | None = None
    model_load_on_workers_phases_s: dict[str, Number] = {}
    bags: dict[str, int] = {}                    # total, computed_now, reused
    warnings: list[str] = []
    guards: dict[str, int] = {}
    workers: dict[str, dict[str, Any]] = {}      # per worker: bags, seconds, counters, device use
    environment: dict[str, Any] = {}             # host, python, packages
    threads: dict[str, Any] | None = None
    int8_check: dict[str, Any] | None = None
    bag_timeline: list[dict[str, Any]] | None = None  # older run.json files lack these two
    gpu_utilization: dict[str, list[list[Number]]] | None = None

    # --- writing ------------------------------------------------------------------------------

    def as_json(self) -> dict[str, Any]:
        """The record as run.json holds it: the keys given when it was made, in field order."""
        return self.model_dump(mode="json", exclude_unset=True)

    def dumps(self) -> str:
        """run.json's text."""
        return json.dumps(self.as_json(), indent=2, sort_keys=False, default=str) + "\n"

    def read_back(self) -> RunRecord:
        """The record as a reader of the written file will see it."""
        return RunRecord.parse(json.loads(self.dumps()))[0]

    # --- reading ------------------------------------------------------------------------------

    @property
    def ours(self) -> bool:
        """A run record of virnuc-hpc (another tool's run.json is left alone)."""
        return self.tool == TOOL

    @classmethod
    def parse(cls, raw: dict[str, Any], where: str = RUN_JSON) -> tuple[RunRecord, list[str]]:
        """The record in ``raw`` and the problems (``WHERE: what; left out``) of the values left out."""
        raw = dict(raw)
        problems: list[str] = []
        for _ in range(len(cls.model_fields) + 1):  # each pass removes at least one wrong value
            try:
                return cls.model_validate(raw), problems
            except ValidationError as err:
                wrong: dict[str, set[Any]] = {}
                for error in err.errors():
                    name = error["loc"][0] if error["loc"] else None
                    if isinstance(name, str):
                        wrong.setdefault(name, set())
                        if name in ENTRYWISE and len(error["loc"]) > 1 and isinstance(raw.get(name), dict):
                            wrong[name].add(error["loc"][1])
                for name, keys in wrong.items():
                    if keys and len(keys) < len(raw[name]):
                        raw[name] = {k: v for k, v in raw[name].items() if k not in keys}
                        problems.append(f"{where}: {len(keys)} {name} value(s) of the wrong type; left out")
                    else:
                        raw.pop(name, None)
                        problems.append(f"{where}: {name} is not what a run records; left out")
        return cls(), problems + [f"{where}: not a run record"]

    @classmethod
    def read(cls, outdir: str | Path) -> tuple[RunRecord | None, list[str]]:
        """OUTDIR's run.json and the problems of its values; (None, []) where there is none; (None,
        [the problem]) where it cannot be read or is no JSON object. Never raises."""
        path = Path(outdir) / RUN_JSON
        raw, problem = read_json_object(path)
        if raw is None:
            return None, [problem] if problem else []
        return cls.parse(raw, str(path))

    def bags_total(self) -> int | None:
        """How many bags the run made, where recorded."""
        return self.bags.get("total")
