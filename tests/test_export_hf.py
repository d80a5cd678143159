"""python -m models.export CKPT DIR --format hf: the model folder (config.json, model.safetensors, README.md),
SiT.from_pretrained, sample_ddp.py --ckpt DIR and --init-ckpt DIR, bitwise; SiT-convention files converted;
the FID record of the exported weights in the model card."""
import json
import os

import numpy as np
import pytest
import torch

import sample_ddp
from models import SiT, init_from_checkpoint, load_checkpoint, read_checkpoint
from models.checkpoint import CheckpointError, weights_digest
from models.export import main as export_main
from models.hf import export_hf
from tests.test_checkpoint import XTY, release_file, tiny


def save_ours(path, seed=1, **kw):
    student, ema = tiny(seed, **kw), tiny(seed + 1, **kw)
    args = dict(preset="sra2-b2", exp_name="run", data_dir="/data/flowers256", batch_size=64,
                learning_rate=1e-4, ema_decay=0.9999, align_target="sra2", vae="mse")
    torch.save({"model": student.state_dict(), "ema": ema.state_dict(), "opt": {}, "rng": [], "args": args,
                "steps": 1000, "time_convention": "ours"}, path)
    return ema


def test_export_from_pretrained_and_sample_ddp_round_trip_bitwise(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ckpt = str(tmp_path / "run" / "checkpoints" / "0001000.pt")
    ema = save_ours(ckpt, align_head="sra2", z_dim=16)
    out = str(tmp_path / "hf")
    config = export_main([ckpt, out, "--format", "hf"])
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors"]
    on_disk = json.load(open(os.path.join(out, "config.json")))
    assert on_disk == json.loads(json.dumps(config))
    assert (on_disk["model"], on_disk["time_convention"], on_disk["latent_scale"], on_disk["vae"]) == \
        ("SiT-T/2", "ours", 0.18215, "stabilityai/sd-vae-ft-mse")
    assert on_disk["process"]["t_noise"] == 1.0 and on_disk["process"]["null_class"] == 10
    assert (on_disk["align_head"], on_disk["head_depth"], on_disk["steps"]) == ("sra2", 5, 1000)
    model = SiT.from_pretrained(out)
    assert not model.training and model.state_dict().keys() == ema.state_dict().keys()
    for k, v in ema.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # the weights file alone is a single-file export
    assert read_checkpoint(os.path.join(out, "model.safetensors")).source == "export"
    card = open(os.path.join(out, "README.md")).read()
    for text in ("license: other", "| method | SRA 2", "| preset | `sra2-b2` |", "| training steps | 1000",
                 "`/data/flowers256` at 64 px", "No FID record was found", "## License"):
        assert text in card, text
    _, info = load_checkpoint(out)
    assert info["digest"] == config["digest"] and info["source"] == "export"


def test_sample_ddp_reads_a_model_folder_as_its_checkpoint(tmp_path):
    ckpt = str(tmp_path / "0000007.pt")
    save_ours(ckpt, in_channels=1)
    out = str(tmp_path / "hf")
    export_hf(ckpt, out)
    images = []
    for name, path in (("pt", ckpt), ("hf", out)):
        npz = sample_ddp.main(["--ckpt", path, "--num-fid-samples", "3", "--num-steps", "2", "--mode", "sde",
                               "--sample-dir", str(tmp_path / name), "--no-progress", "--cfg-scale", "1.5"])
        images.append(np.load(npz)["arr_0"])
    assert images[0].shape == (3, 8, 8, 3) and np.array_equal(images[0], images[1])
    # --init-ckpt DIR: one set of weights for the student and the EMA
    new, new_ema = tiny(9, in_channels=1), tiny(9, in_channels=1)
    notes = init_from_checkpoint(new, new_ema, out)
    assert "an exported EMA" in notes[0]
    assert torch.equal(new.blocks[0].attn.qkv.weight, new_ema.blocks[0].attn.qkv.weight)


def test_a_sit_convention_file_is_converted_and_a_plain_save_pretrained_reads(tmp_path):
    sit = tiny(3, learn_sigma=True)
    path = str(tmp_path / "SiT-T-2.pt")
    torch.save(sit.state_dict(), path)
    with pytest.raises(CheckpointError, match="pass --time-convention sit or repa"):
        export_hf(path, str(tmp_path / "no"))
    config = export_hf(path, str(tmp_path / "hf"), time_convention="sit")
    assert config["time_convention"] == "ours" and config["converted_from"] == "sit"
    model = SiT.from_pretrained(str(tmp_path / "hf"))
    x, t, y = XTY
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), -sit(x, 1 - t, y), atol=1e-5, rtol=1e-5)
    assert "from SiT's time convention" in open(tmp_path / "hf" / "README.md").read()
    # PyTorchModelHubMixin's own save: the constructor's arguments only, so no time convention
    sit.save_pretrained(str(tmp_path / "plain"))
    again = SiT.from_pretrained(str(tmp_path / "plain"))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in sit.state_dict().items())
    with pytest.raises(CheckpointError, match="does not say its time convention"):
        load_checkpoint(str(tmp_path / "plain"))
    _, info = load_checkpoint(str(tmp_path / "plain"), time_convention="sit")
    assert info["time_convention"] == "sit"


def test_the_card_names_the_fid_record_of_these_weights(tmp_path):
    ckpt = str(tmp_path / "0001000.pt")
    save_ours(ckpt)
    sha = weights_digest(read_checkpoint(ckpt).state_dict("ema"))
    settings = dict(mode="sde", heun=False, num_steps=250, cfg_scale=1.8, guidance_low=0.0, guidance_high=0.7,
                    cfg_channels="all")
    for name, weights in (("mine", sha), ("other", "0" * 64)):
        folder = tmp_path / "results" / name
        folder.mkdir(parents=True)
        json.dump(dict(settings=settings, weights_digest=weights), open(folder / "sampling.json", "w"))
        json.dump(dict(fid=2.5 if name == "mine" else 9.9, num_samples=50000, samples=str(folder / "s.npz"),
                       metrics={"FID": 2.5 if name == "mine" else 9.9, "IS": 250.0}),
                  open(folder / "samples_50000_eval.json", "w"))
    config = export_hf(ckpt, str(tmp_path / "hf"), records=(str(tmp_path / "results"),))
    assert [r["metrics"]["FID"] for r in config["evaluation"]] == [2.5]
    card = open(tmp_path / "hf" / "README.md").read()
    row = "| ADM evaluator | FID 2.5, IS 250 | 50000 | Euler-Maruyama SDE, 250 steps, CFG 1.8 on channels all"
    assert row + " for t in [0, 0.7] |" in card
    # an export goes to a model folder or a new one, never over other files
    with pytest.raises(CheckpointError, match="exists and is not an earlier model folder"):
        export_hf(ckpt, str(tmp_path / "results"))
    export_hf(ckpt, str(tmp_path / "hf"))


def test_release_files_export_too(tmp_path):
    path = str(tmp_path / "repa.pt")
    _, ema = release_file(path, "repa")
    config = export_hf(path, str(tmp_path / "hf"))
    assert config["source"] == "repa" and config["align_head"] == "projector"
    model = SiT.from_pretrained(str(tmp_path / "hf"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.state_dict().items())
