"""--report-to: every tracker accelerate supports (and all / none), a clear stop when one is not installed;
the warning when accelerate launch's mixed precision and --mixed-precision differ."""
import accelerate.tracking
import pytest

import train
from infra import tracking
from tests.test_train import TINY


def installed() -> list[str]:
    return [str(getattr(t, "value", t)) for t in accelerate.tracking.get_available_trackers()]


def test_report_to_takes_every_tracker_accelerate_supports():
    from accelerate.utils import LoggerType

    every = [t.value for t in LoggerType if t.value != "all"]
    assert sorted(tracking.supported_trackers()) == sorted(every)
    assert {"tensorboard", "wandb", "comet_ml", "mlflow", "aim", "clearml", "dvclive"} <= set(every)
    for name in ["none", "all", *every]:
        assert train.parse_args(["--report-to", name]).report_to == name
    assert tracking.report_to_trackers("none") == []
    assert tracking.report_to_trackers("all") == installed()
    for name in installed():
        assert tracking.report_to_trackers(name) == [name]


def test_a_missing_tracker_is_named_with_its_package(monkeypatch, capsys):
    missing = [t for t in tracking.supported_trackers() if t not in installed()]
    if not missing:
        pytest.skip("every tracker accelerate supports is installed here")
    name = "comet_ml" if "comet_ml" in missing else missing[0]
    package = "comet-ml" if name == "comet_ml" else name
    with pytest.raises(SystemExit, match=rf"--report-to {name}: the package is not installed \(pip install "
                       rf"{package}\); installed trackers: "):
        tracking.report_to_trackers(name)
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    assert tracking.report_to_trackers("all") == []
    assert "--report-to all: none of accelerate's trackers is installed" in capsys.readouterr().out


def test_launcher_precision_that_differs_is_said_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    train.main(TINY + ["--output-dir", str(tmp_path), "--exp-name", "mp", "--max-train-steps", "1",
                       "--checkpoint-steps", "1"])
    log = open(tmp_path / "mp" / "log.txt").read()
    line = ("accelerate launch's mixed precision is bf16 (its --mixed_precision or its config's default) "
            "but --mixed-precision is no: the run trains in no, train.py's flag")
    assert log.count(line) == 1
