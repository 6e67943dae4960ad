"""``perceivers train RECIPE --help`` (and ``eval RECIPE --help``) list that recipe's own settings with their default
and meaning, under the names ``--print-config`` shows, each of which is a flag that sets it."""

from __future__ import annotations

import json
import re

import pytest

from perceivers.cli.main import main
from perceivers.training.overrides import apply_overrides
from perceivers.training.recipes import ENGINE_SETTING_HELP, RECIPES, settings_help

BUILT_IN = ["digits", "text", "copy", "hip-mae", "hip-mae-finetune"]


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 0
    return capsys.readouterr().out


def _row(out: str, key: str) -> str | None:
    return next((line for line in out.splitlines() if re.match(rf"\s+--{key}\b", line)), None)


def test_train_help_lists_the_recipes_own_settings(capsys):
    text = _help(capsys, "train", "text", "--help")
    row = _row(text, "eval_windows")
    assert row is not None and row.split()[1] == "64" and "validation windows" in row
    assert "--num_latents (--latents)" in text and _row(text, "lr").split()[1] == "0.002"
    digits = _help(capsys, "train", "digits", "--help")
    assert _row(digits, "eval_windows") is None and _row(digits, "max_shift").split()[1] == "1"
    assert _row(digits, "lr").split()[1] == "0.001" and _row(digits, "epochs").split()[1] == "80"
    assert "settings of recipe" not in _help(capsys, "train", "--help")  # no recipe: the generic help


def test_eval_help_lists_the_task_settings_only(capsys):
    out = _help(capsys, "eval", "text", "--help")
    assert _row(out, "eval_windows") is not None and _row(out, "lr") is None


@pytest.mark.parametrize("name", BUILT_IN)
def test_help_names_are_the_print_config_names_and_set_them(name, capsys):
    out = _help(capsys, "train", name, "--help")
    assert main(["train", name, "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    recipe = RECIPES[name]()
    keys = [k for k in printed if k != "engine"] + [k for k in printed["engine"] if k not in printed]
    for key in keys:
        row = _row(out, key)
        assert row is not None, key
        meaning = row.split("  ")[-1].strip()
        assert meaning and meaning != row.split()[1], (key, row)  # every setting has a meaning
        typed = re.split(r"\s{2,}", row.strip())[1]  # the default as typed; setting it changes nothing
        assert apply_overrides(recipe, [(key, typed)]) == recipe, (key, typed)


def test_every_engine_setting_has_a_meaning():
    recipe = RECIPES["digits"]()
    assert set(recipe.engine.to_dict()) <= set(ENGINE_SETTING_HELP)
    for name in sorted(RECIPES):  # every recipe, including those added after this test was written
        task = RECIPES[name]().task
        assert set(task.settings()) == set(task.setting_help), name
    assert settings_help(recipe, engine=False).count("\n") == len(recipe.task.settings())
