"""One source for options and settings: every RunConfig field is a command-line option made from the
field itself, the VIRNUC_HPC_* variables are defaults read by config.py alone and reach the workers in
the ModelSpec, a refused resume names what changed, and what a bag reports is typed."""

from __future__ import annotations

import pickle
import threading
import tomllib
from pathlib import Path

import click
import pytest
import yaml
from pydantic import ValidationError

from virnuc_hpc import cli
from virnuc_hpc.config import (CONFIG_DIR, ENVIRONMENT, RunConfig, environment_defaults, load_config, presets,
                               with_environment)
from virnuc_hpc.errors import ConfigError, OutputError
from virnuc_hpc.models.resolve import ModelFile
from virnuc_hpc.outputs import store
from virnuc_hpc.runtime.outdir import claim_outdir
from virnuc_hpc.runtime.scheduling import checked_ahead
from virnuc_hpc.runtime.summary import guard_totals, worker_summary
from virnuc_hpc.runtime.encoding import model_spec
from virnuc_hpc.runtime.worker import BagReport, BagSeconds, EncoderStats

ROOT = Path(__file__).resolve().parent.parent
VARIABLES = (*ENVIRONMENT, "HF_HUB_OFFLINE")


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def options_of(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


# --- the command line is made from RunConfig ------------------------------------------------------

def test_every_field_has_a_description():
    assert [n for n, f in RunConfig.model_fields.items() if not f.description] == []


@pytest.mark.parametrize("command", [cli.predict, cli.embed], ids=["predict", "embed"])
def test_every_field_is_an_option_with_the_fields_help(command: click.Command):
    options = options_of(command)
    wanted = [n for n in RunConfig.model_fields if command is cli.predict or n != "classifier"]
    assert [n for n in wanted if n not in options] == []
    for name in wanted:
        field, option = RunConfig.model_fields[name], options[name]
        assert option.help.startswith(field.description.rstrip(".")), name
        assert option.opts[0] == "--" + name.replace("_", "-")
        assert option.default is None, f"{name}: a default here would hide the preset's"
    assert "classifier" not in options_of(cli.embed)


def test_choices_are_the_fields_values():
    options = options_of(cli.predict)
    assert list(options["precision"].type.choices) == ["auto", "fp32", "fp16", "bf16", "int8"]
    assert list(options["dnabert_layout"].type.choices) == ["auto", "packed", "padded"]
    assert options["progress"].secondary_opts == ["--no-progress"]


def parsed(*args: str) -> RunConfig:
    params = cli.predict.make_context("predict", ["in.fa", "-o", "out", *args]).params
    return load_config(preset=params["preset"], config_file=params["config_file"],
                       overrides={k: v for k, v in params.items() if k in RunConfig.model_fields})


def test_options_reach_the_config_with_their_types(clean_environment):
    config = parsed("--expected-length", "300", "--esm2-max-tokens", "4096", "--dnabert-max-tokens", "2048",
                    "--bags-in-flight-per-worker", "3", "--scheduler-timeout", "2.5", "--offline",
                    "--dnabert-layout", "padded", "--compile-cache", "/scratch/cc", "--cache-dir", "/c",
                    "--host", "10.0.0.7", "--no-progress", "--exact-gelu")
    assert (config.expected_length, config.esm2_max_tokens, config.dnabert_max_tokens) == (300, 4096, 2048)
    assert config.bags_in_flight_per_worker == 3 and config.scheduler_timeout == 2.5
    assert config.offline and config.exact_gelu and not config.progress
    assert (config.dnabert_layout, config.compile_cache, config.cache_dir, config.host) == \
        ("padded", "/scratch/cc", "/c", "10.0.0.7")


def test_options_not_given_leave_the_preset_alone(clean_environment):
    assert parsed("--preset", "demo") == load_config(preset="demo")
    assert parsed("--preset", "demo", "--precision", "bf16").precision == "bf16"


def test_bad_option_values_are_refused_by_click():
    with pytest.raises(click.BadParameter):
        cli.predict.make_context("predict", ["in.fa", "-o", "out", "--expected-length", "400"])
    with pytest.raises(click.BadParameter):
        cli.predict.make_context("predict", ["in.fa", "-o", "out", "--esm2-max-tokens", "many"])


# --- VIRNUC_HPC_* variables: documented defaults, read in config.py only -------------------------

def test_environment_gives_defaults(clean_environment):
    clean_environment.setenv("VIRNUC_HPC_HOST", "node7-ib")
    clean_environment.setenv("VIRNUC_HPC_CACHE", "/cache")
    clean_environment.setenv("VIRNUC_HPC_OFFLINE", "yes")
    clean_environment.setenv("VIRNUC_HPC_COMPILE_CACHE", "/ssd/cc")
    clean_environment.setenv("VIRNUC_HPC_DNABERT_PATH", " Padded ")
    config = load_config()
    assert (config.host, config.cache_dir, config.offline, config.compile_cache, config.dnabert_layout) == \
        ("node7-ib", "/cache", True, "/ssd/cc", "padded")
    assert RunConfig().cache_dir is None, "the model's own defaults stay those of default.yaml"


@pytest.mark.parametrize("value, offline", [("1", True), ("on", True), ("0", False), ("", False)])
def test_hugging_face_offline_counts(clean_environment, value: str, offline: bool):
    clean_environment.setenv("HF_HUB_OFFLINE", value)
    assert load_config().offline is offline


def test_environment_is_the_lowest_precedence(clean_environment, tmp_path: Path):
    clean_environment.setenv("VIRNUC_HPC_DNABERT_PATH", "padded")
    clean_environment.setenv("VIRNUC_HPC_CACHE", "/from-env")
    user = tmp_path / "user.yaml"
    user.write_text("cache_dir: /from-file\n")
    assert load_config(config_file=user).cache_dir == "/from-file"
    assert load_config(overrides={"dnabert_layout": "packed"}).dnabert_layout == "packed"
    # a RunConfig built in Python: the environment fills only what it left unset
    mine = with_environment(RunConfig(dnabert_layout="auto"))
    assert (mine.dnabert_layout, mine.cache_dir) == ("auto", "/from-env")


def test_bad_environment_value_names_the_variable(clean_environment):
    clean_environment.setenv("VIRNUC_HPC_DNABERT_PATH", "sideways")
    with pytest.raises(ConfigError, match="VIRNUC_HPC_DNABERT_PATH"):
        load_config()


def test_environment_defaults_of_a_given_mapping():
    assert environment_defaults({}) == {}
    assert environment_defaults({"VIRNUC_HPC_OFFLINE": "true", "VIRNUC_HPC_HOST": ""}) == {"offline": True}


def test_only_config_reads_the_switches():
    sources = [p for p in (ROOT / "virnuc_hpc").rglob("*.py") if p.name != "config.py"]
    readers = [str(p.relative_to(ROOT)) for p in sources
               if any(variable in p.read_text() for variable in ENVIRONMENT)]
    assert readers == []


def test_the_workers_get_the_switches_in_their_spec(clean_environment):
    config = RunConfig(offline=True, compile_cache="/ssd/cc", dnabert_layout="padded")
    located = {role: ModelFile(role, "demo", f"/m/{role}", f"/m/{role}", "", True) for role in ("esm2", "dnabert")}
    spec = model_spec(config, located)
    assert (spec.offline, spec.compile_cache, spec.encoder("dnabert").option("layout")) == (True, "/ssd/cc", "padded")


# --- presets inside the package ------------------------------------------------------------------

def test_presets_ship_inside_the_package():
    assert Path(str(CONFIG_DIR)).parent == ROOT / "virnuc_hpc"
    assert {"default", "demo"} <= set(presets())
    assert (ROOT / "configs").is_symlink() and (ROOT / "configs").resolve() == ROOT / "virnuc_hpc" / "configs"
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "configs/*.yaml" in package_data["virnuc_hpc"]


# --- a refused resume names what changed ---------------------------------------------------------

def claim(outdir: Path, config: RunConfig, run_key: str, sha: str = "a" * 64, path: str = "in.fa") -> None:
    models = {"esm2": ModelFile("esm2", "demo", "/m/e", "/m/e", sha, True)}
    inputs = [{"sample": "in", "path": path, "mate": None, "size": 1}]
    claim_outdir(outdir, store.read_manifest(outdir), run_key, config, models, inputs, True)


def test_refused_resume_names_each_changed_setting(tmp_path: Path):
    claim(tmp_path, RunConfig(bag_size=8, precision="fp32"), "first")
    with pytest.raises(OutputError) as refused:
        claim(tmp_path, RunConfig(bag_size=9, precision="bf16", workers=3), "second", sha="b" * 64,
              path="other.fa")
    message = str(refused.value)
    assert "holds results of a run with other inputs or settings" in message and "--overwrite" in message
    for line in ("bag_size: 8 -> 9", "precision: fp32 -> bf16", "inputs: in=in.fa -> in=other.fa",
                 f"esm2 model: demo (sha256 {'a' * 12}) -> demo (sha256 {'b' * 12})"):
        assert f"\n  {line}" in message, message
    assert "workers" not in message, "settings that change no output byte are not differences"


def test_overwrite_still_replaces(tmp_path: Path):
    claim(tmp_path, RunConfig(bag_size=8), "first")
    claim(tmp_path, RunConfig(bag_size=9, overwrite=True), "second")
    assert yaml.safe_load((tmp_path / store.CONFIG).read_text())["bag_size"] == 9


# --- typed values across the Dask boundary -------------------------------------------------------

class FakeEncoder:
    def __init__(self, **stats: int):
        self.stats = stats


def report(worker: str, esm2: EncoderStats, dnabert: EncoderStats, start: float) -> BagReport:
    return BagReport(bag=0, records=2, frames=3, protein_tokens=40, worker=worker,
                     device_interval=(start, start + 1),
                     seconds=BagSeconds(encoders=(("dnabert", 0.5), ("esm2", 1.5))),
                     encoders={"dnabert": dnabert, "esm2": esm2}, gpu_utilization=[])


def test_encoder_stats_are_typed_differences():
    before = EncoderStats.of(FakeEncoder(sequences=2, batches=1))  # a padded encoder: no oom counter
    after = EncoderStats.of(FakeEncoder(sequences=5, batches=3, nonfinite_recomputed_batches=1))
    work = after - before
    assert (work.sequences, work.batches, work.nonfinite_recomputed_batches, work.oom_split_batches) == (3, 2, 1, 0)
    assert EncoderStats.of(object()) == EncoderStats()


def test_run_json_summaries_from_typed_reports():
    reports = [report("w1", EncoderStats(sequences=3, nonfinite_recomputed_batches=1), EncoderStats(sequences=3), 0),
               report("w1", EncoderStats(sequences=4, oom_split_batches=2), EncoderStats(sequences=4), 10),
               report("w2", EncoderStats(sequences=1), EncoderStats(sequences=1, nonfinite_recomputed_batches=5), 0)]
    assert guard_totals(reports) == {
        "esm2_nonfinite_recomputed_batches": 1, "esm2_oom_split_batches": 2,
        "dnabert_nonfinite_recomputed_batches": 5, "dnabert_oom_split_batches": 0}
    workers = worker_summary(reports)
    assert workers["w1"]["bags"] == 2 and workers["w1"]["frames"] == 6
    assert workers["w1"]["counters"]["esm2_sequences"] == 7 and workers["w2"]["counters"]["dnabert_sequences"] == 1
    assert workers["w1"]["seconds"]["esm2"] == 3.0 and list(workers["w1"]["seconds"]) == [
        "parse_translate", "model_load", "prepare", "device_wait", "dnabert", "esm2", "classifier", "tables_write"]
    assert workers["w1"]["device_busy_fraction"] == pytest.approx(2 / 11)
    assert pickle.loads(pickle.dumps(reports[0])) == reports[0]


def test_resume_checks_kept_bags_in_threads_in_order():
    seen: list[str] = []

    def check(bag: int) -> str:
        seen.append(threading.current_thread().name)
        return f"numerics-{bag}"
    out = list(checked_ahead(iter(range(20)), check, threads=3))
    assert out == [(i, f"numerics-{i}") for i in range(20)]
    assert all(name.startswith("virnuc-bag-sha256") for name in seen)


def test_config_validation_error_is_unchanged():
    with pytest.raises(ValidationError):
        RunConfig(dnabert_layout="sideways")
