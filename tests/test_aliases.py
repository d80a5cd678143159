"""The published command lines of the SRA release and REPA, replayed through --print-config (flags.py).

Anchors (flags and values copied from the files, the launcher part dropped):
    vvvvvjdy/SRA @ 1723f85, SiT-SRA_DTS_AS/scripts/train.sh and SiT-SRA_DTS_AS/scripts/gen.sh
    sihyun-yu/REPA @ 67f7145, README.md: the ImageNet 256 and 512 `accelerate launch train.py` commands and
        the `torchrun --nnodes=1 --nproc_per_node=8 generate.py` command
Their placeholders ([YOUR_DATA_PATH], YOUR_CHECKPOINT_PATH, ...) stay as they are: --print-config reads
neither data nor weights, so the paths need not exist.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from test_train import teacher_mask_of

import train
from dataset import EpochOrder
from infra import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RELEASE_TRAIN = [
    "--mixed-precision", "fp16", "--seed", "0", "--path-type", "linear", "--prediction", "v", "--weighting",
    "uniform", "--resolution", "256", "--batch-size", "256", "--gradient-accumulation-steps", "1",
    "--learning-rate", "1e-4", "--model", "SiT-B/2", "--block-out-s", "3", "--block-out-t", "8",
    "--mask-ratio", "0.25", "--dual-time-scheduling", "--attention-separation", "--teacher-mask",
    "--teacher-t", "sra", "--use-alignment-loss", "--align-weight", "0.5", "--loss-type", "cos",
    "--sample-steps", "50000", "--checkpoint-steps", "100000", "--checkpoint-epochs", "200", "--epochs",
    "801", "--max-train-steps", "4100000", "--output-dir", "exps", "--exp-name",
    "sitb-maskr0.25-as-dts-res256", "--data-dir", "[YOUR_DATA_PATH]"]
RELEASE_GEN = [
    "--num-fid-samples", "50000", "--path-type", "linear", "--per-proc-batch-size", "64", "--mode", "sde",
    "--num-steps", "250", "--cfg-scale", "1.0", "--guidance-high", "0.7", "--sample-dir",
    "[YOUR_SAMPLE_DIR]/images", "--model", "SiT-B/2", "--ckpt", "[YOUR_CKPT_PATH]", "--vae", "ema",
    "--resolution", "256", "--global-seed", "0", "--attention-separation", "--use-alignment-loss"]
REPA_TRAIN = [
    '--report-to=wandb', "--allow-tf32", '--mixed-precision=fp16', "--seed=0", '--path-type=linear',
    '--prediction=v', '--weighting=uniform', '--model=SiT-XL/2', '--enc-type=dinov2-vit-b',
    "--proj-coeff=0.5", "--encoder-depth=8", '--output-dir=exps', '--exp-name=linear-dinov2-b-enc8',
    "--data-dir=[YOUR_DATA_PATH]"]
REPA_TRAIN_512 = REPA_TRAIN[:-2] + ['--exp-name=linear-dinov2-b-enc8-in512', "--resolution=512",
                                    "--data-dir=[YOUR_DATA_PATH]"]
# vvvvvjdy/SRA @ 1723f85, README.md 5.1 "Training with SiT + SRA" (cd SiT-SRA; accelerate launch with its
# 8-GPU configs/default.yaml)
SIT_SRA_TRAIN = [
    '--mixed-precision=fp16', "--seed=0", '--path-type=linear', '--prediction=v', "--resolution=256",
    "--batch-size=32", '--weighting=uniform', '--model=SiT-XL/2', "--block-out-s=8", "--block-out-t=20",
    "--t-max=0.2", '--output-dir=exps', '--exp-name=sitxl-ab820-t0.2-res256', "--data-dir=[YOUR_DATA_PATH]"]
REPA_GENERATE = [
    "--model", "SiT-XL/2", "--num-fid-samples", "50000", "--ckpt", "YOUR_CHECKPOINT_PATH",
    "--path-type=linear", "--encoder-depth=8", "--projector-embed-dims=768", "--per-proc-batch-size=64",
    "--mode=sde", "--num-steps=250", "--cfg-scale=1.8", "--guidance-high=0.7"]


def print_config(script, argv, capsys):
    """-> (settings dict, stderr notes): main() returns without a run (exit 0) after one JSON object on
    stdout."""
    import sample_ddp

    assert {"train.py": train, "sample_ddp.py": sample_ddp}[script].main(argv + ["--print-config"]) is None
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def test_print_config_as_a_process():
    """The real entry point: exit 0, JSON on stdout, nothing read ([YOUR_DATA_PATH] does not exist)."""
    r = subprocess.run([sys.executable, "train.py", *RELEASE_TRAIN, "--print-config"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0 and json.loads(r.stdout)["epochs"] == 801, r.stderr[-2000:]
    assert not os.path.exists(os.path.join(ROOT, "exps"))


def test_release_train_sh(capsys):
    cfg, notes = print_config("train.py", RELEASE_TRAIN, capsys)
    want = dict(mixed_precision="fp16", seed=0, path_type="linear", weighting="uniform", resolution=256,
                batch_size=256, gradient_accumulation_steps=1, learning_rate=1e-4, model="SiT-B/2",
                block_out_s=3, block_out_t=8, mask_ratio=[0.25], dual_time_scheduling=True,
                attention_separation=True, teacher_t="sra", align_target="ema", align_weight=0.5,
                loss_type="cos-channel", sample_steps=50000, checkpoint_steps=100000, checkpoint_epochs=200,
                epochs=801, max_train_steps=4100000, output_dir="exps",
                exp_name="sitb-maskr0.25-as-dts-res256", data_dir="[YOUR_DATA_PATH]", teacher_labels="clean",
                sorted_timesteps=False, full_sample_prob=0.0, t_max=0.2, align_weight_schedule="constant",
                repa_features=None)
    assert {k: cfg[k] for k in want} == want
    # --teacher-mask is derived (groups and --teacher-t sra) and checked: the release's flag agrees
    assert teacher_mask_of(train.parse_args(RELEASE_TRAIN)) is True
    assert not [k for k in cfg if k.startswith("alias")] and "print_config" not in cfg
    assert "--prediction v: no-op" in notes and "--loss-type cos -> cos-channel" in notes
    # the epochs, as the release counts them on ImageNet-1k (1,281,167 images) with 8 processes x 32
    args = train.parse_args(RELEASE_TRAIN)
    steps_per_epoch = EpochOrder(1_281_167, 32, world_size=8).steps_per_epoch
    last, every, _ = flags.epoch_steps(args, steps_per_epoch, 1_281_167)
    # the release's 5004 steps per epoch
    assert steps_per_epoch == 5004
    # 801 epochs end before 4.1M steps
    assert last == 801 * 5004 == 4_008_204
    # its epoch-{199,399,...}.pt
    assert every == 200 * 5004


def test_repa_readme_train_commands(capsys):
    for argv, res in ((REPA_TRAIN, None), (REPA_TRAIN_512, 512)):
        cfg, notes = print_config("train.py", argv, capsys)
        want = dict(report_to="wandb", mixed_precision="fp16", seed=0, path_type="linear",
                    weighting="uniform", model="SiT-XL/2", enc_type="dinov2_vitb14", align_weight=0.5,
                    block_out_s=8, align_target="repa", loss_type="cos-token", output_dir="exps",
                    data_dir="[YOUR_DATA_PATH]", resolution=res, batch_size=256, max_train_steps=400_000,
                    learning_rate=1e-4, class_dropout_prob=0.1, mask_ratio=[0.0], dual_time_scheduling=False,
                    attention_separation=False, repa_features="repa-dinov2_vitb14-p2", epochs=None)
        assert {k: cfg[k] for k in want} == want
        assert cfg["exp_name"] == argv[-3].split("=")[1] if res else cfg["exp_name"] == "linear-dinov2-b-enc8"
        assert "REPA alignment" in notes and "--allow-tf32: no-op" in notes


def test_release_gen_sh_and_repa_generate(capsys):
    cfg, notes = print_config("sample_ddp.py", RELEASE_GEN, capsys)
    want = dict(num_fid_samples=50000, path_type="linear", per_proc_batch_size=64, mode="sde", num_steps=250,
                cfg_scale=1.0, guidance_high=0.7, guidance_low=0.0, sample_dir="[YOUR_SAMPLE_DIR]/images",
                model="SiT-B/2", ckpt="[YOUR_CKPT_PATH]", vae="ema", resolution=256, global_seed=0,
                quantize="release", cfg_channels=None, heun=False)
    assert {k: cfg[k] for k in want} == want
    assert "--attention-separation: no-op" in notes and "--use-alignment-loss: no-op" in notes
    cfg, notes = print_config("sample_ddp.py", REPA_GENERATE, capsys)
    want = dict(model="SiT-XL/2", num_fid_samples=50000, ckpt="YOUR_CHECKPOINT_PATH", path_type="linear",
                projector_embed_dims=[768], per_proc_batch_size=64, mode="sde", num_steps=250, cfg_scale=1.8,
                guidance_high=0.7, quantize="release")
    assert {k: cfg[k] for k in want} == want
    assert "--encoder-depth: no-op" in notes


@pytest.mark.parametrize("script,argv,message", [
    ("train.py", ["--prediction", "epsilon"], "--prediction: invalid choice"),
    ("train.py", ["--proj-coeff", "0.5", "--align-weight", "0.3"],
     "--proj-coeff 0.5 and --align-weight 0.3 disagree"),
    ("train.py", ["--enc-type", "dinov2-vit-b", "--align-target", "ema"],
     "REPA's alignment, but --align-target"),
    ("train.py", ["--mask-ratio", "[0.5,x]"], "--mask-ratio: expected numbers such as 0.25"),
    ("train.py", ["--epochs", "0"], "--epochs must be >= 1"),
    ("sample_ddp.py", ["--ckpt", "x.pt", "--mask-ratio", "0.25"], "only --mask-ratio 0 is accepted"),
    ("sample_ddp.py", ["--ckpt", "x.pt", "--projector-embed-dims", "768,a"], "--projector-embed-dims"),
])
def test_bad_flags_exit_2_with_one_line(script, argv, message, capsys):
    import sample_ddp

    with pytest.raises(SystemExit) as e:
        {"train.py": train, "sample_ddp.py": sample_ddp}[script].main(argv + ["--print-config"])
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert e.value.code == 2 and not out.out and len(lines) == 1 and message in lines[0], out.err
    assert ": error: " in lines[0]


def test_train_conversions():
    a = train.parse_args(["--mask-ratio", "[0.5,0.3,0.2]"])
    assert a.mask_ratio == [0.5, 0.3, 0.2]
    assert train.parse_args(["--mask-ratio", "0.75", "0.25"]).mask_ratio == [0.75, 0.25]
    a = train.parse_args(["--resume-step", "400000", "--exp-name", "e", "--output-dir", "exps"])
    assert a.resume == os.path.join("exps", "e", "checkpoints", "0400000.pt")
    assert train.parse_args(["--resume-step", "0"]).resume is None
    assert train.parse_args(["--resume-ckpt", "a/step-100.pt"]).resume == "a/step-100.pt"
    notes = []
    train.parse_args(["--no-fused-attn", "--allow-tf32"], notes)
    assert any(n.startswith("--[no-]fused-attn: no-op") for n in notes)
    a = train.parse_args(["--checkpointing-steps", "5", "--sampling-steps", "7", "--t-max", "0.3"])
    assert (a.checkpoint_steps, a.sample_steps, a.t_max) == (5, 7, 0.3)
    # REPA's flags on top of a REPA preset keep the preset's values where they say nothing
    a = train.parse_args(["--preset", "repa-b2", "--proj-coeff", "0.8"])
    assert (a.block_out_s, a.align_weight, a.loss_type, a.align_target) == (4, 0.8, "cos-token", "repa")
    on_latents = train.parse_args(["--preset", "repa-b2", "--data-dir", "/d/in256"])
    assert on_latents.repa_features == "repa-dinov2_vitb14-p2"
    # the digits: DINOv2 on the real images
    assert train.parse_args(["--preset", "repa-b2", "--data-dir", "digits"]).repa_features is None
    # an explicit loss type stays
    a = train.parse_args(["--encoder-depth", "4", "--loss-type", "l2"])
    assert (a.block_out_s, a.loss_type, a.align_target != "none") == (4, "l2", True)
    # --epochs alone sets the step count from the data; both: the first bound reached
    a = train.parse_args(["--epochs", "2", "--batch-size", "64"])
    assert a.max_train_steps is None
    steps_per_epoch = EpochOrder(1000, 32, world_size=2).steps_per_epoch
    assert (steps_per_epoch, flags.epoch_steps(a, steps_per_epoch, 1000)[0]) == (15, 30)
    a = train.parse_args(["--epochs", "2", "--max-train-steps", "20", "--batch-size", "64",
                          "--gradient-accumulation-steps", "2"])
    # 31 batches of 32 -> 16 steps
    steps_per_epoch = EpochOrder(1000, 32, world_size=1, grad_accum=2).steps_per_epoch
    assert (steps_per_epoch, flags.epoch_steps(a, steps_per_epoch, 1000)[0]) == (16, 20)


def test_checkpoint_epochs_and_data_checks_in_a_run(tmp_path):
    """digits:8 (1797 items) at batch 512: 3 steps per epoch; --epochs 2 -> 6 steps, --checkpoint-epochs 1 ->
    3, 6."""
    from test_train import TINY
    argv = TINY + ["--output-dir", str(tmp_path), "--exp-name", "ep", "--batch-size", "512", "--epochs", "2",
                   "--checkpoint-epochs", "1", "--checkpoint-steps", "1000", "--resolution", "8",
                   "--num-classes", "10"]
    train.main(argv)
    assert sorted(os.listdir(tmp_path / "ep" / "checkpoints")) == ["0000003.pt", "0000006.pt"]
    saved = json.load(open(tmp_path / "ep" / "args.json"))
    assert saved["max_train_steps"] == 6 and saved["steps_per_epoch"] == 3
    log = open(tmp_path / "ep" / "log.txt").read()
    assert "--epochs 2 x 3 steps per epoch" in log and "--resolution 8: checked against the data" in log
    for flag, value in (("--resolution", "16"), ("--num-classes", "1000")):
        with pytest.raises(SystemExit, match=f"{flag} {value} but --data-dir digits:8 holds"):
            train.main(argv + ["--exp-name", "bad", flag, value])


def test_sample_flags_checked_against_the_checkpoint(tmp_path, monkeypatch):
    import sample_ddp

    # --local-rank is the device index when LOCAL_RANK is unset; the environment is left alone
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    from test_sample_ddp import tiny_state_dict

    path = str(tmp_path / "c.pt")
    torch.save({"ema": tiny_state_dict(), "steps": 1, "time_convention": "ours"}, path)
    base = ["--ckpt", path, "--num-fid-samples", "1", "--num-steps", "2", "--sample-dir", str(tmp_path),
            "--no-progress"]
    out = sample_ddp.main(base + ["--resolution", "8", "--num-classes", "10", "--no-qk-norm", "--mask-ratio",
                                  "0", "--local-rank", "0", "--encoder-depth", "8", "--use-alignment-loss",
                                  "--attention-separation", "--projector-embed-dims", "768"])
    assert out.endswith("samples_1.npz") and "LOCAL_RANK" not in os.environ
    assert sample_ddp.setup_distributed(local_rank=0)[0:2] == (0, 1)
    for flag, message in ((["--resolution", "256"], "--resolution 256 but .* resolution 8"),
                          (["--num-classes", "1000"], "--num-classes 1000 but .* num classes 10"),
                          (["--qk-norm"], "--qk-norm True but .* qk norm False")):
        with pytest.raises(ValueError, match=message):
            sample_ddp.main(base + flag)
    # a REPA projector of width 768
    repa = str(tmp_path / "repa.pt")
    from models import SiT_models
    m = SiT_models["SiT-T/2"](input_size=8, in_channels=1, num_classes=10, align_head="projector", z_dim=768)
    torch.save({"ema": m.state_dict(), "steps": 1, "time_convention": "ours"}, repa)
    sample_ddp.main(base[:1] + [repa] + base[2:] + ["--projector-embed-dims", "768"])
    # REPA's default "768,1024"
    with pytest.raises(ValueError, match="--projector-embed-dims 768,1024 but .*repa.pt has one REPA "
                                         "projector, of width 768"):
        sample_ddp.main(base[:1] + [repa] + base[2:] + ["--projector-embed-dims", "768,1024"])


def test_sit_sra_readme_command_is_told_apart(capsys, monkeypatch):
    """--t-max is the original SiT-SRA folder's flag: its README command trains as its train.py does (one
    group, teacher on the dropped labels) and its --batch-size 32 is per process: 256 on its 8 processes."""
    monkeypatch.setenv("WORLD_SIZE", "8")
    cfg, notes = print_config("train.py", SIT_SRA_TRAIN, capsys)
    want = dict(model="SiT-XL/2", batch_size=256, block_out_s=8, block_out_t=20, t_max=0.2,
                align_target="ema", mask_ratio=[0.0], dual_time_scheduling=False, attention_separation=False,
                full_sample_prob=0.0, teacher_labels="dropped", loss_type="cos-channel", align_weight=0.5,
                align_weight_schedule="constant", epochs=801, checkpoint_steps=50_000, sample_steps=100_000,
                mixed_precision="fp16", resolution=256)
    assert {k: cfg[k] for k in want} == want
    assert "the original SiT-SRA command" in notes and "32 per process x 8 process(es)" in notes
    # its legacy smooth-L1 takes its lambda decay; one process: the batch stays 32
    monkeypatch.delenv("WORLD_SIZE")
    a = train.parse_args(SIT_SRA_TRAIN + ["--loss-type", "sml1"])
    assert (a.batch_size, a.align_weight, a.align_weight_schedule) == (32, 0.2, "sra-256")
    # a token-group flag, or a preset, makes --t-max this codebase's own flag on the release recipe
    a = train.parse_args(SIT_SRA_TRAIN + ["--teacher-t", "sra"])
    assert (a.batch_size, a.mask_ratio, a.attention_separation) == (32, [0.25], True)
    assert a.teacher_labels == "clean"
    a = train.parse_args(["--preset", "ours-b2", "--t-max", "0.3"])
    assert (a.t_max, a.mask_ratio, a.batch_size) == (0.3, [0.25], 256)


def test_mask_ratio_zero_is_plain_sra(capsys):
    """--mask-ratio 0 is one token group, as in the release: the recipe's DTS / AS are turned off with a note;
    given on the command line they are refused with the flags that fix it."""
    cfg, notes = print_config("train.py", ["--mask-ratio", "0"], capsys)
    assert (cfg["dual_time_scheduling"], cfg["attention_separation"]) == (False, False)
    assert cfg["align_target"] == "ema"
    assert "one token group" in notes and "plain SRA" in notes
    assert teacher_mask_of(train.parse_args(["--mask-ratio", "0"])) is False
    a = train.parse_args(["--preset", "ours-mix-b2", "--mask-ratio", "0"])
    assert (a.full_sample_prob, a.attention_separation) == (0.0, False)
    with pytest.raises(SystemExit) as e:
        train.main(["--mask-ratio", "0", "--attention-separation", "--print-config"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--no-dual-time-scheduling --no-attention-separation" in err
    assert "--mask-ratio 0 is one token group, so --attention-separation cannot apply" in err


def test_repa_on_a_model_shallower_than_the_teacher_block():
    """REPA has no EMA teacher: --block-out-t (default 8) is not checked against a 6-block model."""
    from dataset import build_dataset

    args = train.parse_args(["--preset", "repa-b2", "--model", "SiT-T/2", "--block-out-s", "2",
                             "--data-dir", "digits:8"])
    model = train.build_model(args, build_dataset("digits:8"), train.REPATarget(dim=384))
    assert model.depth == 6 < args.block_out_t
    args = train.parse_args(["--model", "SiT-T/2", "--data-dir", "digits:8"])
    with pytest.raises(SystemExit, match="--block-out-t 8 is outside SiT-T/2's blocks 1..6"):
        train.build_model(args, build_dataset("digits:8"))
