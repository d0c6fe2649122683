"""The two outcomes the trust tests check through the real CLI (typer's CliRunner): a command
that succeeds, and a refusal that is one `error:` line on stderr with exit status 2 and no
traceback."""

from __future__ import annotations

from typer.testing import CliRunner

from planner.cli import app

runner = CliRunner()


def ok(*args):
    """The result of `args` (each as text), which must succeed."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def refused(*args) -> str:
    """The one line of a refusal of `args` (each as text)."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]
