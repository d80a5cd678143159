"""models/checkpoint.py and models/export.py on stand-ins: the releases' training files (args an
argparse.Namespace, their key layouts), bare state dicts, exports, and every broken input, each answered in
one line."""
import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from models import SiT_models, init_from_checkpoint, load_checkpoint, read_checkpoint, read_training_state
from models.checkpoint import CheckpointError, sit_to_ours
from models.export import export, main as export_main
from models.sit import sincos_pos_embed_2d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(seed=0, **kw):
    """SiT-T/2 on 8x8x4 latents (a 64 px 'resolution'), every weight random (SiT's init zeroes the output)."""
    torch.manual_seed(seed)
    m = SiT_models["SiT-T/2"](**{"input_size": 8, "in_channels": 4, "num_classes": 10, **kw}).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    return m


def adamw_state(m):
    """A real AdamW state dict after one step (what the releases save under 'opt')."""
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return opt.state_dict()


# The releases' argparse fields (REPA train.py; SRA SiT-SRA_DTS_AS/arguments.py; SiT train.py, train_utils.py)
def repa_args(**kw):
    a = dict(output_dir="exps", exp_name="linear-dinov2-b-enc4", logging_dir="logs", report_to="wandb",
             sampling_steps=10000, resume_step=0, model="SiT-T/2", num_classes=10, encoder_depth=4,
             fused_attn=True, qk_norm=False, data_dir="../data/imagenet256", resolution=64, batch_size=256,
             allow_tf32=True, mixed_precision="fp16", epochs=1400, max_train_steps=400000,
             checkpointing_steps=50000, gradient_accumulation_steps=1, learning_rate=1e-4, adam_beta1=0.9,
             adam_beta2=0.999, adam_weight_decay=0.0, adam_epsilon=1e-8, max_grad_norm=1.0, seed=0,
             num_workers=4, path_type="linear", prediction="v", cfg_prob=0.1, enc_type="dinov2-vit-b",
             proj_coeff=0.5, weighting="uniform", legacy=False)
    return argparse.Namespace(**{**a, **kw})


def sra_args(**kw):
    a = dict(output_dir="exps", exp_name="sitb-maskr0.25-as-dts-res256", logging_dir="logs", resume_ckpt=None,
             sample_steps=50000, epochs=801, checkpoint_steps=100000, checkpoint_epochs=200,
             max_train_steps=4100000, model="SiT-T/2", num_classes=10, fused_attn=True, qk_norm=False,
             attention_separation=True, data_dir="../data/imagenet256", resolution=64, batch_size=256,
             mixed_precision="fp16", gradient_accumulation_steps=1, learning_rate=1e-4, adam_beta1=0.9,
             adam_beta2=0.999, adam_weight_decay=0.0, adam_epsilon=1e-8, max_grad_norm=1.0, seed=0,
             num_workers=16, loss_type="cos", cfg_prob=0.1, path_type="linear", prediction="v",
             weighting="uniform", block_out_s=3, block_out_t=8, mask_ratio=[0.25], use_alignment_loss=True,
             align_weight=0.5, teacher_t="sra", teacher_mask=True, dual_time_scheduling=True,
             full_sample_prob=0.0)
    return argparse.Namespace(**{**a, **kw})


def sit_args(**kw):
    a = dict(data_path="/data/imagenet/train", results_dir="results", model="SiT-T/2", image_size=64,
             num_classes=10, epochs=1400, global_batch_size=256, global_seed=0, vae="ema", num_workers=4,
             log_every=100, ckpt_every=50000, sample_every=10000, cfg_scale=4.0, wandb=False, ckpt=None,
             path_type="Linear", prediction="velocity", loss_weight=None, sample_eps=None, train_eps=None)
    return argparse.Namespace(**{**a, **kw})


