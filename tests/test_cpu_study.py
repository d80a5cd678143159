"""studies/cpu-ablations/run.sh and collect.py: the dry run's commands parsed by the programs' own parsers
(every setting, seed and evaluation point of the study), --tiny end to end (2 settings x 2 seeds, 8 steps:
train -> sample -> held-out digits metric -> table and figure), resuming after an interruption, the table's
statistics and verdicts on fixture records, and the study's committed records read again."""
import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys

import pytest

from test_scripts import ablation_of_name, parse_all, script_env
from test_train import teacher_mask_of
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join(ROOT, "studies", "cpu-ablations")
SETTINGS = ["dual-full-r0.25", "dual-as-r0.25", "single-full-r0.25", "single-as-r0.25", "dual-full-r0.5",
            "dual-as-r0.5", "dual-as-r0.5-rho0.25", "dual-full-r0.35", "dual-as-r0.35", "sit", "sra",
            "self-flow"]


def load_collector():
    path = os.path.join(STUDY, "collect.py")
    spec = importlib.util.spec_from_file_location("cpu_ablations_collect", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study = load_collector()


def run_study(*args, timeout=120, **env):
    """studies/cpu-ablations/run.sh ARGS, from the repository root as test_scripts.run_script runs them."""
    return subprocess.run(["bash", os.path.join(STUDY, "run.sh"), *args], cwd=ROOT, env=script_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def test_help():
    res = run_study("--help")
    assert res.returncode == 0 and "usage: studies/cpu-ablations/run.sh" in res.stdout
    assert "Environment" in res.stdout


def test_dry_run_is_the_whole_study(monkeypatch):
    """12 settings x 3 seeds (seed by seed), 64 tokens per image, train split only; 3 evaluations per run
    against the held-out digits at 1/8, 1/2 and 1 of the run."""
    res = run_study("--dry-run")
    assert res.returncode == 0, res.stderr
    parsed = parse_all([shlex.split(line) for line in res.stdout.splitlines()], monkeypatch)
    trains = [ns for _, _, program, ns in parsed if program == "train.py"]
    assert [ns.exp_name for ns in trains] == [f"cpu-{s}-s{k}" for k in range(3) for s in SETTINGS]
    for ns in trains:
        setting, seed = ns.exp_name[4:-3], int(ns.exp_name[-1])
        assert ns.seed == seed and ns.data_dir == "digits:16:train" and ns.model == "SiT-N/2"
        assert (16 // 2) ** 2 >= 64 and ns.batch_size == 32 and ns.max_train_steps == 720
        assert ns.checkpoint_steps == 90 and ns.resume == "auto" and ns.mixed_precision == "no"
        assert ns.ema_decay == pytest.approx(1 - 80 / 720, abs=1e-6) and ns.eval_samples == 0
        if setting == "sit":
            assert ns.align_target == "none" and ns.mask_ratio == [0.0] and not ns.dual_time_scheduling
        elif setting == "sra":
            assert ns.align_target != "none" and ns.mask_ratio == [0.0] and ns.teacher_t == "sra"
        elif setting == "self-flow":
            assert ns.align_target != "none" and ns.dual_time_scheduling and not ns.attention_separation
            assert ns.teacher_t == "self_flow" and ns.mask_ratio == [0.25]
        else:
            timesteps, attention, ratio, rho = ablation_of_name(f"b2-{setting}")
            assert ns.align_target != "none" and ns.teacher_t == "sra" and teacher_mask_of(ns)
            assert ns.dual_time_scheduling == (timesteps == "dual")
            assert ns.attention_separation == (attention == "as")
            assert ns.mask_ratio == [ratio] and ns.full_sample_prob == rho
    samples = [ns for _, _, program, ns in parsed if program == "sample_ddp.py"]
    assert len(samples) == 3 * len(trains)
    assert sorted({int(os.path.basename(ns.ckpt)[:-3]) for ns in samples}) == [90, 360, 720]
    for ns in samples:
        assert (ns.num_fid_samples, ns.mode, ns.num_steps, ns.cfg_scale) == (500, "sde", 25, 1.0)
        assert ns.balanced_labels
    metrics = [ns for _, _, program, ns in parsed if program == "-m evaluations.digits_metric"]
    assert len(metrics) == len(samples) and all(ns.reference == "heldout" for ns in metrics)


def test_dry_run_of_the_dit_settings(monkeypatch):
    """The extra settings dit and dit-sra: DiT's process at the study's scale, sampled with DDPM's ancestral
    sampler, recorded under their own tag."""
    res = run_study("--dry-run", "dit", "dit-sra", SEEDS="0")
    assert res.returncode == 0, res.stderr
    parsed = parse_all([shlex.split(line) for line in res.stdout.splitlines()], monkeypatch)
    trains = {ns.exp_name: ns for _, _, program, ns in parsed if program == "train.py"}
    assert sorted(trains) == ["cpu-dit-s0", "cpu-dit-sra-s0"]
    for ns in trains.values():
        assert ns.process == "ddpm" and ns.model == "SiT-N/2" and ns.max_train_steps == 720
        assert (ns.block_out_s, ns.block_out_t, ns.mask_ratio) == (2, 4, [0.0])
    assert trains["cpu-dit-s0"].align_target == "none"
    sra = trains["cpu-dit-sra-s0"]
    assert (sra.align_target, sra.loss_type, sra.align_weight, sra.teacher_labels) == \
        ("ema", "sml1", 0.04, "dropped")
    samples = [ns for _, _, program, ns in parsed if program == "sample_ddp.py"]
    assert len(samples) == 6 and all((ns.mode, ns.num_steps) == ("ddpm", 25) for ns in samples)
    assert all("-n500-ddpm25-" in ns.sample_dir for ns in samples)


@pytest.mark.parametrize("args,env,message", [(["dual-sparse-r0.25"], {}, "dual-sparse-r0.25"),
                                              ([], dict(STEPS="100"), "multiple of 8"),
                                              ([], dict(SEEDS="a"), "SEEDS"),
                                              ([], dict(JOBS="0"), "JOBS")])
def test_bad_input(args, env, message):
    res = run_study("--dry-run", *args, **env)
    assert res.returncode == 2 and message in res.stderr and not res.stdout


# ---- --tiny end to end -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpu-study")
    env = dict(TINY_ROOT=root, SIT_SRA_CACHE=root / "cache")
    res = run_study("--tiny", "dual-full-r0.25", "dual-as-r0.25", timeout=900, **env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return root, env


def test_tiny_records(tiny_study):
    root, _ = tiny_study
    for setting in ("dual-full-r0.25", "dual-as-r0.25"):
        for seed in (0, 1):
            for step in (1, 4, 8):
                folder = root / "results" / f"cpu-{setting}-s{seed}" / f"{step:07d}-n20-sde5-cfg1.0-gh1.0"
                path = folder / "digits.json"
                rec = json.loads(path.read_text())
                assert rec["n"] == 20 and rec["reference"] == "heldout" and 0 <= rec["memorisation"] <= 1
                assert rec["fd"] >= 0 and 0 <= rec["accuracy"] <= 1 and rec["real_n"] == 445
    info = json.loads((root / "results" / "study.json").read_text())
    assert info["steps"] == 8 and info["seeds"] == [0, 1] and info["eval_steps"] == [1, 4, 8]
    assert info["failed"] == [] and info["wall_seconds"] >= 0


def test_tiny_table_and_figure(tiny_study):
    root, _ = tiny_study
    collector = os.path.join(STUDY, "collect.py")
    res = subprocess.run([sys.executable, collector, str(root / "results")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    t1 = next(line for line in lines if line.startswith("| dual t, AS, alpha 0.25 = ours"))
    # 3 metrics x 3 points, 2 seeds each
    assert t1.count("±") == 9
    claim = next(line for line in lines if line.startswith("| Table 1: with dual timesteps"))
    assert "dual-as-r0.25 − dual-full-r0.25" in claim and ("reproduced" in claim or "resolvable" in claim)
    assert os.path.getsize(root / "results" / "cpu_study.png") > 1000
    assert (root / "results" / "cpu_study.json").is_file()


def test_tiny_resume(tiny_study):
    """A finished study is skipped; a run cut short (last checkpoint and one record gone) resumes from its
    newest checkpoint and recomputes only the missing record."""
    root, env = tiny_study
    res = run_study("--tiny", "dual-full-r0.25", "dual-as-r0.25", timeout=300, **env)
    assert res.returncode == 0 and res.stderr.count("finished, skipped") == 4 and "started" not in res.stderr
    run = root / "runs" / "cpu-dual-as-r0.25-s1"
    (run / "checkpoints" / "0000008.pt").unlink()
    record = root / "results" / "cpu-dual-as-r0.25-s1" / "0000008-n20-sde5-cfg1.0-gh1.0" / "digits.json"
    kept = root / "results" / "cpu-dual-as-r0.25-s1" / "0000004-n20-sde5-cfg1.0-gh1.0" / "digits.json"
    before = kept.stat().st_mtime_ns
    record.unlink()
    res = run_study("--tiny", "dual-full-r0.25", "dual-as-r0.25", timeout=300, **env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("finished, skipped") == 3
    log = (root / "results" / "logs" / "cpu-dual-as-r0.25-s1.log").read_text()
    assert "resumed from" in log and log.count("sample_ddp.py") == 1
    assert record.is_file() and kept.stat().st_mtime_ns == before


# ---- the collector on fixture records ----------------------------------------------------------------------

def study_args(setting, seed):
    """The flags train.py saves (args.json) for the study's run cpu-SETTING-sSEED of an ablation setting."""
    timesteps, attention, ratio, rho = ablation_of_name(f"b2-{setting}")
    argv = ["--preset", "ours-b2", "--model", "SiT-N/2", "--mask-ratio", str(ratio), "--full-sample-prob",
            str(rho), "--dual-time-scheduling" if timesteps == "dual" else "--no-dual-time-scheduling",
            "--attention-separation" if attention == "as" else "--no-attention-separation",
            "--seed", str(seed), "--exp-name", f"cpu-{setting}-s{seed}"]
    return vars(train.parse_args(argv))


def write(root, setting, seed, step, fd, accuracy=0.5, memorisation=0.7):
    run = root / f"cpu-{setting}-s{seed}"
    folder = run / f"{step:07d}-n500-sde25-cfg1.0-gh1.0"
    folder.mkdir(parents=True)
    # the copy of the run's flags that run.sh keeps beside the records (the run folder is not there)
    if not (run / "args.json").exists():
        (run / "args.json").write_text(json.dumps(study_args(setting, seed)))
    (folder / "sampling.json").write_text(json.dumps(dict(
        checkpoint=f"/x/runs/cpu-{setting}-s{seed}/checkpoints/{step:07d}.pt", settings=dict(steps=step))))
    (folder / "digits.json").write_text(json.dumps(dict(
        fd=fd, accuracy=accuracy, memorisation=memorisation, memorisation_real=0.78, heldout_accuracy=0.98,
        fd_train_same_n=5.0, n=500, reference="heldout")))


def test_collector_statistics_and_verdicts(tmp_path):
    res = tmp_path / "results"
    # fd of the reference settings at the end, per seed; AS at 0.25 within the spread, AS at 0.5 clearly
    # worse, AS with one timestep worse (its "not worse" claim fails); a stray file is ignored
    base = {0: 10.0, 1: 12.0, 2: 14.0}
    for seed, b in base.items():
        for step, scale in ((100, 3.0), (400, 1.5), (800, 1.0)):
            write(res, "dual-full-r0.25", seed, step, b * scale)
            write(res, "dual-as-r0.25", seed, step, b * scale + (1.0, -1.0, 0.5)[seed])
            write(res, "dual-full-r0.5", seed, step, b * scale, accuracy=0.9)
            write(res, "dual-as-r0.5", seed, step, b * scale + 10 + seed, accuracy=0.6)
            write(res, "single-full-r0.25", seed, step, b * scale)
            write(res, "single-as-r0.25", seed, step, b * scale + 5 + 0.1 * seed)
    (res / "cpu-dual-full-r0.5-s0" / "junk.json").write_text("{")
    text, figure, summary = study.collect(str(res), str(tmp_path / "out"))
    cell = summary["cells"]["dual-full-r0.25"]["1"]["fd"]
    assert (cell["mean"], cell["std"], cell["k"]) == (12.0, 2.0, 3)
    assert summary["steps"] == {"1/8": 100, "1/2": 400, "1": 800}
    claims = {c["a"] + " " + c["b"]: c for c in summary["claims"]}
    worse = claims["dual-as-r0.5 dual-full-r0.5"]
    d = worse["points"]["1"]["fd"]
    # differences 10, 11, 12: mean 11, sd 1, t(0.975, 2) = 4.303
    half = 4.303 * 1.0 / math.sqrt(3)
    assert d["mean"] == pytest.approx(11.0) and d["std"] == pytest.approx(1.0)
    assert (d["lo"], d["hi"]) == (pytest.approx(11 - half), pytest.approx(11 + half))
    assert worse["verdict"] == "reproduced"
    assert worse["points"]["1"]["accuracy"]["mean"] == pytest.approx(-0.3)
    assert claims["dual-as-r0.25 dual-full-r0.25"]["verdict"].startswith("not resolvable")
    assert claims["single-as-r0.25 single-full-r0.25"]["verdict"].startswith("not reproduced")
    assert claims["dual-as-r0.35 dual-full-r0.35"]["verdict"] == "not run"
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("| dual t, full attn, alpha 0.25 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "36.00 ± 6.00" and cells[7] == "12.00 ± 2.00"
    assert cells[-3:] == ["58.16", "30.20", "25.19"]
    claim = next(line for line in lines if line.startswith("| Table 3: at alpha 0.5, AS is much worse"))
    assert f"11.00 ± 1.00 [{11 - half:.2f}, {11 + half:.2f}]" in claim and "+13.80" in claim
    assert os.path.getsize(figure) > 1000 and (tmp_path / "out" / "cpu_study.md").is_file()


def test_collector_without_records(tmp_path):
    with pytest.raises(SystemExit, match="no records"):
        study.collect(str(tmp_path), str(tmp_path))
    with pytest.raises(SystemExit, match="not found"):
        study.collect(str(tmp_path / "nope"), str(tmp_path))


def test_collector_on_the_committed_records(tmp_path):
    """The committed records (each run's args.json rebuilt from the study's commands, see the README) give the
    committed table and summary again; study.json aside (the committed one is the first batch's)."""
    study.collect(STUDY, str(tmp_path))
    made = json.loads((tmp_path / "cpu_study.json").read_text())
    committed = json.loads(open(os.path.join(STUDY, "cpu_study.json")).read())
    made.pop("study")
    committed.pop("study")
    assert made == committed
    made = (tmp_path / "cpu_study.md").read_text().splitlines()
    committed = open(os.path.join(STUDY, "cpu_study.md")).read().splitlines()
    assert [k for k, line in enumerate(committed) if line.startswith("Study: ")] == [2]
    assert made[:2] + made[3:] == committed[:2] + committed[3:]
