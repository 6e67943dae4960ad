"""``perceivers bench``: its help, and bad flags as one line with exit status 2 (nothing is measured)."""

from __future__ import annotations

import pytest

from perceivers.cli.main import main


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--m", "--impls", "--precision", "--malloc", "--threads", "--out"):
        assert flag in out


BAD = [
    (["--m", "1x"], "--m='1x' is invalid: expected an integer >= 1"),
    (["--m", "0"], "--m=0 is invalid"),
    (["--m", ","], "--m=',' is invalid"),
    (["--impls", "ours,foo"], "--impls='foo' is invalid"),
    (["--modes", "fast"], "--modes='fast' is invalid"),
    (["--precision", "fp16"], "--precision='fp16' is invalid"),
    (["--precision", "fp32,fp8"], "--precision='fp8' is invalid"),
    (["--malloc", "jemalloc"], "--malloc='jemalloc' is invalid"),
    (["--threads", "0"], "--threads=0 is invalid"),
    (["--repeats", "two"], "--repeats='two' is invalid"),
    (["--warmup", "-1"], "--warmup=-1 is invalid"),
    (["--device", "tpu:x"], "--device='tpu:x' is invalid"),
    (["--ar", "--impls", "transformers"], "--impls='transformers' is invalid"),  # no Perceiver AR there
    (["--ar", "--rounds", "0"], "--rounds=0 is invalid"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_flags_are_one_line_exit_2(argv, message, tmp_path, capsys):
    assert main(["bench", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("perceivers bench: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "out").exists()  # nothing was created or run


def test_an_unwritable_out_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["bench", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("perceivers bench: error: --out: ") and err.count("\n") == 1, err