def release_file(path, kind, **arg_kw):
    """A training file as REPA / SRA / SiT save it; -> (student, ema) modules."""
    head = {"repa": dict(align_head="projector", z_dim=16), "sra": dict(align_head="ap_head"),
            "sit": dict(learn_sigma=True)}[kind]
    model, ema = tiny(1, **head), tiny(2, **head)
    args = {"repa": repa_args, "sra": sra_args, "sit": sit_args}[kind](**arg_kw)
    state = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": adamw_state(tiny(1, **head)),
             "args": args}
    if kind != "sit":
        state["steps"] = 4000
    if kind == "sra":
        state["epoch"] = 3
    torch.save(state, path)
    return model, ema


XTY = (torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0.3, 0.8]),
       torch.tensor([1, 2]))


@pytest.mark.parametrize("kind,convention,source", [("repa", "repa", "repa"), ("sra", "repa", "sra"),
                                                    ("sit", "sit", "sit")])
def test_release_training_files_load_with_their_settings(tmp_path, kind, convention, source):
    path = str(tmp_path / f"{kind}.pt")
    _, ema = release_file(path, kind, path_type={"sit": "GVP"}.get(kind, "cosine"))
    # what torch alone does with them
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(path, weights_only=True)
    # no --time-convention needed
    model, info = load_checkpoint(path)
    assert info["time_convention"] == convention and info["source"] == source
    assert info["model_name"] == "SiT-T/2" and info["num_classes"] == 10 and info["resolution"] == 64
    assert info["path_type"] == "cosine" and info["patch_size"] == 2 and info["qk_norm"] is False
    assert info["learn_sigma"] == (kind == "sit") and info["steps"] == (None if kind == "sit" else 4000)
    assert isinstance(info["args"], dict) and info["args"]["model"] == "SiT-T/2"
    x, t, y = XTY
    with torch.no_grad():
        want = -ema(x, 1 - t, y) if kind == "sit" else ema(x, t, y)
        torch.testing.assert_close(model(x, t, y), want)
    message = f"holds time convention {convention} but --time-convention is ours"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path, time_convention="ours")


def test_parameters_are_the_memory_mapped_ema(tmp_path):
    """Only the EMA is materialised: the model's parameters are the file's mapped tensors, not copies."""
    path = str(tmp_path / "repa.pt")
    release_file(path, "repa")
    model, _ = load_checkpoint(path)
    # address ranges mapped from the file
    with open("/proc/self/maps") as f:
        ranges = [[int(a, 16) for a in line.split()[0].split("-")]
                  for line in f if line.rstrip().endswith(path)]
    assert ranges and all(any(lo <= p.data_ptr() < hi for lo, hi in ranges) for p in model.parameters())


