"""Command-line helpers shared by the tests."""

from __future__ import annotations

from perceivers.cli.main import main


def cli_error(capsys, argv: list[str]) -> str:
    """Run ``perceivers ARGV``; assert it exits 2 with one error line and no traceback; return that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err
