"""Fine-tuning: --init-ckpt onto another label set (the label table, --init-keep-classes, the null-class row),
the generic alignment-weight schedules (--align-weight-schedule linear / cosine, --align-until) against their
closed forms, and a 10-class digits run fine-tuned onto 3 classes that trains and samples."""
import json
import math
import os

import numpy as np
import pytest
import torch

import sample_ddp
import train
from dataset import build_dataset
from loss import align_weight_at
from models import init_from_checkpoint
from models.checkpoint import LABEL_TABLE
from tests.test_checkpoint import tiny
from tests.test_train import TINY


# ---- the label table ---------------------------------------------------------------------------------------

def save_ours(path, student, ema):
    torch.save({"model": student.state_dict(), "ema": ema.state_dict(), "opt": {}, "rng": [], "args": {},
                "steps": 10, "time_convention": "ours"}, path)


@pytest.mark.parametrize("classes,keep", [(3, False), (3, True), (1, False), (12, True), (12, False)])
def test_label_table_onto_another_number_of_classes(tmp_path, classes, keep):
    path = str(tmp_path / "ten.pt")
    student, ema = tiny(1), tiny(2)
    save_ours(path, student, ema)
    new, new_ema = tiny(5, num_classes=classes), tiny(5, num_classes=classes)
    fresh = new.state_dict()[LABEL_TABLE].clone()
    notes = init_from_checkpoint(new, new_ema, path, keep_classes=keep)
    shared = min(classes, 10) if keep else 0
    for got, src in ((new, student), (new_ema, ema)):
        table = got.state_dict()[LABEL_TABLE]
        want = src.state_dict()[LABEL_TABLE]
        assert table.shape == (classes + 1, 128)
        # the null class: the file's row 10 is this run's row `classes`
        assert torch.equal(table[classes], want[10])
        assert torch.equal(table[:shared], want[:shared])
        # everything else is the file's, exactly
        for k, v in src.state_dict().items():
            if k != LABEL_TABLE:
                assert torch.equal(got.state_dict()[k], v), k
    assert torch.equal(new.state_dict()[LABEL_TABLE][shared:classes], fresh[shared:classes])
    (note,) = [n for n in notes if n.startswith(LABEL_TABLE)]
    assert f"the file's 10 classes -> this run's {classes}" in note
    assert f"null-class row (CFG) kept (file row 10 -> row {classes})" in note
    assert ("rows 0..%d kept" % (shared - 1) in note) == keep
    assert ("re-initialised" in note) == (shared < classes)


# ---- alignment-weight schedules ----------------------------------------------------------------------------

def test_align_weight_schedules_against_closed_forms():
    until = 1000
    for s in (0, 1, 250, 500, 999, 1000, 5000):
        lin = 0.5 * (1 - s / until) if s < until else 0.0
        cos = 0.25 * (1 + math.cos(math.pi * s / until)) if s < until else 0.0
        assert align_weight_at("linear", 0.5, 0, s, until) == pytest.approx(lin, abs=1e-15)
        assert align_weight_at("cosine", 0.5, 0, s, until) == pytest.approx(cos, abs=1e-15)
        # a cutoff on the constant weight and on SRA's decay
        assert align_weight_at("constant", 0.5, 7, s, until) == (0.5 if s < until else 0.0)
        sra = 0.2 * 0.1 ** ((400 - 149) / 1000) if s < until else 0.0
        assert align_weight_at("sra-256", 0.2, 400, s, until) == pytest.approx(sra, rel=1e-12)
    assert align_weight_at("cosine", 0.5, 0, 500, 1000) == pytest.approx(0.25, rel=1e-15)
    # no cutoff: the epoch schedules as before
    assert align_weight_at("constant", 0.5, 7, 10 ** 9) == 0.5
    with pytest.raises(ValueError, match="--align-weight-schedule cosine decays to 0 at --align-until"):
        align_weight_at("cosine", 0.5, 0, 0)
    with pytest.raises(ValueError, match="--align-until must be >= 1"):
        align_weight_at("constant", 0.5, 0, 0, 0)


# ---- 10 digits -> 3 digits, end to end ---------------------------------------------------------------------

def run(tmp_path, name, *extra):
    train.main(TINY + ["--output-dir", str(tmp_path), "--exp-name", name, *extra])
    return tmp_path / name


def test_digit_subset_dataset():
    ds = build_dataset("digits:8:7,3")
    assert ds.num_classes == 2 and ds.classes == (7, 3) and set(ds.labels.tolist()) == {0, 1}
    assert len(ds) == int((build_dataset("digits:8").labels == 7).sum() + (build_dataset("digits:8").labels
                                                                                == 3).sum())
    for bad in ("digits:8:3,3", "digits:8:12", "digits:x:1"):
        with pytest.raises(ValueError, match="digits\\[:R\\[:SPLIT\\]\\]\\[:CLASSES\\]"):
            build_dataset(bad)


def test_fine_tune_ten_digit_classes_onto_three_trains_and_samples(tmp_path):
    src = run(tmp_path, "ten", "--max-train-steps", "2", "--checkpoint-steps", "2")
    ckpt = src / "checkpoints" / "0000002.pt"
    dst = run(tmp_path, "three", "--data-dir", "digits:8:0,1,2", "--init-ckpt", str(ckpt),
              "--init-keep-classes", "--max-train-steps", "2", "--checkpoint-steps", "2", "--log-every", "1",
              "--ema-decay", "1", "--align-weight-schedule", "cosine", "--align-until", "1")
    log = open(dst / "log.txt").read()
    assert f"{LABEL_TABLE}: the file's 10 classes -> this run's 3: class rows 0..2 kept" in log
    a = torch.load(ckpt, weights_only=True)
    b = torch.load(dst / "checkpoints" / "0000002.pt", weights_only=True)
    # EMA decay 1: the EMA is the initialisation, the file's rows 0-2 and its null row
    assert torch.equal(b["ema"][LABEL_TABLE], a["ema"][LABEL_TABLE][[0, 1, 2, 10]])
    assert b["args"]["init_keep_classes"] is True and b["args"]["align_until"] == 1
    rows = [json.loads(line) for line in open(dst / "metrics.jsonl")]
    # step 0 aligns with lambda 0.5 (cosine at 0), step 1 is past --align-until 1: the loss is loss_gen
    assert rows[0]["loss"] > rows[0]["loss_gen"] and rows[1]["loss"] == pytest.approx(rows[1]["loss_gen"])
    npz = sample_ddp.main(["--ckpt", str(dst / "checkpoints" / "0000002.pt"), "--num-fid-samples", "4",
                           "--num-steps", "2", "--sample-dir", str(tmp_path / "s"), "--no-progress",
                           "--cfg-scale", "2"])
    z = np.load(npz)
    assert z["arr_0"].shape == (4, 8, 8, 3) and set(z["labels"].tolist()) <= {0, 1, 2}
    assert os.path.isfile(os.path.join(os.path.dirname(npz), "sampling.json"))