class NotAllowed:
    """Unpickling this would create a file: the reader must refuse it without running anything."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_other_pickled_objects_are_refused_without_running_them(tmp_path):
    marker = str(tmp_path / "ran")
    path = str(tmp_path / "evil.pt")
    torch.save({"model": tiny().state_dict(), "ema": tiny().state_dict(), "args": NotAllowed(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil.pt: refused to unpickle an object of type io.open") as e:
        read_checkpoint(path)
    assert "\n" not in str(e.value) and not os.path.exists(marker)
    args = argparse.Namespace(data=__import__("pathlib").Path("x"))
    torch.save({"ema": tiny().state_dict(), "args": args}, path)
    with pytest.raises(CheckpointError, match=r"refused to unpickle an object of type pathlib\S*PosixPath"):
        read_checkpoint(path)


def broken_inputs(tmp_path):
    """(name, path, expected message part) for every way a file can be unusable."""
    good = str(tmp_path / "good.pt")
    release_file(good, "repa")
    data = open(good, "rb").read()
    cases = {"missing": (str(tmp_path / "nope.pt"), "no such checkpoint"),
             "folder": (str(tmp_path), "is a folder"),
             "empty": ("empty.pt", "empty"),
             "truncated": ("half.pt", "truncated or corrupt"),
             "random bytes": ("random.pt", "not a PyTorch or safetensors file"),
             "random pickle bytes": ("pickle.pt", "cannot read this checkpoint"),
             "a list": ("list.pt", "holds a list"),
             "a tensor": ("tensor.pt", "holds a Tensor"),
             "not a SiT": ("other.pt", "not a SiT state dict"),
             "ema not a state dict": ("bad-ema.pt", "'ema' entry is a str"),
             "non-finite EMA": ("nan.pt",
                                r"\['ema'\] holds non-finite values in 1 tensor\(s\) \(blocks.0.mlp.fc1"),
             "truncated safetensors": ("half.safetensors", "cannot read this checkpoint"),
             "an npz": ("arrays.pt", "a zip archive but not a torch.save file"),
             "wrong model for its args": ("lying.pt", "its args say model 'SiT-B/2'"),
             "wrong resolution for its args": ("res.pt", "its args say resolution 256")}
    rng = torch.Generator().manual_seed(0)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    noise = bytes(torch.randint(0, 256, (8192,), generator=rng).tolist())
    (tmp_path / "random.pt").write_bytes(noise[:4096].replace(b"\x80", b"\x81").replace(b"PK", b"QK"))
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x02" + noise[4096:])
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    torch.save({"w": torch.ones(3)}, tmp_path / "other.pt")
    torch.save({"ema": "weights"}, tmp_path / "bad-ema.pt")
    sd = tiny().state_dict()
    sd["blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    torch.save({"model": tiny().state_dict(), "ema": sd, "args": repa_args()}, tmp_path / "nan.pt")
    export(good, str(tmp_path / "full.safetensors"))
    with open(tmp_path / "arrays.pt", "wb") as f:
        __import__("numpy").savez(f, a=[1.0])
    st = open(tmp_path / "full.safetensors", "rb").read()
    (tmp_path / "half.safetensors").write_bytes(st[: len(st) // 2])
    release_file(str(tmp_path / "lying.pt"), "repa", model="SiT-B/2")
    release_file(str(tmp_path / "res.pt"), "sra", resolution=256)
    return {k: (p if os.path.isabs(p) else str(tmp_path / p), m) for k, (p, m) in cases.items()}


def test_every_broken_file_is_one_line_naming_it(tmp_path):
    for name, (path, part) in broken_inputs(tmp_path).items():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        msg = str(e.value)
        assert "\n" not in msg and path in msg, (name, msg)
        assert __import__("re").search(part, msg), (name, msg)


def test_sample_ddp_and_export_cli_answer_in_one_line(tmp_path):
    (tmp_path / "random.pt").write_bytes(b"\x00garbage" * 100)
    expected = "random.pt: cannot read this checkpoint: not a PyTorch or safetensors file"
    r = subprocess.run([sys.executable, "sample_ddp.py", "--ckpt", str(tmp_path / "random.pt")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert expected in line
    with pytest.raises(SystemExit) as e:
        export_main([str(tmp_path / "random.pt"), str(tmp_path / "o.safetensors")])
    assert expected in str(e.value.code) and "\n" not in str(e.value.code)
    assert not (tmp_path / "o.safetensors").exists()


def test_flags_that_contradict_the_file(tmp_path):
    path = str(tmp_path / "repa.pt")
    release_file(path, "repa")
    for flags, message in ((dict(path_type="cosine"), "holds path type linear but --path-type is cosine"),
                           (dict(model_name="SiT-B/2"), "holds a SiT-T/2 but --model is SiT-B/2"),
                           (dict(num_classes=1000), "holds num classes 10 but --num-classes is 1000"),
                           (dict(resolution=256), "holds resolution 64 but --resolution is 256"),
                           (dict(qk_norm=True), "holds qk norm False but --qk-norm is True")):
        with pytest.raises(CheckpointError, match=f"repa.pt {message}"):
            load_checkpoint(path, **flags)
    _, info = load_checkpoint(path, path_type="linear", model_name="SiT-T/2", num_classes=10, resolution=64)
    assert info["path_type"] == "linear"


def test_bare_state_dicts_still_need_the_time_convention(tmp_path):
    path = str(tmp_path / "last.pt")
    torch.save(tiny(align_head="projector", z_dim=16).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"last.pt is a bare state dict .* pass --time-convention sit"):
        load_checkpoint(path)
    _, info = load_checkpoint(path, time_convention="repa")
    assert info["time_convention"] == "repa" and info["path_type"] is None and info["source"] == "state dict"
    from safetensors.torch import save_file
    # a third-party safetensors file: no settings in its metadata
    save_file(tiny().state_dict(), str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.safetensors is a bare state dict .* --time-convention"):
        load_checkpoint(str(tmp_path / "model.safetensors"))
    legacy = str(tmp_path / "legacy.pt")
    torch.save(tiny().state_dict(), legacy, _use_new_zipfile_serialization=False)
    model, _ = load_checkpoint(legacy, time_convention="repa")
    assert torch.equal(model.pos_embed, tiny().pos_embed)


def test_sample_ddp_runs_a_repa_training_file_as_is(tmp_path):
    """REPA's {model, ema, opt, args (Namespace), steps}: sampled without --time-convention (a traceback
    before)."""
    import numpy as np
    import sample_ddp

    model = tiny(1, in_channels=1, align_head="projector", z_dim=16)
    path = str(tmp_path / "0400000.pt")
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "opt": adamw_state(model),
                "args": repa_args(), "steps": 400000}, path)
    npz = sample_ddp.main(["--ckpt", path, "--num-fid-samples", "2", "--num-steps", "2", "--mode", "ode",
                           "--sample-dir", str(tmp_path / "s"), "--no-progress"])
    assert np.load(npz)["arr_0"].shape == (2, 8, 8, 3)
    record = json.load(open(os.path.join(os.path.dirname(npz), "sampling.json")))
    assert record["settings"]["time_convention"] == "repa" and record["settings"]["steps"] == 400000


def test_export_writes_the_ema_alone_with_its_settings(tmp_path):
    src, out = str(tmp_path / "sra.pt"), str(tmp_path / "sra.safetensors")
    student, ema = release_file(src, "sra")
    export_main([src, out])
    from safetensors import safe_open
    with safe_open(out, framework="pt") as f:
        keys, meta = set(f.keys()), json.loads(f.metadata()["sit_settings"])
        assert all(torch.equal(f.get_tensor(k), v) for k, v in ema.state_dict().items())
    assert keys == set(ema.state_dict())
    assert meta["model"] == "SiT-T/2" and meta["time_convention"] == "repa" and meta["steps"] == 4000
    assert meta["source"] == "sra" and meta["args"]["block_out_s"] == 3 and meta["path_type"] == "linear"
    # no student, no AdamW moments
    assert os.path.getsize(out) < os.path.getsize(src) / 3
    m_pt, info_pt = load_checkpoint(src)
    m_st, info_st = load_checkpoint(out)
    assert info_st["digest"] == info_pt["digest"] and info_st["steps"] == 4000
    keys = ("model_name", "num_classes", "resolution", "path_type", "time_convention")
    assert {k: info_st[k] for k in keys} == {k: info_pt[k] for k in keys}
    x, t, y = XTY
    with torch.no_grad():
        torch.testing.assert_close(m_st(x, t, y), m_pt(x, t, y), rtol=0, atol=0)
    bare = str(tmp_path / "bare.pt")
    torch.save(ema.state_dict(), bare)
    with pytest.raises(SystemExit, match="bare.pt is a bare state dict.*--time-convention"):
        export_main([bare, str(tmp_path / "bare.safetensors")])
    assert not os.path.exists(tmp_path / "bare.safetensors")
    assert export(bare, str(tmp_path / "bare.safetensors"), "sit")["time_convention"] == "sit"


# ---- --init-ckpt -------------------------------------------------------------------------------------------

def test_init_from_our_file_and_a_256_to_512_warm_start(tmp_path):
    path = str(tmp_path / "0001000.pt")
    student, ema = tiny(1), tiny(2)
    torch.save({"model": student.state_dict(), "ema": ema.state_dict(), "opt": {}, "rng": [], "args": {},
                "steps": 1000, "time_convention": "ours"}, path)
    new, new_ema = tiny(5), tiny(5)
    init_from_checkpoint(new, new_ema, path)
    for a, b in ((new, student), (new_ema, ema)):
        assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    # twice the latent side
    big, big_ema = tiny(5, input_size=16), tiny(5, input_size=16)
    notes = init_from_checkpoint(big, big_ema, path)
    rebuilt = "pos_embed: sin-cos table rebuilt for a 8x8 token grid (the file's is 4x4)"
    assert any(rebuilt in n for n in notes)
    torch.testing.assert_close(big.pos_embed, torch.from_numpy(sincos_pos_embed_2d(128, 8))[None])
    for k, v in student.state_dict().items():
        if k != "pos_embed":
            assert torch.equal(big.state_dict()[k], v), k


def test_init_heads_added_or_dropped_are_listed(tmp_path):
    path = str(tmp_path / "repa.pt")
    student, _ = release_file(path, "repa")
    new, new_ema = tiny(5, align_head="ap_head"), tiny(5, align_head="ap_head")
    fresh = {k: v.clone() for k, v in new.state_dict().items() if k.startswith("ap_head.")}
    notes = init_from_checkpoint(new, new_ema, path)
    assert any(n.startswith("alignment head dropped (not in this run): projectors.0.0.bias") for n in notes)
    assert any("alignment head freshly initialised" in n and "ap_head.linear1.weight" in n for n in notes)
    assert all(torch.equal(new.state_dict()[k], v) for k, v in fresh.items())
    assert torch.equal(new.blocks[0].attn.qkv.weight, student.blocks[0].attn.qkv.weight)
    message = r"repa.pt \['model'\] does not match the model: shape mismatches"
    with pytest.raises(CheckpointError, match=message):
        init_from_checkpoint(tiny(in_channels=3), tiny(in_channels=3), path)


def test_init_from_a_public_sit_state_dict_converts_the_time_convention(tmp_path):
    sit = tiny(3, learn_sigma=True)
    path = str(tmp_path / "SiT-T-2.pt")
    torch.save(sit.state_dict(), path)
    new, new_ema = tiny(5), tiny(5)
    with pytest.raises(CheckpointError, match="pass --init-time-convention sit"):
        init_from_checkpoint(new, new_ema, path)
    notes = init_from_checkpoint(new, new_ema, path, "sit")
    assert any("learned-sigma half" in n for n in notes)
    assert any("v(x, t) = -v_sit(x, 1 - t)" in n for n in notes)
    x, t, y = XTY
    with torch.no_grad():
        torch.testing.assert_close(new(x, t, y), -sit(x, 1 - t, y), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(new_ema(x, t, y), -sit(x, 1 - t, y), atol=1e-5, rtol=1e-5)
    flipped = sit_to_ours(sit.state_dict())
    assert torch.equal(flipped["final_layer.linear.bias"], -sit.final_layer.linear.bias)


def test_resume_needs_one_of_our_training_files(tmp_path):
    repa = str(tmp_path / "0400000.pt")
    release_file(repa, "repa")
    message = (r"0400000.pt is a REPA training checkpoint with ema and model weights, not a resumable .* "
               r"lacks rng\): .*--init-ckpt .*0400000.pt")
    with pytest.raises(CheckpointError, match=message):
        read_training_state(repa)
    out = str(tmp_path / "e.safetensors")
    export(repa, out)
    with pytest.raises(CheckpointError, match=r"an exported EMA .* lacks model, opt, rng\): .*--init-ckpt"):
        read_training_state(out)
    m = tiny()
    sd = m.state_dict()
    torch.save(sd, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match=r"bare.pt is a bare state dict .* lacks model, opt, rng"):
        read_training_state(str(tmp_path / "bare.pt"))
    torch.save({"ema": sd, "steps": 5, "time_convention": "ours"}, tmp_path / "ema-only.pt")
    message = r"ema-only.pt is a training checkpoint of this codebase with ema weights, .* lacks model, opt"
    with pytest.raises(CheckpointError, match=message):
        read_training_state(str(tmp_path / "ema-only.pt"))
    opt = adamw_state(m)
    opt["state"][0]["exp_avg_sq"][0] = float("inf")
    torch.save({"model": sd, "ema": sd, "opt": opt, "rng": [], "steps": 1, "time_convention": "ours"},
               tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match=r"inf.pt \['opt'\] holds non-finite values"):
        read_training_state(str(tmp_path / "inf.pt"))


# ---- the scripts: train.py --init-ckpt / --resume, sample_ddp.py -------------------------------------------

def test_train_init_ckpt_and_resume_reads(tmp_path):
    import train
    from tests.test_train import TINY

    def run(name, *extra):
        train.main(TINY + ["--output-dir", str(tmp_path), "--exp-name", name, *extra])
        return tmp_path / name

    src = run("src", "--max-train-steps", "2", "--checkpoint-steps", "2") / "checkpoints" / "0000002.pt"
    init = ["--init-ckpt", str(src)]
    dst = run("dst", "--max-train-steps", "1", "--checkpoint-steps", "1", *init, "--ema-decay", "1")
    a = torch.load(src, weights_only=True)
    b = torch.load(dst / "checkpoints" / "0000001.pt", weights_only=True)
    assert b["steps"] == 1 and b["args"]["init_ckpt"] == str(src)
    # a fresh optimizer
    assert all(int(s["step"]) == 1 for s in b["opt"]["state"].values())
    # EMA from the file (decay 1 keeps it)
    assert all(torch.equal(b["ema"][k], v) for k, v in a["ema"].items())
    assert f"--init-ckpt {src}: a training checkpoint of this codebase" in open(dst / "log.txt").read()
    run("dst", "--max-train-steps", "2", "--checkpoint-steps", "1", *init, "--resume", "auto")
    assert "not used: resuming from" in open(dst / "log.txt").read()
    repa = tmp_path / "0400000.pt"
    release_file(str(repa), "repa")
    message = r"--resume: .*0400000.pt is a REPA training checkpoint .*--init-ckpt"
    with pytest.raises(SystemExit, match=message):
        run("r", "--max-train-steps", "1", "--resume", str(repa))
    with pytest.raises(SystemExit, match=r"--init-ckpt: .*0400000.pt \['model'\] does not match the model"):
        run("r", "--max-train-steps", "1", "--init-ckpt", str(repa))
    bad = torch.load(src, weights_only=True)
    bad["model"]["pos_embed"][0, 0, 0] = float("nan")
    torch.save(bad, tmp_path / "nan.pt")
    message = r"--resume: .*nan.pt \['model'\] holds non-finite values .*pos_embed"
    with pytest.raises(SystemExit, match=message):
        run("r", "--max-train-steps", "1", "--resume", str(tmp_path / "nan.pt"))


def test_sample_folder_belongs_to_one_checkpoints_weights(tmp_path):
    import numpy as np
    import sample_ddp
    from tests.test_sample_ddp import tiny_state_dict

    path = str(tmp_path / "0000123.pt")
    argv = ["--ckpt", path, "--num-fid-samples", "2", "--num-steps", "2", "--sample-dir", str(tmp_path / "s"),
            "--no-progress", "--mode", "ode"]

    def save(seed, sd=None):
        torch.save({"ema": sd or tiny_state_dict(seed=seed), "steps": 123, "time_convention": "ours"}, path)

    save(0)
    npz = sample_ddp.main(argv)
    assert json.load(open(os.path.join(os.path.dirname(npz), "sampling.json")))["weights_digest"]
    # same name and step, other weights
    save(1)
    message = r"sampling.json holds samples of .*0000123.pt \(weights sha256 \w+\) but --ckpt .*0000123.pt"
    with pytest.raises(ValueError, match=message + " has other weights"):
        sample_ddp.main(argv)
    os.remove(os.path.join(os.path.dirname(npz), "sampling.json"))
    with pytest.raises(ValueError, match="holds 2 images but no sampling.json"):
        sample_ddp.main(argv)
    sd = tiny_state_dict()
    sd["final_layer.linear.bias"][0] = float("inf")
    save(0, sd)
    message = r"0000123.pt \['ema'\] holds non-finite values .*final_layer.linear.bias"
    with pytest.raises(ValueError, match=message):
        sample_ddp.main(argv[:-2] + ["--sample-dir", str(tmp_path / "t")])
    assert not os.path.exists(tmp_path / "t")
    assert np.load(npz)["arr_0"].shape == (2, 8, 8, 3)
