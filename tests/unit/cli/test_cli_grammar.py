"""One grammar for the command line: ``kosmos2 IMAGE`` and ``kosmos2 label`` take the same repeatable
``--phrase``, the same model flags (``--checkpoint``, ``--tiny``, ``--dtype``, ``--quantize``), refuse a flag
that does not apply to the task in the same words, name a setting by its flag, and say everything wrong in
one ``error:`` line; ``--help`` names the subcommands."""

from __future__ import annotations

import json

import pytest

from kosmos2.cli.main import main
from kosmos2.cli.label.cli import parser as label_parser
from launch import ROOT

CAT, COFFEE = str(ROOT / "assets" / "cat.jpg"), str(ROOT / "assets" / "coffee.jpg")


def _error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.removeprefix("error: ").rstrip("\n")


def test_help_names_label_and_selfcheck(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "label DIR" in out and "selfcheck" in out, out


@pytest.mark.parametrize(("argv", "message"), [
    ([CAT, "--task", "caption", "--text", "hello"], "--text does not apply to --task caption"),
    ([CAT, "--task", "caption", "--no-grounding"], "--no-grounding does not apply to --task caption"),
    ([CAT, "--task", "caption", "--phrase", "a cat"], "--phrase does not apply to --task caption"),
    ([CAT, "--task", "ask", "--text", "Why?", "--phrase", "a cat"], "--phrase does not apply to --task ask"),
    ([CAT, "--task", "caption", "--box", "1,2,30,40"], "--box does not apply to --task caption"),
    ([COFFEE, "--task", "ground", "--text", "a cup", "--text", "a spoon"],
     "--text is given more than once; for several phrases repeat --phrase"),
    ([COFFEE, "--task", "ground", "--text", "a cup", "--phrase", "a spoon"], "give --text or --phrase, not both"),
    ([CAT, "--max-new-tokens", "0"], "--max-new-tokens must be between 1 and 512, got 0"),
    ([CAT, "--task", "detect", "--phrase", "a cat", "--candidates", "33"], "--candidates must be between 1 and 32, got 33"),
    ([CAT, "--tiny", "--checkpoint", "somewhere"], "give --tiny or --checkpoint, not both"),
    ([CAT, "--dtype", "float64"], "argument --dtype: invalid choice: 'float64' (choose from 'float32', 'bfloat16', "
                                  "'float16') (see python -m kosmos2 --help)"),
    ([], "the following arguments are required: image (see python -m kosmos2 --help)"),
])
def test_a_flag_that_does_not_apply_or_a_bad_value_is_one_error_line(capsys, argv, message):
    assert _error(capsys, *argv) == message


def _json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_repeated_phrase_flags_ground_each_phrase_as_lines_of_text_do(capsys, tiny_checkpoint):
    common = [COFFEE, "--task", "ground", "--checkpoint", str(tiny_checkpoint), "--max-new-tokens", "4"]
    by_flags = _json(capsys, *common, "--phrase", "a cup", "--phrase", "a spoon")
    by_lines = _json(capsys, *common, "--text", "a cup\na spoon")
    assert by_flags["caption"] == by_lines["caption"] and by_flags["caption"].splitlines()[:2] == ["a cup", "a spoon"]
    assert [e["phrase"] for e in by_flags["entities"]] == [e["phrase"] for e in by_lines["entities"]]


def test_dtype_and_quantize_reach_the_one_image_command(capsys, tiny_checkpoint):
    for flags in (["--dtype", "bfloat16"], ["--quantize", "int8"]):
        result = _json(capsys, CAT, "--checkpoint", str(tiny_checkpoint), "--max-new-tokens", "2", *flags)
        assert result["caption"].startswith("An image of"), flags


def test_label_takes_the_same_phrase_flag(tmp_path):
    args = label_parser().parse_args([str(tmp_path), "--phrase", "a dog", "--phrases", "a cat", "--out", "x.json"])
    assert args.phrases == ["a dog", "a cat"]
