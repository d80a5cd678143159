"""Every numeric flag of train.py has a range (train.RANGES), and every value outside it, NaN and infinities
included, is refused at start in one line naming the flag: enumerated from the parser, so a new numeric flag
without a range fails here."""
import contextlib
import io
import math

import pytest

import train

# the release's / REPA's spellings land on our dests (infra/flags.py); --resume-step becomes a path
ALIASES = {"alias__checkpoint_steps": "checkpoint_steps", "alias__sample_steps": "sample_steps",
           "alias__align_weight": "align_weight", "alias__block_out_s": "block_out_s",
           "alias__class_dropout_prob": "class_dropout_prob"}


def numeric_flags():
    """(spelling, dest whose range applies, type) for every numeric flag of the parser."""
    out = []
    for action in train.build_parser()._actions:
        kind = "list" if action.dest == "mask_ratio" else action.type
        if kind in (int, float, "list") and action.option_strings:
            out.append((action.option_strings[0], ALIASES.get(action.dest, action.dest), kind))
    return out


def bad_values(interval: str, kind) -> list[str]:
    """Values just outside `interval`, and NaN / infinities for float flags."""
    low, high = (float(v) for v in interval[1:-1].split(","))
    values = [low - 1, *([low] if interval[0] == "(" else [])]
    if math.isfinite(high):
        values += [high + 1, *([high] if interval[-1] == ")" else [])]
    out = [repr(int(v)) if kind is int else repr(v) for v in values]
    if kind is not int:
        out += ["nan", *(["inf"] if interval[-1] == ")" else []), "-inf"]
    return out


def test_every_numeric_flag_has_a_range():
    missing = [(flag, dest) for flag, dest, _ in numeric_flags()
               if dest not in train.RANGES and dest not in ("seed", "alias__resume_step")]
    assert not missing
    assert len(numeric_flags()) >= 40


CASES = [(flag, value, dest) for flag, dest, kind in numeric_flags() if dest in train.RANGES
         for value in bad_values(train.RANGES[dest], kind)]
CASES += [("--seed", "-1", "seed"), ("--seed", str(2 ** 32), "seed"), ("--resume-step", "-5", "")]


@pytest.mark.parametrize("flag,value,dest", CASES, ids=[f"{f}={v}" for f, v, _ in CASES])
def test_a_value_outside_the_range_is_refused_in_one_line(flag, value, dest, tmp_path):
    """Named by its own spelling or, for a release / REPA spelling, by ours (the flag it became)."""
    err = io.StringIO()
    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(err):
        train.main(["--output-dir", str(tmp_path), "--max-train-steps", "1", f"{flag}={value}"])
    message = e.value.code if isinstance(e.value.code, str) else err.getvalue()
    ours = "--" + dest.replace("_", "-")
    assert (flag in message or ours in message) and "\n" not in message.strip(), message
    # refused before a run folder holds anything
    assert not list(tmp_path.rglob("*.pt"))


@pytest.mark.parametrize("interval,inside,outside", [
    ("[0, 1)", [0, 0.5, 0.999], [1, -1e-9, math.nan, math.inf]),
    ("(0, inf]", [1e-30, 1, math.inf], [0, -1, math.nan]),
    ("[1, inf)", [1, 10 ** 12], [0, math.inf, math.nan]),
])
def test_out_of_range_against_the_interval_notation(interval, inside, outside):
    assert all(train.out_of_range("--x", v, interval) == "" for v in inside)
    assert all(train.out_of_range("--x", v, interval).startswith("--x must lie in") for v in outside)


@pytest.mark.parametrize("value", ["[0.5,0.3", "0.5,0.3]", "[]", "[0.5,,0.3]]"])
def test_an_unclosed_mask_ratio_list_is_refused(value, tmp_path):
    err = io.StringIO()
    with pytest.raises(SystemExit), contextlib.redirect_stderr(err):
        train.main(["--output-dir", str(tmp_path), "--mask-ratio", value])
    assert "--mask-ratio" in err.getvalue()


@pytest.mark.parametrize("name", ["", ".", "..", "../elsewhere", "/abs"])
def test_an_exp_name_outside_the_output_dir_is_refused(name, tmp_path):
    with pytest.raises(SystemExit, match="--exp-name must name a folder inside --output-dir"):
        train.main(["--output-dir", str(tmp_path / "runs"), "--exp-name", name, "--max-train-steps", "1"])
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
