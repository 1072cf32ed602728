"""Command line: ``virnuc-hpc predict | embed | validate``.

Options map one to one onto RunConfig fields; anything not given on the command line comes from
--config / --preset / configs/default.yaml. Errors a user can fix exit with status 2 and one clear
message, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import click
from pydantic import ValidationError

from .config import load_config

EXIT_USAGE = 2


def _run_options(classifier: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    options = [
        click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False)),
        click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False),
                     help="Output directory (created; a rerun resumes it)."),
        click.option("--expected-length", type=click.Choice(["300", "500"]),
                     help="Chunk size; must match the classifier (300_model / 500_model)."),
        click.option("--esm2-model", help="ESM-2 checkpoint file or fair-esm name."),
        click.option("--dnabert-model", help="DNABERT-S model directory or hub id."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"])),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"])),
        click.option("--workers", type=int, help="Dask workers (default: one per GPU, or 1)."),
        click.option("--threads-per-worker", type=int, help="torch threads per CPU worker."),
        click.option("--bag-size", type=int, help="Frames per bag (scheduling/output unit)."),
        click.option("--scheduler-address", help="Use a running Dask scheduler (tcp://host:port)."),
        click.option("--dashboard-address", help="Dashboard bind address (default 127.0.0.1:8787)."),
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                     help="YAML file with any configuration keys."),
        click.option("--preset", help="Named configuration from configs/ (e.g. demo)."),
        click.option("--skip-invalid", is_flag=True, default=None,
                     help="Skip empty records, bad characters and duplicate ids (listed in reads.tsv)."),
        click.option("--overwrite", is_flag=True, default=None,
                     help="Replace an OUTDIR made with other inputs or settings."),
        click.option("--progress/--no-progress", default=None, help="Live progress bar."),
    ]
    if classifier:
        options.insert(3, click.option("--classifier", help="VirNucPro classifier (.pth)."))

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def _fail(message: str) -> None:
    click.echo(f"virnuc-hpc: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _execute(command: str, inputs: tuple[str, ...], outdir: str, preset: str | None,
             config_file: str | None, **overrides: Any) -> None:
    from .errors import ModelFileError, ModelNotFoundError
    from .fasta import FastaError
    from .store import OutputError

    if overrides.get("expected_length"):
        overrides["expected_length"] = int(overrides["expected_length"])
    try:
        config = load_config(preset=preset, config_file=config_file, overrides=overrides)
        from . import pipeline
        result = pipeline.run(list(inputs), outdir, config=config, classify=command == "predict")
    except FastaError as err:
        _fail(f"invalid input, nothing was computed:\n{err}")
    except ValidationError as err:
        _fail(f"invalid configuration: {err}")
    except (ModelNotFoundError, ModelFileError, OutputError, ValueError) as err:
        _fail(str(err))
    except OSError as err:
        _fail(f"{err.strerror or err}: {err.filename or ''}".rstrip(": "))
    else:
        click.echo(render_summary(result))


def render_summary(result: Any) -> str:
    c = result.counts
    lines = []
    if result.random_weights:
        from .store import RANDOM_WEIGHTS_WARNING
        lines += ["", "!" * 78, f"!! {RANDOM_WEIGHTS_WARNING}", "!" * 78]
    lines += ["", f"reads {c.get('reads', 0):,}   chunks {c.get('chunks', 0):,}   "
                  f"frames {c.get('frames', 0):,}   skipped records {c.get('skipped_records', 0):,}",
              f"reads without an open frame {c.get('reads_without_frames', 0):,}   "
              f"chunks without an open frame {c.get('chunks_without_frames', 0):,}"]
    if "chunks_called" in c and c.get("chunks_called"):
        lines.append(f"virus calls: {c.get('virus_chunks', 0):,} of {c['chunks_called']:,} chunks, "
                     f"{c.get('virus_reads', 0):,} reads")
    lines.append("time per stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    lines.append(f"outputs in {result.outdir}/: " + ", ".join(result.files + ["bags/"]))
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


@main.command()
@_run_options(classifier=True)
def predict(inputs: tuple[str, ...], outdir: str, preset: str | None, config_file: str | None,
            **overrides: Any) -> None:
    """Predict viral reads: VirNucPro tables, reads.tsv, NetCDF features."""
    _execute("predict", inputs, outdir, preset, config_file, **overrides)


@main.command()
@_run_options(classifier=False)
def embed(inputs: tuple[str, ...], outdir: str, preset: str | None, config_file: str | None,
          **overrides: Any) -> None:
    """Feature extraction only: DNABERT-S | ESM-2 vectors per kept frame, as NetCDF."""
    _execute("embed", inputs, outdir, preset, config_file, **overrides)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(inputs: tuple[str, ...]) -> None:
    """Report every problem in FASTA files without running any model."""
    from .fasta import validate as validate_fasta

    problems = validate_fasta(list(inputs))
    for problem in problems:
        click.echo(str(problem), err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s) found", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(f"ok: {', '.join(inputs)}")


if __name__ == "__main__":  # pragma: no cover
    main()
