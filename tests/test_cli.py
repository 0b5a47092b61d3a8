"""The `deblurdiff` command: help at every level, one-line errors, exit codes."""

from __future__ import annotations

from deblurdiff.cli import COMMAND_MODULES, build_parser


def _existing_commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001
    return sorted(sub.choices)


def test_help_lists_the_commands_that_exist(cli):
    result = cli("--help")
    assert result.returncode == 0
    commands = _existing_commands()
    assert commands, "no subcommand is registered"
    for name in commands:
        assert name in result.stdout
    # every registered command is one that the design names
    assert set(commands) <= {m.rsplit(".", 1)[1] for m in COMMAND_MODULES}


def test_every_command_has_help(cli):
    for name in _existing_commands():
        result = cli(name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        assert f"deblurdiff {name}" in result.stdout


def test_bad_flag_exits_2_with_one_line(cli):
    result = cli("--no-such-flag")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--no-such-flag" in lines[0]


def test_bad_flag_on_a_subcommand_exits_2_with_one_line(cli):
    name = _existing_commands()[0]
    result = cli(name, "--definitely-not-a-flag")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--definitely-not-a-flag" in lines[0]


def test_missing_command_exits_2(cli):
    result = cli()
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_version(cli):
    result = cli("--version")
    assert result.returncode == 0 and "deblurdiff" in result.stdout
