"""Command line: ``virnuc-hpc predict | embed | validate | check-precision | submit | status | worker
| models``.

Every RunConfig field is an option of predict and embed, generated from the field (its name, type
and description: one definition, see ``config_option``); anything not given on the command line
comes from --config / --preset / the environment / the defaults (config.py). Errors a user can fix
exit with status 2 and one clear message, never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import click
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from virnuc_hpc.config import ENVIRONMENT, OPTION_GROUPS, RunConfig, describe_errors, load_config
from virnuc_hpc.errors import BagsFailedError, FastaError, UserError
from virnuc_hpc.models.sources import CLASSIFIER_LENGTHS, DEFAULT_DNABERT, DEFAULT_ESM2

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def _choice_value(values: tuple[Any, ...]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """Click choices are text: give the field its own value back (``--expected-length 300`` -> 300)."""
    by_text = {str(v): v for v in values}
    return lambda ctx, param, value: None if value is None else by_text[value]


def _option_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """A RunConfig field's type as click's: the type and any extra settings (a choice's callback)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]  # X | None: None is "not given", which every option already means
    if typing.get_origin(annotation) is typing.Literal:
        values = typing.get_args(annotation)
        return click.Choice([str(v) for v in values]), {"callback": _choice_value(values)}
    if annotation in (int, float, str):
        return annotation, {}
    raise TypeError(f"RunConfig has a field of type {annotation!r}: teach cli._option_type its option")


def _help(field: FieldInfo) -> str:
    """The field's description, with its default where it has a value (not a switch)."""
    text = (field.description or "").rstrip(".")
    if field.default is not None and field.annotation is not bool:
        text += f"  [default: {field.default}]"
    return text


class _GroupedOption(click.Option):
    """An option that knows the heading it is listed under in its command's help."""

    def __init__(self, *args: Any, group: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


@contextlib.contextmanager
def exit_statuses(*, keeps_bags: bool = False, dry_run: bool = False) -> Iterator[None]:
    """The one mapping from what ends a command to what the user sees: a UserError (and pydantic's
    and the system's errors about what the user gave) is one message and exit status 2, a Ctrl-C one
    line and 130, bags that failed 1; anything else is a bug and keeps its traceback. ``keeps_bags``:
    a run (predict, embed) whose finished bags a rerun reuses, which its messages say."""
    try:
        yield
    except FastaError as err:
        _fail(f"invalid input; the run stopped and left no final tables (finished bags are kept for a "
              f"rerun; `virnuc-hpc validate` lists every problem):\n{err}" if keeps_bags else str(err))
    except ValidationError as err:
        _fail(f"invalid configuration: {describe_errors(err)}")
    except KeyboardInterrupt:  # a run's cluster is shut down by now (pipeline.run's cleanup)
        resume = ": finished bags are kept; rerun the same command to resume" if keeps_bags and not dry_run else ""
        click.echo(f"virnuc-hpc: interrupted{resume}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BagsFailedError as err:
        click.echo(f"virnuc-hpc: error: {err}", err=True)
        sys.exit(1)
    except UserError as err:  # FastaError, SampleError, ConfigError, a model not found, ...
        _fail(str(err))
    except BrokenPipeError:
        raise  # stdout closed by the reader (`| head`): click's own quiet exit
    except OSError as err:
        _fail(f"{err.strerror or err}: {err.filename or ''}".rstrip(": "))


class Command(click.Command):
    """A command whose errors end as ``exit_statuses`` says (every command of the CLI is one)."""

    def __init__(self, *args: Any, keeps_bags: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keeps_bags = keeps_bags

    def invoke(self, ctx: click.Context) -> Any:
        with exit_statuses(keeps_bags=self.keeps_bags, dry_run=bool(ctx.params.get("dry_run"))):
            return super().invoke(ctx)


class GroupedCommand(Command):
    """Help with the options under headings (``groups``, in order; predict's are the configuration's
    ``OPTION_GROUPS``): one flat list of 40 options hides the few that every run needs. An option's
    heading is its own ``group``, else ``group_of[its name]``, else the last heading (--help)."""

    def __init__(self, *args: Any, groups: tuple[str, ...] = OPTION_GROUPS,
                 group_of: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.groups, self.group_of = groups, group_of or {}

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {group: [] for group in self.groups}
        for param in self.get_params(ctx):
            record = None if isinstance(param, click.Argument) else param.get_help_record(ctx)
            if record is not None:
                group = getattr(param, "group", None) or self.group_of.get(param.name or "")
                sections[group if group in sections else self.groups[-1]].append(record)
        # one column width for all sections (click sizes each list on its own)
        width = min(_HELP_TERM_WIDTH, max((len(t) for rows in sections.values() for t, _ in rows), default=0))
        for group, records in sections.items():
            if records:
                with formatter.section(group[:1].upper() + group[1:]):
                    formatter.write_dl([(t.ljust(width), h) for t, h in records], col_max=_HELP_TERM_WIDTH)


_HELP_TERM_WIDTH = 30  # click's own limit: longer option names get their help on the next line


def field_group(name: str) -> str | None:
    """The help heading RunConfig field ``name`` declares (its ``json_schema_extra["group"]``)."""
    extra = RunConfig.model_fields[name].json_schema_extra
    return extra.get("group") if isinstance(extra, dict) else None  # type: ignore[return-value]


def config_option(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The command-line option of RunConfig field ``name``: ``--name-with-dashes``, its help the
    field's description, its choices the field's values, its help heading the field's group.
    Defaults stay None ("not given") so that presets and --config files keep their place in the
    precedence (config.py)."""
    field = RunConfig.model_fields[name]
    flag = "--" + name.replace("_", "-")
    grouped: dict[str, Any] = {"cls": _GroupedOption, "group": field_group(name)}
    if field.annotation is bool:  # a switch: --x, or --x/--no-x where it is on by default
        if field.default:
            return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=_help(field), **grouped)
        return click.option(flag, name, is_flag=True, default=None, help=_help(field), **grouped)
    kind, extra = _option_type(field.annotation)
    return click.option(flag, name, type=kind, default=None, help=_help(field), **extra, **grouped)


def _run_options(classifier: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """predict's and embed's options: the inputs, OUTDIR, every RunConfig field, and the
    configuration sources; embed has no classifier."""
    fields = [name for name in RunConfig.model_fields if classifier or name != "classifier"]
    options = [
        click.argument("inputs", nargs=-1, type=click.Path(dir_okay=False)),
        click.option("--samplesheet", type=click.Path(dir_okay=False), cls=_GroupedOption, group="inputs",
                     help="TSV/CSV of samples instead of INPUTS: columns sample, file[, mate] or "
                          "sample, fastq_1[, fastq_2] (README, 'Samples')."),
        click.option("--preset", cls=_GroupedOption, group="inputs",
                     help="Named configuration shipped with virnuc-hpc (configs/; e.g. demo); "
                          "a YAML file of your own goes to --config."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                     cls=_GroupedOption, group="inputs", help="YAML file with any configuration keys."),
        click.option("--dry-run", is_flag=True, default=False, cls=_GroupedOption, group="inputs",
                     help="Estimate reads, frames, bags, disk and GPU (or CPU) time from a sample of the "
                          "input; loads no model, writes nothing."),
        click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False),
                     cls=_GroupedOption, group="outputs",
                     help="Output directory (created; a rerun resumes it)."),
        *(config_option(name) for name in fields),
    ]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def _interrupt_once(signum: int, frame: Any) -> None:
    """The first Ctrl-C raises KeyboardInterrupt, which shuts the cluster down; later ones are
    ignored, so that an impatient second Ctrl-C cannot cut the shutdown short and leave workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _fail(message: str) -> NoReturn:
    click.echo(f"virnuc-hpc: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _execute(command: str, inputs: tuple[str, ...], outdir: str, preset: str | None,
             config_file: str | None, samplesheet: str | None = None, dry_run: bool = False,
             **overrides: Any) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt_once)
    config = load_config(preset=preset, config_file=config_file, overrides=overrides)
    if dry_run:
        from virnuc_hpc.runtime.dryrun import dry_run as estimate
        click.echo(estimate(list(inputs), config, samplesheet=samplesheet, classify=command == "predict"))
        return
    from virnuc_hpc.runtime import pipeline
    result = pipeline.run(list(inputs), outdir, config=config, classify=command == "predict",
                          samplesheet=samplesheet, command_line=shlex.join(sys.argv))
    click.echo(render_summary(result))


def render_summary(result: Any) -> str:
    c = result.counts
    lines = []
    if result.random_weights:
        from virnuc_hpc.outputs.store import RANDOM_WEIGHTS_WARNING
        lines += ["", "!" * 78, f"!! {RANDOM_WEIGHTS_WARNING}", "!" * 78]
    lines += ["", f"reads {c.get('reads', 0):,}   chunks {c.get('chunks', 0):,}   "
                  f"frames {c.get('frames', 0):,}   skipped records {c.get('skipped_records', 0):,}",
              f"reads without an open frame {c.get('reads_without_frames', 0):,}   "
              f"chunks without an open frame {c.get('chunks_without_frames', 0):,}"]
    if "chunks_called" in c and c.get("chunks_called"):
        lines.append(f"virus calls: {c.get('virus_chunks', 0):,} of {c['chunks_called']:,} chunks, "
                     f"{c.get('virus_reads', 0):,} reads")
    lines += ["", "stage                 seconds"]
    lines += [f"{stage:<20}{seconds:>9.1f}" for stage, seconds in result.seconds.items()]
    lines.append(f"{'total':<20}{sum(result.seconds.values()):>9.1f}")
    if result.model_load_on_workers_s is not None:
        lines.append(f"(workers loaded and compiled the models in {result.model_load_on_workers_s:.1f} s, "
                     "while the input was read; model_load is what was left to wait)")
    if result.bytes_per_frame:
        lines.append(f"bag files: {result.bytes_per_frame:,.0f} bytes per frame")
    lines.append(f"outputs in {result.outdir}/: " + ", ".join(result.files + ["bags/"]))
    return "\n".join(lines)


class CommandGroup(click.Group):
    """A group whose commands are ``Command``s; what ends the group's own part (options, callback)
    maps as theirs does, so a Ctrl-C exits 130 with one line (click would print "Aborted!", exit 1)."""

    command_class = Command

    def invoke(self, ctx: click.Context) -> Any:
        with exit_statuses():
            return super().invoke(ctx)


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="virnuc-hpc")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """VirNucPro-compatible viral read identification on GPU nodes and clusters."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("virnuc_hpc")
    ours.addHandler(handler)
    ours.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    logging.getLogger("distributed").setLevel(logging.INFO if verbose else logging.ERROR)


@main.command(cls=GroupedCommand, keeps_bags=True)
@_run_options(classifier=True)
def predict(inputs: tuple[str, ...], outdir: str, preset: str | None, config_file: str | None,
            **overrides: Any) -> None:
    """Predict viral reads: VirNucPro tables, reads.tsv, NetCDF features."""
    _execute("predict", inputs, outdir, preset, config_file, **overrides)


@main.command(cls=GroupedCommand, keeps_bags=True)
@_run_options(classifier=False)
def embed(inputs: tuple[str, ...], outdir: str, preset: str | None, config_file: str | None,
          **overrides: Any) -> None:
    """Feature extraction only: DNABERT-S | ESM-2 vectors per kept frame, as NetCDF."""
    _execute("embed", inputs, outdir, preset, config_file, **overrides)


@main.command()
@click.argument("inputs", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--samplesheet", type=click.Path(dir_okay=False), help="Samples as for predict.")
@click.option("--workers", type=click.IntRange(min=1), help="Processes (default: one per core).")
def validate(inputs: tuple[str, ...], samplesheet: str | None, workers: int | None) -> None:
    """Report every problem in FASTA/FASTQ inputs, in parallel, without running any model."""
    from virnuc_hpc.runtime.pipeline import resolve_samples
    from virnuc_hpc.runtime.validate import validate_samples

    samples = resolve_samples(list(inputs), samplesheet)
    problems = validate_samples(samples, workers=workers)
    for problem in problems:
        click.echo(str(problem), err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) found", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(f"ok: {', '.join(f.path for s in samples for f in s.files)}")


#: submit's help headings and their options (what follows ``--`` is predict's: see its help).
_SUBMIT_GROUPS = {
    "slurm resources": ("partition", "account", "qos", "nodes", "tasks_per_node", "gpus_per_node",
                        "cpus_per_gpu", "cpus_per_task", "mem", "time_limit", "gres", "constraint",
                        "exclusive"),
    "jobs": ("folder", "job_name", "per_input", "array_parallelism", "max_requeues", "mail_type",
             "mail_user", "wckey", "slurm_opts"),
    "job environment": ("setup", "python", "launcher", "interface"),
    "submit": ("embed_only", "show_script", "wait"),
}


@main.command(context_settings={"ignore_unknown_options": True}, cls=GroupedCommand,
              groups=tuple(_SUBMIT_GROUPS),
              group_of={name: group for group, names in _SUBMIT_GROUPS.items() for name in names})
@click.option("--partition", help="Slurm partition.")
@click.option("--account", help="Slurm account to charge.")
@click.option("--qos", help="Slurm quality of service.")
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Nodes per job: rank 0 runs the scheduler, every node runs workers.")
@click.option("--tasks-per-node", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tasks per node (normally 1: one task drives all GPUs of its node).")
@click.option("--gpus-per-node", type=click.IntRange(min=0), default=0, show_default=True,
              help="GPUs per node (one Dask worker each); 0 on CPU-only partitions.")
@click.option("--cpus-per-gpu", type=click.IntRange(min=1), help="CPU cores per GPU.")
@click.option("--cpus-per-task", type=click.IntRange(min=1), help="CPU cores per task (CPU nodes).")
@click.option("--mem", help="Memory per node in Slurm syntax (64G; 0 = all of it).")
@click.option("--time", "time_limit", default="60", show_default=True,
              help="Time limit (minutes, HH:MM:SS or D-HH:MM:SS); the job checkpoints and requeues "
                   "itself before it.")
@click.option("--array-parallelism", type=click.IntRange(min=1), default=64, show_default=True,
              help="Array tasks running at once.")
@click.option("--folder", type=click.Path(file_okay=False),
              help="Job folder for scripts and logs (default: OUTDIR/slurm).")
@click.option("--job-name", default="virnuc-hpc", show_default=True)
@click.option("--max-requeues", type=click.IntRange(min=0), default=3, show_default=True,
              help="Requeues after reaching the time limit.")
@click.option("--per-input/--together", default=None,
              help="A job array with one task and OUTDIR/<name> per input (default with several "
                   "inputs), or one job for all inputs.")
@click.option("--gres", help="Generic resources, as sbatch --gres (e.g. gpu:a100:2).")
@click.option("--constraint", help="Node features, as sbatch --constraint (e.g. h100).")
@click.option("--exclusive", is_flag=True, default=False, help="Whole nodes only (sbatch --exclusive).")
@click.option("--mail-type", help="When Slurm mails you, as sbatch --mail-type (e.g. END,FAIL).")
@click.option("--mail-user", help="Where Slurm mails to (sbatch --mail-user).")
@click.option("--slurm-opt", "slurm_opts", multiple=True, metavar="KEY=VALUE",
              help="Any other sbatch option, passed through (repeatable): reservation=maint, "
                   "comment=x, or KEY alone for a flag.")
@click.option("--wckey", help="Slurm workload characterization key (sbatch --wckey); none unless given.")
@click.option("--setup", multiple=True, metavar="LINE",
              help="A shell line the job runs before the command (repeatable): 'module load cuda', "
                   "'source env.sh'.")
@click.option("--python", metavar="PATH",
              help="The Python the job runs (default: the one running submit); with --launcher, the "
                   "path inside the container.")
@click.option("--launcher", metavar="PREFIX",
              help="A command prefix for the job's Python, e.g. 'apptainer exec --nv img.sif'.")
@click.option("--show-script", is_flag=True, help="Print the job script that would be submitted; submit nothing.")
@click.option("--interface", help="Network interface for multi-node Dask (e.g. ib0).")
@click.option("--embed", "embed_only", is_flag=True, help="Features only (virnuc-hpc embed).")
@click.option("--wait", is_flag=True, help="Wait for the jobs; exit 1 unless all completed.")
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED)
def submit(run_args: tuple[str, ...], folder: str | None, time_limit: str, per_input: bool | None,
           interface: str | None, embed_only: bool, wait: bool, slurm_opts: tuple[str, ...],
           show_script: bool, **sbatch: Any) -> None:
    """Run predict (or embed) as Slurm jobs through submitit.

    virnuc-hpc submit [SLURM OPTIONS] -- INPUT... -o OUTDIR [PREDICT OPTIONS]

    PREDICT OPTIONS are those of `virnuc-hpc predict --help` (inputs, models, outputs, performance,
    cluster, advanced).
    """
    from pathlib import Path

    from virnuc_hpc.runtime import job_checks, slurm
    from virnuc_hpc.runtime.job_script import check_run_args

    command = embed if embed_only else predict
    params = command.make_context("virnuc-hpc submit [SLURM OPTIONS] --", list(run_args)).params
    check_run_args(run_args)  # OUTDIR and other paths reach the job script
    inputs, outdir = params.pop("inputs"), params.pop("outdir")
    preset, config_file = params.pop("preset"), params.pop("config_file")
    samplesheet, dry_run = params.pop("samplesheet"), params.pop("dry_run")
    if dry_run:
        _fail("--dry-run belongs to predict/embed (it submits nothing): run it there")
    if samplesheet and inputs:
        _fail("give input files or --samplesheet, not both")
    if not samplesheet and not inputs:
        _fail("no input given (FASTA/FASTQ files, or --samplesheet)")
    if samplesheet:
        from virnuc_hpc.reads.samples import read_samplesheet
        read_samplesheet(samplesheet)  # a mistake in the sheet is reported now, not in the job
    missing = [p for p in inputs if not Path(p).is_file()]
    if missing:
        _fail(f"input file(s) not found: {', '.join(missing)}")
    # every value the job script gets, then what the job will need: before anything is written
    config = load_config(preset=preset, config_file=config_file, overrides=params)
    extra = slurm.parse_slurm_opts(slurm_opts)
    options = slurm.SlurmOptions(folder=Path(folder or Path(outdir) / "slurm").resolve(),
                                 time=time_limit, extra=extra, **sbatch)
    slurm.check_options(options)
    slurm.time_minutes(time_limit)
    outdirs = slurm.job_outdirs(inputs, outdir, per_input=per_input, samplesheet=samplesheet)
    job_checks.check_job(inputs, samplesheet, outdirs, options.folder, config, classify=not embed_only,
                         python=options.python, launcher=options.launcher)
    if show_script:
        click.echo(slurm.job_script(options, jobs=len(outdirs)), nl=False)
        return
    try:
        jobs = slurm.submit(inputs, outdir, config, options, classify=not embed_only,
                            per_input=per_input, interface=interface, samplesheet=samplesheet)
    except Exception as err:  # sbatch refused (partition, account, limits) or no Slurm here
        detail = getattr(err, "stderr", None) or getattr(err, "output", None) or ""
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        _fail(f"submission failed: {err} {detail}".strip())
    for job in jobs:
        click.echo(f"submitted job {job.job_id}: {' '.join(job.inputs) or samplesheet} -> {job.outdir}")
        click.echo(f"  log: {job.log}")
    click.echo(f"status: virnuc-hpc status {options.folder}")
    if wait:
        states = slurm.wait(options.folder, [j.job_id for j in jobs])
        click.echo(slurm.format_status(states))
        if any(s.state != "COMPLETED" for s in states):
            sys.exit(1)


@main.command()
@click.argument("folder", type=click.Path())  # status itself says what a path that is no folder of ours is
@click.option("--json", "as_json", is_flag=True, help="The same facts as one JSON object (also for an error).")
def status(folder: str, as_json: bool) -> None:
    """Where the run in an output directory stands: running (bags done/total, rate, ETA, who holds
    its lock), finished (counts, % virus, wall time, tables), failed (the error), resumable (bags
    kept); for a Slurm job folder, its jobs (state, bags, ETA, logs)."""
    import json

    from virnuc_hpc.runtime.status import folder_status, render

    try:
        facts = folder_status(folder)
    except UserError as err:
        if as_json:  # a script reading stdout gets its object too; the message follows as for any command
            click.echo(json.dumps({"folder": folder, "error": str(err)}))
        raise
    for problem in facts["problems"]:  # damaged records, left out of the answer
        click.echo(f"virnuc-hpc: warning: {problem}", err=True)
    click.echo(json.dumps(facts) if as_json else render(facts))


@main.command()
@click.option("--scheduler-address", help="Scheduler to join (tcp://host:port).")
@click.option("--scheduler-file", type=click.Path(dir_okay=False),
              help="Join the scheduler named in this Dask scheduler file (waits up to --death-timeout "
                   "seconds for it to appear).")
@config_option("scheduler_timeout")
@config_option("device")
@config_option("workers")
@click.option("--host", help="Address to listen on (default: 127.0.0.1 for a local scheduler, "
                             "else this node's address).")
@click.option("--name", help="Worker name prefix shown on the dashboard.")
@click.option("--death-timeout", type=float, default=60, show_default=True,
              help="Seconds to keep trying to reach a vanished scheduler before exiting.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--preset", help="Named configuration shipped with virnuc-hpc (configs/; for device and "
                              "workers).")
def worker(scheduler_address: str | None, scheduler_file: str | None, host: str | None, name: str | None,
           death_timeout: float, config_file: str | None, preset: str | None, **overrides: Any) -> None:
    """Add this machine's GPUs (or CPU) to a running scheduler until it goes away.

    Models, precision and batch sizes come from the run being served: predict registers them with
    the scheduler and every worker, also one joining later, loads them from there.
    """
    from virnuc_hpc.runtime.cluster import read_scheduler_file, serve_workers
    from virnuc_hpc.runtime.slurm import node_address

    if bool(scheduler_address) == bool(scheduler_file):
        _fail("give --scheduler-address or --scheduler-file (one of them)")
    # the address is checked as predict's is (its form; then that a scheduler answers in time)
    config = load_config(preset=preset, config_file=config_file,
                         overrides={**overrides, "scheduler_address": scheduler_address})
    if scheduler_file:
        scheduler_address = read_scheduler_file(scheduler_file, death_timeout)
    assert scheduler_address is not None
    if host is None:
        local = any(h in scheduler_address for h in ("127.0.0.1", "localhost", "[::1]"))
        host = "127.0.0.1" if local else node_address(host=config.host)
    serve_workers(scheduler_address, config, host=host, name=name, death_timeout=death_timeout)


#: The RunConfig fields that change what check-precision embeds or how (models, device, engine, chunks).
_CHECK_PRECISION_FIELDS = ("classifier", "expected_length", "esm2_model", "dnabert_model", "device", "engine",
                           "exact_gelu", "esm2_max_tokens", "dnabert_max_tokens", "dnabert_layout",
                           "threads_per_worker", "skip_invalid", "offline", "models_dir", "cache_dir",
                           "compile_cache")


def _check_precision_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The RunConfig options check-precision takes, generated like predict's (``config_option``)."""
    for name in reversed(_CHECK_PRECISION_FIELDS):
        fn = config_option(name)(fn)
    return fn


@main.command("check-precision")
@click.argument("inputs", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--sample", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Reads taken from the start of the inputs.")
@click.option("--precisions", default="fp16,bf16,int8", show_default=True,
              help="Precisions compared with fp32, comma-separated (fp16, bf16, int8).")
@_check_precision_options
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML file with any configuration keys.")
@click.option("--preset", help="Named configuration shipped with virnuc-hpc (configs/; e.g. demo).")
def check_precision(inputs: tuple[str, ...], sample: int, precisions: str, config_file: str | None,
                    preset: str | None, **overrides: Any) -> None:
    """Compare fp16/bf16/int8 with fp32 on a sample of your reads and your models: cosine per
    encoder, equal labels, speed; recommends the fastest precision that keeps them."""
    from virnuc_hpc.runtime import precision_check as check

    wanted = check.parse_precisions(precisions)
    config = load_config(preset=preset, config_file=config_file, overrides=overrides)
    report = check.check_precision(list(inputs), config, sample=sample, precisions=wanted)
    click.echo(check.format_report(report))


# --- models: staged once on a login node, verified on the compute nodes ----------------------------

def _models_dir(given: str | None) -> Any:
    """--models-dir, else the configured one (its environment variable), else the per-user default."""
    from pathlib import Path

    from virnuc_hpc.models.sources import default_models_dir
    if given:
        return Path(given).expanduser()
    configured = load_config().models_dir
    return Path(configured).expanduser() if configured else default_models_dir()


def _models_dir_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    variable = next(v for v, k in ENVIRONMENT.items() if k == "models_dir")
    help_text = (f"The models directory  [default: ${variable}, else $XDG_DATA_HOME/virnuc-hpc/models, "
                 "else ~/.local/share/virnuc-hpc/models]")
    return click.option("--models-dir", type=click.Path(file_okay=False), help=help_text)(fn)


@main.group(cls=CommandGroup)
def models() -> None:
    """Stage the models in one directory (fetch, where there is network), check them where they
    run (verify, offline), and show what is staged (list)."""


@models.command("fetch")
@_models_dir_option
@click.option("--esm2", "esm2", default=DEFAULT_ESM2, show_default=True,
              help="fair-esm ESM-2 model name (none: skip).")
@click.option("--dnabert", "dnabert", default=DEFAULT_DNABERT, show_default=True,
              help="DNABERT hub id; only the files a run reads are fetched (none: skip).")
@click.option("--classifiers", default=",".join(map(str, CLASSIFIER_LENGTHS)), show_default=True,
              help="VirNucPro classifiers by chunk length, comma-separated (none: skip).")
@click.option("--mirror", metavar="URL",
              help="Fetch every file from URL/<upstream path> (the upstream URL without scheme and host), "
                   "e.g. a site mirror or `python -m http.server` over a copied folder.")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Resumed attempts per file after a dropped connection.")
def models_fetch(models_dir: str | None, esm2: str, dnabert: str, classifiers: str, mirror: str | None,
                 retries: int) -> None:
    """Download the models into the models directory: resumable, atomic, with a manifest."""
    from virnuc_hpc.models import sources, staging

    directory = _models_dir(models_dir)
    if mirror is not None and not mirror.startswith(("http://", "https://")):
        _fail(f"--mirror {mirror!r}: expected an http:// or https:// URL")
    skip = {"", "none"}
    wanted = [*([] if esm2.lower() in skip else sources.esm2_sources(esm2)),
              *([] if dnabert.lower() in skip else sources.dnabert_sources(dnabert)),
              *([] if classifiers.lower() in skip else sources.classifier_sources(classifiers))]
    if not wanted:
        _fail("nothing to fetch: --esm2, --dnabert and --classifiers are all none")
    done = staging.fetch(directory, wanted, mirror=mirror, retries=retries)
    for item in done:
        e = item.entry
        how = f"fetched from {e.fetched_from}" if item.downloaded else "already staged"
        click.echo(f"{e.file}  {e.size:,} bytes  sha256 {e.sha256}  ({how})")
    variable = next(v for v, k in ENVIRONMENT.items() if k == "models_dir")
    click.echo(f"models in {directory}; on the compute nodes: `virnuc-hpc models verify --models-dir {directory}`, "
               f"then runs with --models-dir {directory} (or {variable}={directory})")


@models.command("verify")
@_models_dir_option
def models_verify(models_dir: str | None) -> None:
    """Re-hash every staged file against the manifest and open each model (offline); exit 2 on any
    missing, truncated or altered file."""
    from virnuc_hpc.models.inventory import partial_downloads, verify

    directory = _models_dir(models_dir)
    checks = verify(directory)
    for check in checks:
        click.echo(f"{'ok' if check.ok else 'FAILED':<7} {check.file}: {check.detail}")
    for part in partial_downloads(directory):
        click.echo(f"note    {part.relative_to(directory)}: an unfinished download (`models fetch` resumes it)")
    failed = [c for c in checks if not c.ok]
    if failed:
        _fail(f"{len(failed)} problem(s) in the models directory {directory}: "
              + "; ".join(f"{c.file}: {c.detail}" for c in failed)
              + " (fetch again with `virnuc-hpc models fetch`, or copy the files again)")
    click.echo(f"all {len(checks)} checks passed in {directory}")


@models.command("list")
@_models_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per staged file.")
def models_list(models_dir: str | None, as_json: bool) -> None:
    """What is staged: file, role, model, size, sha256, random-weight flag (no re-hashing)."""
    import dataclasses
    import json

    from virnuc_hpc.models.inventory import partial_downloads, staged

    directory = _models_dir(models_dir)
    items = staged(directory)
    flag = {True: "yes", False: "no", None: "-"}
    if as_json:
        for item in items:
            click.echo(json.dumps({**dataclasses.asdict(item.entry), "present": item.present,
                                   "random_weights": item.random_weights}))
        return
    click.echo(f"models directory {directory}")
    click.echo(f"{'role':<11}{'model':<24}{'size':>15}  {'random':<7}{'sha256':<66}file")
    for item in items:
        e = item.entry
        size = f"{e.size:,}" if item.present else "MISSING"
        click.echo(f"{e.role:<11}{e.model:<24}{size:>15}  {flag[item.random_weights]:<7}{e.sha256:<66}{e.file}")
    for part in partial_downloads(directory):
        click.echo(f"unfinished download: {part.relative_to(directory)} ({part.stat().st_size:,} bytes)")


if __name__ == "__main__":  # pragma: no cover
    main()
