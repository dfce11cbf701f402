"""Every command's --help states each option's default once, and never a meaningless one."""
import argparse

import pytest

from sidgr.cli import COMMANDS, build_parser
from sidgr.help_format import HelpFormatter


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_each_default_once_and_no_empty_ones(command):
    parser, _ = build_parser(command)
    parser.formatter_class = lambda prog: HelpFormatter(prog, width=100_000, max_help_position=100_000)
    lines = parser.format_help().splitlines()
    for action in parser._actions:
        if not action.option_strings or not action.help:
            continue
        line = next(ln for ln in lines if ln.strip().startswith(action.option_strings[0]))
        meaningful = action.default not in (None, False, argparse.SUPPRESS)
        assert line.count("(default") == int(meaningful or "(default" in action.help), (command, line)
        assert "(default: None)" not in line and "(default: False)" not in line


def test_version(capsys):
    from sidgr.cli import main
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("sidgr 0.")
