"""scripts/: every dry run prints commands that the target programs' own argument parsers accept, with the
settings the paper asks for; the tiny chain (train -> sample -> evaluate -> collect) runs end to end on the
CPU; collect_results.py builds Tables 1-5 and Figures 4-5 from records.

The launchers are parsed with their own parsers too (torch.distributed.run, accelerate launch). Programs whose
parser lives inside main() are parsed by letting main() build its parser and stopping right after parse_args.
"""
import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
SHELL_SCRIPTS = ["preprocess_imagenet.sh", "ablations_b2.sh", "train_system.sh", "sample_eval.sh",
                 "eval_run.sh"]
ABLATIONS = ["dual-full-r0.25", "dual-as-r0.25", "single-full-r0.25", "single-as-r0.25", "dual-full-r0.35",
             "dual-as-r0.35", "dual-full-r0.5", "dual-as-r0.5", "dual-as-r0.5-rho0.25"]
# Shell helpers the scripts may print besides Python programs.
PLAIN_COMMANDS = {"mkdir", "cp"}


def load_collect_results():
    spec = importlib.util.spec_from_file_location("collect_results",
                                                  os.path.join(SCRIPTS, "collect_results.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


collect_results = load_collect_results()


# ---- running the scripts -----------------------------------------------------------------------------------

def script_env(**env):
    """The caller's environment without the scripts' own variables, plus `env` (values as strings)."""
    own = {"DRY_RUN", "TINY", "NNODES", "NODE_RANK", "GPUS_PER_NODE", "LAUNCHER", "SLURM_NNODES",
           "SLURM_NODEID", "STEPS", "EVAL_STEPS", "PROTOCOL", "METRICS", "TRAIN", "EVAL", "RES", "TRAIN_ARGS",
           "SAMPLE_ARGS"}
    base = {k: v for k, v in os.environ.items() if k not in own}
    base.update({k: str(v) for k, v in env.items()})
    return base


def run_script(name, *args, timeout=120, **env):
    return subprocess.run(["bash", os.path.join(SCRIPTS, name), *args], cwd=ROOT, env=script_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def dry_run(name, *args, **env):
    """The commands a script prints with --dry-run, each split into words as a shell would."""
    res = run_script(name, "--dry-run", *args, **env)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert lines, f"{name} printed no commands"
    return [shlex.split(line) for line in lines]


# ---- parsing the printed commands with the programs' own parsers -------------------------------------------

class Parsed(Exception):
    """Raised by the patched parse_args with the namespace, so that main() stops before doing any work."""


def parse_through_main(main, argv, monkeypatch):
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
        with pytest.raises(Parsed) as caught:
            main(argv)
    return caught.value.args[0]


def split_launcher(argv):
    """-> (launcher, its parsed options or None, program, program args). program is 'x.py' or '-m module'."""
    if argv[0] == "torchrun":
        from torch.distributed.run import get_args_parser
        ns = get_args_parser().parse_args(argv[1:])
        return "torchrun", ns, ("-m " if ns.module else "") + ns.training_script, ns.training_script_args
    if argv[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser
        ns = launch_command_parser().parse_args(argv[2:])
        return "accelerate", ns, ("-m " if ns.module else "") + ns.training_script, ns.training_script_args
    if argv[0] == "python":
        if argv[1] == "-m":
            return "python", None, "-m " + argv[2], argv[3:]
        return "python", None, argv[1], argv[2:]
    return argv[0], None, None, argv[1:]


def parse_program(program, args, monkeypatch):
    """The namespace the target program's own parser makes of `args` (a parse error fails the test)."""
    if program == "train.py":
        import train
        return train.parse_args(args)
    if program == "sample_ddp.py":
        import sample_ddp
        return sample_ddp.parse_args(args)
    # Routed by its first word, as preprocessing/__main__.py does.
    if program == "-m preprocessing":
        if args[:1] == ["repa-features"]:
            from preprocessing import repa_features
            return repa_features.parse_args(args[1:])
        from preprocessing import encode
        return encode.parse_args(args)
    modules = {"-m evaluations.evaluator": "evaluations.evaluator",
               "-m evaluations.digits_metric": "evaluations.digits_metric",
               "-m evaluations.make_reference": "evaluations.make_reference",
               "-m fixtures.tiny": "fixtures.tiny",
               "-m fixtures.standin_graph": "fixtures.standin_graph"}
    assert program in modules, f"unexpected program {program!r}"
    module = importlib.import_module(modules[program])
    return parse_through_main(module.main, args, monkeypatch)


def parse_all(commands, monkeypatch):
    """[(launcher, launcher options, program, namespace)] for every printed command; shell helpers pass
    through."""
    out = []
    for argv in commands:
        launcher, opts, program, args = split_launcher(argv)
        if program is None:
            assert launcher in PLAIN_COMMANDS, f"unexpected command: {shlex.join(argv)}"
            continue
        out.append((launcher, opts, program, parse_program(program, args, monkeypatch)))
    return out


def of(parsed, program):
    return [p for p in parsed if p[2] == program]


# ---- help and dry runs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SHELL_SCRIPTS)
def test_help(name):
    res = run_script(name, "--help")
    assert res.returncode == 0 and f"usage: scripts/{name}" in res.stdout and "Environment" in res.stdout


def test_collect_results_help():
    res = subprocess.run([sys.executable, os.path.join(SCRIPTS, "collect_results.py"), "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "Table" in res.stdout


def ablation_of_name(name):
    """The scripts' ablation run name b2-{dual|single}-{full|as}-r<ratio>[-rho<p>] -> its setting tuple."""
    m = re.match(r"^b2-(dual|single)-(full|as)-r([0-9.]+)(?:-rho([0-9.]+))?$", name)
    return m.group(1), m.group(2), float(m.group(3)), float(m.group(4) or 0.0)


def test_ablation_sweep_dry_run(monkeypatch):
    """9 settings x (train 800K steps + FID-10K without CFG at 100K/400K/800K), each run's setting read back
    from its flags (args.json) by collect_results.py, on 8 GPUs of one machine through accelerate."""
    parsed = parse_all(dry_run("ablations_b2.sh"), monkeypatch)
    trains = of(parsed, "train.py")
    assert [ns.exp_name for *_, ns in trains] == [f"b2-{s}" for s in ABLATIONS]
    for launcher, opts, _, ns in trains:
        assert launcher == "accelerate" and opts.multi_gpu
        assert opts.num_processes == 8 and opts.num_machines == 1
        timesteps, attention, ratio, rho = ablation_of_name(ns.exp_name)
        assert collect_results.ablation_setting(vars(ns)) == (timesteps, attention, ratio, rho)
        assert ns.model == "SiT-B/2" and ns.max_train_steps == 800_000 and ns.batch_size == 256
        assert (ns.block_out_s, ns.block_out_t, ns.align_weight) == (3, 8, 0.5) and ns.align_target != "none"
        assert ns.dual_time_scheduling == (timesteps == "dual")
        assert ns.attention_separation == (attention == "as")
        assert ns.mask_ratio == [ratio] and ns.full_sample_prob == rho
        assert ns.data_dir == "/data/imagenet256" and ns.resume == "auto"
    samples = of(parsed, "sample_ddp.py")
    assert len(samples) == 3 * len(ABLATIONS)
    for launcher, opts, _, ns in samples:
        assert launcher == "torchrun" and opts.nproc_per_node == "8"
        assert (ns.mode, ns.num_steps, ns.cfg_scale, ns.num_fid_samples) == ("sde", 250, 1.0, 10_000)
    steps = sorted({int(os.path.basename(ns.ckpt)[:-3]) for *_, ns in samples})
    assert steps == [100_000, 400_000, 800_000]
    evals = of(parsed, "-m evaluations.evaluator")
    assert len(evals) == len(samples)
    assert all(ns.ref.endswith("VIRTUAL_imagenet256_labeled.npz") for *_, ns in evals)


def test_ablation_sweep_settings_and_bad_names(monkeypatch):
    parsed = parse_all(dry_run("ablations_b2.sh", "single-as-r0.3", EVAL="0"), monkeypatch)
    assert [p[2] for p in parsed] == ["train.py"]
    ns = parsed[0][3]
    assert ns.mask_ratio == [0.3] and not ns.dual_time_scheduling and ns.attention_separation
    res = run_script("ablations_b2.sh", "--dry-run", "dual-sparse-r0.25")
    assert res.returncode == 2 and "dual-sparse-r0.25" in res.stderr and not res.stdout


def test_ddpm_runs_are_dit_rows_never_sit_or_sra_rows():
    """A run's process decides first: DiT (DDPM, no alignment) is not vanilla SiT, DiT + SRA is not SRA."""
    import train

    for preset, method in (("dit-b2", "dit"), ("dit-xl2", "dit"), ("dit-sra-xl2", "dit-sra"),
                           ("sit-b2", "sit"), ("sra-b2", "sra")):
        assert collect_results.system_method(vars(train.parse_args(["--preset", preset]))) == method, preset


def test_system_runs_dry_run(monkeypatch):
    """Table 4: six methods at 4M steps; FID-50K with CFG 1.8 on t <= 0.7 of the final checkpoint."""
    parsed = parse_all(dry_run("train_system.sh", ENC_WEIGHTS="/w/dinov2_vitb14.pth"), monkeypatch)
    trains = of(parsed, "train.py")
    assert [ns.preset for *_, ns in trains] == ["ours-xl2", "sit-xl2", "sra-xl2", "self-flow-xl2", "repa-xl2",
                                               "sra2-xl2"]
    for *_, ns in trains:
        assert ns.exp_name == ns.preset and ns.model == "SiT-XL/2" and ns.max_train_steps == 4_000_000
        assert (collect_results.system_method(vars(ns)), collect_results.run_scale(vars(ns))) == \
            (ns.preset[:-len("-xl2")], "xl2")
    # REPA on ImageNet: targets precomputed from the real images (the preset's --repa-features auto), no
    # encoder
    assert [(ns.repa_features, ns.enc_weights) for *_, ns in trains if ns.preset == "repa-xl2"] == \
        [("repa-dinov2_vitb14-p2", None)]
    (*_, ns), = of(parse_all(dry_run("train_system.sh", "--tiny", "repa", ENC_WEIGHTS="/w/dinov2_vitb14.pth",
                                     EVAL=0), monkeypatch), "train.py")
    # digits: DINOv2 on the images
    assert ns.repa_features is None and ns.enc_weights == "/w/dinov2_vitb14.pth"
    samples = of(parsed, "sample_ddp.py")
    assert len(samples) == 6
    for *_, ns in samples:
        assert ns.ckpt.endswith("/checkpoints/4000000.pt")
        assert (ns.mode, ns.num_steps, ns.cfg_scale, ns.guidance_high, ns.num_fid_samples) == \
            ("sde", 250, 1.8, 0.7, 50_000)
    assert len(of(parsed, "-m evaluations.evaluator")) == 6


def test_system_runs_512_dry_run(monkeypatch):
    parsed = parse_all(dry_run("train_system.sh", RES="512"), monkeypatch)
    (_, _, _, train_ns), = of(parsed, "train.py")
    assert train_ns.preset == "ours-xl2-512" and train_ns.max_train_steps == 1_000_000
    assert train_ns.data_dir == "/data/imagenet512"
    (*_, sample_ns), = of(parsed, "sample_ddp.py")
    assert sample_ns.ckpt.endswith("ours-xl2-512/checkpoints/1000000.pt")
    (*_, eval_ns), = of(parsed, "-m evaluations.evaluator")
    assert eval_ns.ref.endswith("VIRTUAL_imagenet512.npz")


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_multi_node_dry_run(launcher, monkeypatch):
    """Machine 1 of 2: training and sampling span 16 processes; only machine 0 evaluates."""
    env = dict(LAUNCHER=launcher, NNODES=2, NODE_RANK=1, MASTER_ADDR="10.0.0.1", MASTER_PORT=29999)
    for script, args in (("ablations_b2.sh", ["dual-as-r0.25"]), ("train_system.sh", ["sit"])):
        parsed = parse_all(dry_run(script, *args, **env), monkeypatch)
        assert {p[2] for p in parsed} == {"train.py", "sample_ddp.py"}
        for used, opts, *_ in parsed:
            assert used == launcher
            if launcher == "torchrun":
                assert (opts.nnodes, opts.node_rank, opts.nproc_per_node) == ("2", 1, "8")
                assert (opts.master_addr, opts.master_port) == ("10.0.0.1", 29999)
            else:
                assert (opts.num_machines, opts.machine_rank, opts.num_processes) == (2, 1, 16)
                assert (opts.main_process_ip, opts.main_process_port) == ("10.0.0.1", 29999)


def test_sample_eval_and_eval_run_dry_run(monkeypatch):
    parsed = parse_all(dry_run("sample_eval.sh", "runs/x/checkpoints/0200000.pt", PROTOCOL="system",
                               NUM_SAMPLES=10000, INCEPTION="/g/pool.pb", SAMPLE_ARGS="--bf16",
                               EVAL_BACKEND="tf"), monkeypatch)
    (*_, s), = of(parsed, "sample_ddp.py")
    assert ((s.num_fid_samples, s.cfg_scale, s.guidance_high, s.precision, s.npz_only)
            == (10_000, 1.8, 0.7, "bf16", True))
    (*_, e), = of(parsed, "-m evaluations.evaluator")
    assert e.inception == "/g/pool.pb" and e.out == "results/x/0200000-n10000-sde250-cfg1.8-gh0.7/adm.json"
    assert e.backend == "tf"
    parsed = parse_all(dry_run("eval_run.sh", "runs/y", STEPS="100000 400000", METRICS="adm digits"),
                       monkeypatch)
    ckpts = [os.path.basename(ns.ckpt) for *_, ns in of(parsed, "sample_ddp.py")]
    assert ckpts == ["0100000.pt", "0400000.pt"]
    assert len(of(parsed, "-m evaluations.digits_metric")) == 2


def test_preprocessing_dry_run(monkeypatch):
    parsed = parse_all(dry_run("preprocess_imagenet.sh", MAKE_REFERENCE=1, VAE="/w/sd-vae-ft-mse",
                               ENC_WEIGHTS="/w/dinov2.pth"), monkeypatch)
    pre = [p for p in of(parsed, "-m preprocessing") if hasattr(p[3], "resolution")]
    features = [p[3] for p in of(parsed, "-m preprocessing") if not hasattr(p[3], "resolution")]
    assert [(ns.data_dir, ns.enc_weights, ns.patch_size) for ns in features] == [
        ("/data/imagenet256", "/w/dinov2.pth", 2), ("/data/imagenet512", "/w/dinov2.pth", 2)]
    assert [ns.resolution for *_, ns in pre] == [256, 512]
    assert [ns.out_dir for *_, ns in pre] == ["/data/imagenet256", "/data/imagenet512"]
    assert all(p[0] == "torchrun" and ns.vae_path == "/w/sd-vae-ft-mse" and ns.reference_batch == 10_000
               for *p, ns in pre)
    refs = of(parsed, "-m evaluations.make_reference")
    assert [(ns.resolution, ns.num_ref) for *_, ns in refs] == [(256, 10_000), (512, 10_000)]


@pytest.mark.parametrize("name,args", [("preprocess_imagenet.sh", []), ("ablations_b2.sh", []),
                                       ("train_system.sh", []),
                                       ("sample_eval.sh", ["runs/t/checkpoints/0000004.pt"]),
                                       ("eval_run.sh", ["runs/t"])])
def test_tiny_dry_run(name, args, monkeypatch, tmp_path):
    """--tiny: plain python, one process; training is the preset's method at SiT-T/2 scale on the digits."""
    parsed = parse_all(dry_run(name, "--tiny", *args, TINY_ROOT=tmp_path, STEPS="4"), monkeypatch)
    assert all(p[0] == "python" for p in parsed)
    for *_, ns in of(parsed, "train.py"):
        assert ((ns.model, ns.data_dir, ns.max_train_steps, ns.mixed_precision)
                == ("SiT-T/2", "digits", 4, "no"))
    for *_, ns in of(parsed, "sample_ddp.py"):
        assert ns.num_fid_samples == 20 and ns.num_steps == 10


@pytest.mark.parametrize("env,message", [(dict(LAUNCHER="mpirun"), "LAUNCHER"),
                                         (dict(NNODES=2, NODE_RANK=2), "NODE_RANK"),
                                         (dict(RES=384), "RES"),
                                         (dict(PROTOCOL="fid5k"), None)])
def test_bad_environment(env, message):
    script, args = ("sample_eval.sh", ["runs/x/checkpoints/0000001.pt"]) if "PROTOCOL" in env else \
        ("train_system.sh", ["sit"])
    res = run_script(script, "--dry-run", *args, **env)
    assert res.returncode == 2 and not res.stdout
    assert (message or "PROTOCOL") in res.stderr


def test_missing_inputs_fail_before_launching(tmp_path):
    res = run_script("train_system.sh", "repa", OUTPUT_DIR=tmp_path)
    assert res.returncode == 2 and "ENC_WEIGHTS" in res.stderr and not os.listdir(tmp_path)
    res = run_script("sample_eval.sh", str(tmp_path / "checkpoints" / "0000001.pt"))
    assert res.returncode == 2 and "checkpoint not found" in res.stderr
    res = run_script("eval_run.sh", str(tmp_path))
    assert res.returncode == 2 and "no checkpoints" in res.stderr


# ---- the tiny chain on the CPU -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_chain(tmp_path_factory):
    """Two B/2 ablation settings and the XL/2 'ours' system run at tiny scale: train 4 steps (checkpoints at 2
    and 4), sample 20 images per checkpoint, evaluate (digits metric; ADM evaluator with the stand-in graph
    for the system run), then collect. Prints the tables and the wall time."""
    root = tmp_path_factory.mktemp("tiny")
    t0 = time.time()
    for script, args, metrics in (("ablations_b2.sh", ["dual-full-r0.25", "dual-as-r0.25"], "digits"),
                                  ("train_system.sh", [], "digits adm")):
        res = run_script(script, "--tiny", *args, TINY_ROOT=root, METRICS=metrics, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res = subprocess.run([sys.executable, os.path.join(SCRIPTS, "collect_results.py"), str(root / "results")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    wall = time.time() - t0
    print(f"\n{res.stdout}\ntiny chain wall time: {wall:.1f} s")
    return root, res.stdout


def test_tiny_chain_records(tiny_chain):
    root, _ = tiny_chain
    for exp, steps in (("b2-dual-full-r0.25", (2, 4)), ("b2-dual-as-r0.25", (2, 4)), ("ours-xl2", (4,))):
        for step in steps:
            folders = [f for f in os.listdir(root / "results" / exp)
                       if f.startswith(f"{step:07d}-n20-sde10-")]
            assert len(folders) == 1, os.listdir(root / "results" / exp)
            with open(root / "results" / exp / folders[0] / "digits.json") as f:
                rec = json.load(f)
            assert rec["n"] == 20 and 0 <= rec["accuracy"] <= 1 and rec["fd"] >= 0
    with open(next((root / "results" / "ours-xl2").glob("*/adm.json"))) as f:
        adm = json.load(f)
    assert adm["num_samples"] == 20 and adm["fid"] >= 0 and adm["inception_score"] >= 1


def test_tiny_chain_tables_and_figures(tiny_chain):
    root, text = tiny_chain
    lines = text.splitlines()
    digits_t1 = lines.index("### Table 1: SiT-B/2, dual timesteps, mask ratio 0.25: digits FD")
    header, _, full, as_row = lines[digits_t1 + 2:digits_t1 + 6]
    assert header.startswith("| setting | 2 | 4 | 100K | 400K | 800K |")
    # Numbers at steps 2 and 4, "–" at the paper's.
    for row in (full, as_row):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(c.replace(".", "").isdigit() for c in cells[1:3]) and cells[3:6] == ["–"] * 3
    adm_t4 = lines.index("### Table 4: SiT-XL/2, ImageNet 256, 4M steps")
    ours = next(line for line in lines[adm_t4:] if line.startswith("| ours (SRA + DTS + AS) | ours-xl2 |"))
    cells = [c.strip() for c in ours.strip("|").split("|")]
    assert cells[2:4] == ["4", "20"] and cells[-5:] == ["1.44", "4.60", "315.3", "0.81", "0.63"]
    assert os.path.getsize(root / "results" / "figure4_digits.png") > 1000
    assert os.path.isfile(root / "results" / "results.md")


def test_tiny_preprocessing(tmp_path):
    """Generated images -> stand-in VAE -> latent shards a training run can read, and an ADM reference
    batch."""
    res = run_script("preprocess_imagenet.sh", "--tiny", TINY_ROOT=tmp_path, RESOLUTIONS="32", timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from dataset import build_dataset
    ds = build_dataset(str(tmp_path / "data" / "imagenet32"))
    assert len(ds) == 9 and ds.latent_size == 4
    import numpy as np
    with np.load(tmp_path / "data" / "imagenet32_reference.npz") as z:
        assert z["arr_0"].shape == (4, 32, 32, 3) and z["mu"].shape == (2048,)


# ---- collect_results.py on records made here ---------------------------------------------------------------

def run_args(run):
    """The args.json train.py writes for a run of the scripts: b2-SETTING (scripts/ablations_b2.sh) or a
    system preset name (scripts/train_system.sh)."""
    import train
    if not run.startswith("b2-"):
        return vars(train.parse_args(["--preset", run]))
    timesteps, attention, ratio, rho = ablation_of_name(run)
    flags = ["--preset", "ours-b2", "--mask-ratio", str(ratio), "--full-sample-prob", str(rho),
             "--dual-time-scheduling" if timesteps == "dual" else "--no-dual-time-scheduling",
             "--attention-separation" if attention == "as" else "--no-attention-separation"]
    return vars(train.parse_args(flags))


def write_record(root, run, step, fid, inception_score, n=10_000, cfg=1.0, high=1.0, kind="adm"):
    folder = root / run / f"{step:07d}-n{n}-sde250-cfg{cfg}-gh{high}"
    folder.mkdir(parents=True)
    run_dir = root.parent / "runs" / run
    if not (run_dir / "args.json").exists():
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "args.json").write_text(json.dumps(run_args(run)))
    sampling = dict(settings=dict(steps=step, mode="sde", num_steps=250, cfg_scale=cfg, guidance_low=0.0,
                                  guidance_high=high), checkpoint=f"{run_dir}/checkpoints/{step:07d}.pt",
                    num_fid_samples=n)
    (folder / "sampling.json").write_text(json.dumps(sampling))
    if kind == "adm":
        rec = dict(fid=fid, sfid=fid * 2, inception_score=inception_score, precision=0.7, recall=0.6,
                   num_samples=n, samples="/elsewhere/samples.npz")
    else:
        rec = dict(fd=fid, accuracy=0.5, n=n, samples="/elsewhere/samples.npz")
    (folder / f"{kind}.json").write_text(json.dumps(rec))


def test_collect_results_tables_and_figures(tmp_path):
    res = tmp_path / "results"
    for k, setting in enumerate(ABLATIONS):
        for step in (100_000, 400_000, 800_000):
            # a missing cell
            if setting == "dual-full-r0.25" and step == 400_000:
                continue
            write_record(res, f"b2-{setting}", step, fid=60 - step / 20_000 + k,
                         inception_score=20 + step / 20_000)
    # fewer samples: loses
    write_record(res, "b2-dual-as-r0.25", 800_000, fid=99.0, inception_score=1.0, n=1000)
    write_record(res, "ours-xl2", 4_000_000, fid=1.5, inception_score=300.0, n=50_000, cfg=1.8, high=0.7)
    # no CFG: not Table 4
    write_record(res, "ours-xl2", 4_000_000, fid=9.9, inception_score=9.0, n=10_000)
    write_record(res, "ours-xl2-512", 1_000_000, fid=2.2, inception_score=280.0, n=50_000, cfg=1.8, high=0.7)
    write_record(res, "b2-dual-as-r0.25", 100_000, fid=3.0, inception_score=1.0, n=20, kind="digits")
    (res / "notes.json").write_text('{"unrelated": 1}')
    (res / "broken.json").write_text("{")
    text, figures = collect_results.collect([str(res)], str(tmp_path / "out"))
    lines = text.splitlines()

    def row(title, first_cell):
        start = lines.index(title)
        return [c.strip() for c in next(ln for ln in lines[start:] if ln.startswith(f"| {first_cell} |"))
                .strip("|").split("|")]

    t1 = "### Table 1: SiT-B/2, dual timesteps, mask ratio 0.25: FID"
    assert row(t1, "setting") == ["setting", "100K", "400K", "800K", "paper 100K", "paper 400K", "paper 800K"]
    assert row(t1, "dual t, AS, ratio 0.25") == ["dual t, AS, ratio 0.25", "56.00", "41.00", "21.00", "58.57",
                                                  "29.89", "25.06"]
    t3 = "### Table 3: SiT-B/2, mask ratio and full-image mixing: FID"
    assert row(t3, "0.5") == ["0.5", "full", "dual", "0", "800K", "26.00", "24.39"]
    assert row(t3, "0.5 | AS | dual | 0.25")[4:] == ["800K", "28.00", "24.15"]
    t2 = "### Table 2: SiT-B/2, single timestep (AS as augmentation): FID"
    assert row(t2, "single t, AS, ratio 0.25")[1:4] == ["58.00", "43.00", "23.00"]
    t4 = "### Table 4: SiT-XL/2, ImageNet 256, 4M steps"
    assert row(t4, "ours (SRA + DTS + AS)")[2:9] == ["4M", "50,000", "1.50", "3.00", "300.0", "0.70", "0.60"]
    assert row(t4, "SiT")[2:] == ["–"] * 12
    assert row("### Table 5: SiT-XL/2, ImageNet 512, 1M steps", "ours (SRA + DTS + AS)")[4] == "2.20"
    # the missing 400K cell
    assert row(t1, "dual t, full attn, ratio 0.25")[1:4] == ["55.00", "–", "20.00"]
    t1_digits = "### Table 1: SiT-B/2, dual timesteps, mask ratio 0.25: digits FD"
    assert row(t1_digits, "dual t, AS, ratio 0.25")[1] == "3.00"
    names = sorted(os.path.basename(f) for f in figures)
    assert names == ["figure4.png", "figure4_digits.png", "figure5.png"]
    assert all(os.path.getsize(f) > 1000 for f in figures)


def test_collect_results_without_records(tmp_path):
    script = os.path.join(SCRIPTS, "collect_results.py")
    res = subprocess.run([sys.executable, script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0 and "no evaluation records" in res.stderr
    res = subprocess.run([sys.executable, script, str(tmp_path / "nope")], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode != 0 and "not found" in res.stderr
