from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from virnuc_hpc.config import CONFIG_DIR, RunConfig, dump_config, load_config


def test_default_yaml_equals_model_defaults():
    on_disk = yaml.safe_load((CONFIG_DIR / "default.yaml").read_text())
    assert on_disk == RunConfig().model_dump(mode="json")


def test_precedence_preset_file_overrides(tmp_path: Path):
    user = tmp_path / "user.yaml"
    user.write_text("bag_size: 7\nworkers: 3\n")
    cfg = load_config(preset="demo", config_file=user, overrides={"workers": 1, "precision": None})
    assert cfg.expected_length == 300          # from the preset
    assert cfg.bag_size == 7                   # the user file beats the preset
    assert cfg.workers == 1                    # the command line beats both
    assert cfg.precision == "fp32"             # None means "not given"


def test_bad_values_are_refused(tmp_path: Path):
    with pytest.raises(ValidationError):
        load_config(overrides={"expected_length": 400})
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_option: 1\n")
    with pytest.raises(ValidationError):
        load_config(config_file=bad)
    with pytest.raises(ValueError, match="unknown preset"):
        load_config(preset="nope")


def test_dump_round_trips(tmp_path: Path):
    cfg = load_config(preset="demo")
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(config_file=path) == cfg


def _fields_of(kind: type) -> list[str]:
    """RunConfig fields whose type is ``kind`` (or ``kind | None``)."""
    return [name for name, field in RunConfig.model_fields.items()
            if field.annotation in (kind, kind | None)]


def test_numbers_and_switches_are_strict():
    # YAML reads `true`, `yes` and `on` as booleans, and 2.5 as a float: none may become an integer
    # (pydantic's lax mode turns true into 1), nor 1 a switch
    ints, bools, floats = _fields_of(int), _fields_of(bool), _fields_of(float)
    assert {"bag_size", "workers", "threads_per_worker", "bags_in_flight_per_worker"} <= set(ints)
    assert {"skip_invalid", "overwrite", "progress", "exact_gelu"} <= set(bools)
    assert "scheduler_timeout" in floats
    for name in ints:
        for bad in (True, 2.5, 64.0, "64"):
            with pytest.raises(ValidationError, match=name):
                RunConfig(**{name: bad})
        assert getattr(RunConfig(**{name: 64}), name) == 64
    for name in bools:
        for bad in (1, 0, "yes"):
            with pytest.raises(ValidationError, match=name):
                RunConfig(**{name: bad})
    for name in floats:
        for bad in (True, "10"):
            with pytest.raises(ValidationError, match=name):
                RunConfig(**{name: bad})
        whole = 1 if name == "int8_check_cosine" else 3  # an int where a float goes (within the field's range)
        assert getattr(RunConfig(**{name: whole}), name) == float(whole)


def test_type_errors_read_in_yaml_terms(tmp_path: Path):
    from virnuc_hpc.config import describe_errors
    mine = tmp_path / "mine.yaml"
    mine.write_text("bag_size: true\nprogress: 1\n")
    with pytest.raises(ValidationError) as caught:
        load_config(config_file=mine)
    assert describe_errors(caught.value).splitlines() == [
        "bag_size: expected a whole number, got true", "progress: expected true or false, got 1"]


@pytest.mark.parametrize("given, bound", [("8799", "127.0.0.1:8799"), (":8799", "127.0.0.1:8799"),
                                          (8799, "127.0.0.1:8799"), ("0.0.0.0:8799", "0.0.0.0:8799"),
                                          ("node7:0", "node7:0"), ("[::1]:8799", "[::1]:8799")])
def test_dashboard_address_without_host_means_localhost(given, bound):
    assert RunConfig(dashboard_address=given).dashboard_address == bound


@pytest.mark.parametrize("given", ["not an address", "", "127.0.0.1", "127.0.0.1:99999", "tcp://h:1", True])
def test_dashboard_address_garbage_is_refused(given):
    with pytest.raises(ValidationError, match="dashboard_address"):
        RunConfig(dashboard_address=given)


@pytest.mark.parametrize("given", ["tcp://10.0.0.1:8786", "tls://head:8786", "head-node:8786", "[::1]:8786"])
def test_scheduler_address_forms(given):
    assert RunConfig(scheduler_address=given).scheduler_address == given
    assert RunConfig().scheduler_timeout == 10


@pytest.mark.parametrize("given", ["not an address", "head", "http://head:8786", "tcp://head", "head:0"])
def test_scheduler_address_garbage_is_refused(given):
    with pytest.raises(ValidationError, match="tcp://HOST:PORT"):
        RunConfig(scheduler_address=given)


@pytest.mark.parametrize("name", ["../configs/demo", str(CONFIG_DIR / "demo"), "demo.yaml", "x/"])
def test_presets_are_names_not_paths(name: str):
    # ../configs/demo and the absolute path do name a real file: still not a preset
    with pytest.raises(ValueError, match="unknown preset .*known presets: default, demo"):
        load_config(preset=name)
