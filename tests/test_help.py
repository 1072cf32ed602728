"""predict/embed/submit --help in groups: the headings in order, every option listed once, and each
configuration option under the heading its RunConfig field declares."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from virnuc_hpc import cli
from virnuc_hpc.config import OPTION_GROUPS, RunConfig

HEADINGS = ["Inputs", "Models", "Outputs", "Performance", "Cluster", "Advanced"]


def help_text(command: click.Command) -> str:
    """``virnuc-hpc COMMAND --help`` (through the group, whose settings give -h too)."""
    group = cli.main if command.name in cli.main.commands else click.Group(commands=[command])
    result = CliRunner().invoke(group, [command.name or "", "--help"], prog_name="virnuc-hpc",
                                terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def sections(command: click.Command) -> dict[str, list[str]]:
    """Help's headings, in order, with the option names (``--x``, ``-o``) of each one's rows."""
    output = help_text(command)
    found: dict[str, list[str]] = {}
    heading = None
    for line in output.splitlines():
        if re.fullmatch(r"[A-Z][\w ()]*:", line):
            heading = line[:-1]
            found[heading] = []
        elif heading and re.match(r"  -", line):
            term = re.split(r"\s{2,}", line.strip())[0]
            found[heading] += [w.rstrip(",") for w in term.replace("/", " ").split() if w.startswith("-")]
    return found


def flags(command: click.Command) -> list[str]:
    return [flag for p in command.params if isinstance(p, click.Option) for flag in (*p.opts, *p.secondary_opts)]


@pytest.mark.parametrize("command", [cli.predict, cli.embed], ids=["predict", "embed"])
def test_help_has_the_groups_in_order_and_every_option_once(command: click.Command):
    found = sections(command)
    assert list(found) == HEADINGS
    listed = [flag for names in found.values() for flag in names]
    assert sorted(listed) == sorted([*flags(command), "-h", "--help"])  # each exactly once
    assert found["Inputs"][:3] == ["--samplesheet", "--preset", "--config"]  # the common ones first
    assert found["Outputs"][:2] == ["-o", "--outdir"]


def test_every_field_declares_one_of_the_groups():
    declared = {name: cli.field_group(name) for name in RunConfig.model_fields}
    assert {name: group for name, group in declared.items() if group not in OPTION_GROUPS} == {}
    assert [g.capitalize() for g in OPTION_GROUPS] == HEADINGS


def test_an_options_heading_is_its_fields_group():
    found = sections(cli.predict)
    where = {flag: heading for heading, names in found.items() for flag in names}
    for name in RunConfig.model_fields:
        assert where["--" + name.replace("_", "-")] == cli.field_group(name).capitalize(), name


def test_the_group_is_read_from_the_config_definition(monkeypatch: pytest.MonkeyPatch):
    """Moving a field to another group in RunConfig moves its option in the help."""
    monkeypatch.setattr(RunConfig.model_fields["bag_size"], "json_schema_extra", {"group": "cluster"})

    @click.command(cls=cli.GroupedCommand)
    @cli.config_option("bag_size")
    @cli.config_option("workers")
    def probe(**_: object) -> None:
        """A command of two configuration options."""

    found = sections(probe)
    assert found == {"Performance": ["--workers"], "Cluster": ["--bag-size"], "Advanced": ["--help"]}


def test_submit_help_is_grouped_and_points_to_predicts():
    found = sections(cli.submit)
    assert list(found) == ["Slurm resources", "Jobs", "Job environment", "Submit"]
    listed = [flag for names in found.values() for flag in names]
    assert sorted(listed) == sorted([*flags(cli.submit), "-h", "--help"])
    assert "virnuc-hpc predict --help" in help_text(cli.submit)
