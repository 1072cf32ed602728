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
