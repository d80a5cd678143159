"""The GPU suite: one command for a short GPU lease, prepared and dry-run on the CPU before any GPU is lent.

    python bench.py --suite gpu --out DIR                        # on the GPU: about 10 minutes on an H100
    python bench.py --suite gpu --out DIR --device cpu --tiny    # every step, tiny (tests/test_bench.py)

The steps run in priority order, each in its own process under its own time limit (STEPS), and append one JSON
line per result to DIR/results.jsonl as soon as it exists: a killed suite keeps what it measured. A step that
fails, runs out of time, or needs CUDA on the CPU is recorded as such, with the reason. The pass / fail
thresholds (THRESHOLDS) and the goals of the GPU issue (GOALS) are fixed here, before any run. Nothing beyond
the core requirements is imported (the GPU machine has no diffusers and no TensorFlow), nothing is downloaded.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback

import torch

import bench

# Pass / fail, decided before any run: bf16 separated attention against the dense masked fp32 reference (max
# abs error, unit-variance q / k / v), the qk-norm + full-rows case likewise, compiled against eager (fp32,
# TF32 off, max abs error of the loss and of the student's gradients relative to their scale)
THRESHOLDS = dict(attention_bf16_max_err=3e-2, qk_norm_full_rows_max_err=3e-2, compiled_rel_err=1e-4)
# the GPU issue's goals, recorded as met or not (not failures)
GOALS = dict(img_per_s_vs_reference=1.8, peak_mem_vs_reference=0.6, as_vs_full_attention=1.0, mfu_xl2=0.40,
             fid50k_hours_one_gpu=2.5)
# (name, time limit in seconds), in priority order
STEPS = [("env", 60), ("attention", 150), ("qk_norm_full_rows", 90), ("sync_audit", 120), ("throughput", 420),
         ("sampler", 180), ("profile", 120), ("compile", 420), ("memory", 150), ("evaluator", 150),
         ("preprocessing", 120), ("train", 240)]


# ------------------------------------------------------------------------------------------------------------
# The driver
# ------------------------------------------------------------------------------------------------------------

def run_suite(args: argparse.Namespace) -> list[dict]:
    """Every step in its own process, one after the other; the records of results.jsonl."""
    if not args.out:
        raise SystemExit("--suite gpu needs --out DIR (the folder of results.jsonl)")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.jsonl")
    for name, limit in STEPS:
        cmd = [sys.executable, os.path.abspath(__file__), name, "--out", args.out, "--device", args.device,
               *(["--tiny"] if args.tiny else [])]
        t0 = time.time()
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=limit,
                                 cwd=os.path.dirname(os.path.abspath(__file__)))
            if res.returncode:
                write(path, dict(step=name, status="error", rc=res.returncode, stderr=res.stderr[-3000:]))
        except subprocess.TimeoutExpired:
            write(path, dict(step=name, status="timeout", limit_s=limit))
        write(path, dict(step=name, status="done", seconds=round(time.time() - t0, 1)))
        print(f"suite: {name} done in {time.time() - t0:.0f} s", flush=True)
    with open(path) as f:
        return [json.loads(line) for line in f]


def write(path: str, record: dict) -> None:
    """One JSON line, on disk at once (a killed suite keeps it)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def main(argv: list[str] | None = None) -> None:
    """One step (the driver's child process)."""
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=[name for name, _ in STEPS])
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args(argv)
    path = os.path.join(args.out, "results.jsonl")
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        for record in globals()[f"step_{args.step}"](dev, args.tiny):
            write(path, dict(step=args.step, **record))
    except Exception as e:  # noqa: BLE001  (the suite records what broke and goes on to the next step)
        write(path, dict(step=args.step, status="error", error=f"{type(e).__name__}: {e}",
                         traceback=traceback.format_exc()[-3000:]))
        raise SystemExit(1) from None


def skipped(reason: str) -> dict:
    return dict(status="skipped", reason=reason)


def bench_rows(argv: list[str]) -> list[dict]:
    """bench.py's rows for a command line, in this process."""
    args = bench.resolved(bench.parse_args(argv))
    rows = []
    for batch_size in args.batch_size:
        rows += bench.run_one(argparse.Namespace(**{**vars(args), "batch_size": batch_size}))
    return rows


def sizes(tiny: bool) -> list[tuple[str, int, int]]:
    """(model, resolution, batch per device): B/2 and XL/2 at 256 px and batch 32, or a tiny model."""
    return [("SiT-T/2", 64, 2)] if tiny else [("SiT-B/2", 256, 32), ("SiT-XL/2", 256, 32)]


def blocks_of(model: str) -> list[str]:
    """--block-out-s / -t within the model (the presets' are for B and XL)."""
    return ["--block-out-s", "2", "--block-out-t", "4"] if model.startswith("SiT-T") else []


# ------------------------------------------------------------------------------------------------------------
# The steps: each yields its records
# ------------------------------------------------------------------------------------------------------------

def step_env(dev: torch.device, tiny: bool):
    rec = dict(torch=torch.__version__, python=platform.python_version(), device=bench.device_name(dev),
               cuda=torch.version.cuda, gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        rec.update(cudnn=torch.backends.cudnn.version(),
                   capability=list(torch.cuda.get_device_capability(dev)),
                   memory_gib=round(props.total_memory / 2 ** 30, 1),
                   multiprocessors=props.multi_processor_count,
                   bf16=torch.cuda.is_bf16_supported(),
                   sdpa=dict(flash=torch.backends.cuda.flash_sdp_enabled(),
                             efficient=torch.backends.cuda.mem_efficient_sdp_enabled(),
                             cudnn=torch.backends.cuda.cudnn_sdp_enabled(),
                             math=torch.backends.cuda.math_sdp_enabled()))
    try:
        from torch.nn.attention import varlen  # noqa: F401
        rec["varlen_attention"] = True
    except ImportError:
        rec["varlen_attention"] = False
    yield dict(status="ok", **rec)


def step_attention(dev: torch.device, tiny: bool):
    """Attention Separation on the device: bf16 against the dense masked fp32 reference, the kernels it
    launches, and fwd + bwd time of per-group SDPA, plain full attention and varlen attention (one kernel for
    all groups), at the B/2 and XL/2 shapes."""
    from models.attention import separated_attention
    from models.groups import SegmentLayout
    from models.reference import dense_masked_attention

    # (name, batch, heads, tokens, head width)
    shapes = [("tiny", 4, 2, 16, 8)]
    if not tiny:
        shapes = [("SiT-B/2", 32, 12, 256, 64), ("SiT-XL/2", 32, 16, 256, 72)]
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    for name, N, H, T, hd in shapes:
        torch.manual_seed(0)
        qkv = torch.randn(N, T, 3, H, hd, device=dev)
        sizes = (T // 4, T - T // 4)
        layout = SegmentLayout.from_perm(torch.rand(N, T, device=dev).argsort(1), sizes, True)
        got = separated_attention(qkv.to(dtype), layout).float()
        # the reference in raster order, groups from the permutation
        ids = (layout.inv_perm >= sizes[0]).long()
        q, k, v = (layout.to_raster(qkv[:, :, i].reshape(N, T, H * hd)).view(N, T, H, hd).transpose(1, 2)
                   for i in range(3))
        want = layout.to_groups(dense_masked_attention(q, k, v, ids).transpose(1, 2).reshape(N, T, H * hd))
        err = (got.reshape(N, T, H * hd) - want).abs().max().item()
        limit = THRESHOLDS["attention_bf16_max_err"]
        yield dict(status="ok" if err <= limit else "fail", shape=name, dtype=str(dtype), max_err=err,
                   limit=limit)
        names = kernel_names(lambda: separated_attention(qkv.to(dtype), layout), dev)
        yield dict(status="ok", shape=name, kernels=names)
        timings = dict(per_group=lambda x: separated_attention(x, layout),
                       full=lambda x: separated_attention(x, None))
        varlen = varlen_attention(layout, N, T)
        if varlen is None:
            yield dict(shape=name, **skipped("torch.nn.attention.varlen needs CUDA and a torch that has it"))
        else:
            timings["varlen"] = varlen
        for kind, fn in timings.items():
            yield dict(status="ok", shape=name, kind=kind, ms_fwd_bwd=time_fwd_bwd(fn, qkv.to(dtype), dev))


def varlen_attention(layout, N: int, T: int):
    """qkv (N, T, 3, H, hd) -> (N, T, H, hd) with every group of every sample as one sequence of a varlen
    call (CUDA, a torch with torch.nn.attention.varlen), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    lengths = torch.tensor(list(layout.sizes) * N, device="cuda")
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).int()
    longest = max(layout.sizes)

    def attend(qkv):
        H = qkv.shape[3]
        hd = qkv.shape[4]
        q, k, v = qkv.reshape(N * T, 3, H, hd).unbind(1)
        return varlen_attn(q, k, v, cu, cu, longest, longest).view(N, T, H, hd)
    return attend


def time_fwd_bwd(fn, x: torch.Tensor, dev: torch.device, reps: int = 10) -> float:
    """ms of fn(x) forward + backward (x's gradient), after two warm-up runs."""
    x = x.detach().requires_grad_()
    for _ in range(2):
        fn(x).float().sum().backward()
    bench.sync(dev)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x).float().sum().backward()
    bench.sync(dev)
    return round(1000 * (time.perf_counter() - t0) / reps, 3)


def kernel_names(fn, dev: torch.device) -> list[str]:
    """The device kernels (on the CPU: the operators) one call of fn launches, in order."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        bench.sync(dev)
    if dev.type == "cuda":
        return [e.name[:100] for e in prof.events() if e.device_type.name == "CUDA"]
    return [e.name for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None]


def step_qk_norm_full_rows(dev: torch.device, tiny: bool):
    """--qk-norm with full-image rows under bf16 autocast (the q / k norm stays fp32, v is bf16): forward and
    backward run and match fp32."""
    import train
    from loss import LossConfig, TrainingLoss
    from models import SiT_models

    model_name = "SiT-T/2" if tiny else "SiT-B/2"
    side = 8 if tiny else 32
    torch.manual_seed(0)
    model = SiT_models[model_name](input_size=side, num_classes=10, qk_norm=True, align_head="ap_head")
    model = model.to(dev)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    ema = train.build_ema(model)
    cfg = LossConfig(align_target="ema", block_out_s=2, block_out_t=4, mask_ratio=[0.5],
                     dual_time_scheduling=True, attention_separation=True, full_sample_prob=0.25)
    loss_fn = TrainingLoss(cfg, num_tokens=model.num_tokens, grid=model.grid, patch=2, num_classes=10,
                           ema=ema)
    x = torch.randn(8, 4, side, side, device=dev)
    y = torch.randint(0, 10, (8,), device=dev)
    losses = {}
    for precision in ("bf16", "fp32"):
        torch.manual_seed(1)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = loss_fn(model, x, y)
        loss.mean().backward()
        losses[precision] = loss.detach().float()
    err = (losses["bf16"] - losses["fp32"]).abs().max().item() / losses["fp32"].abs().max().item()
    limit = THRESHOLDS["qk_norm_full_rows_max_err"]
    yield dict(status="ok" if err <= limit else "fail", rel_err=err, limit=limit)


def step_sync_audit(dev: torch.device, tiny: bool):
    """3 training steps under CUDA's sync debug mode "error": no host synchronisation in the step."""
    if dev.type != "cuda":
        yield skipped("CUDA's sync debug mode needs a GPU")
        return
    for model, res, batch in sizes(tiny)[:1]:
        for method in ("ours", "ours-mix", "self-flow", "sit"):
            rows = bench_rows(["--model", model, "--resolution", str(res), "--batch-size", str(batch),
                               "--device", str(dev), "--method", method, "--steps", "3", "--warmup", "2",
                               "--sync-debug", *blocks_of(model)])
            error = rows[0].get("sync_error")
            yield dict(status="ok" if error is None else "fail", model=model, method=method, sync_error=error)


def step_throughput(dev: torch.device, tiny: bool):
    """Training steps per model: ours, the release's costs (--reference-impl), ours without AS, SiT; img/s,
    peak memory, MFU, and the goals."""
    for model, res, batch in sizes(tiny):
        common = ["--model", model, "--resolution", str(res), "--batch-size", str(batch), "--device",
                  str(dev), "--count-flops", *blocks_of(model),
                  *(["--steps", "1", "--warmup", "1"] if tiny else [])]
        runs = dict(ours=[], reference=["--reference-impl"], no_as=["--no-attention-separation"],
                    sit=["--method", "sit"])
        rows = {}
        for name, extra in runs.items():
            (rows[name],) = bench_rows(common + extra)
            yield dict(status="ok", run=name, **rows[name])
        ours = rows["ours"]
        goals = dict(img_per_s_vs_reference=round(ours["img_per_s"] / rows["reference"]["img_per_s"], 3),
                     as_vs_full_attention=round(rows["no_as"]["img_per_s"] / ours["img_per_s"], 3))
        if "peak_mem_gb" in ours:
            goals["peak_mem_vs_reference"] = round(ours["peak_mem_gb"] / rows["reference"]["peak_mem_gb"], 3)
        if "mfu" in ours and model == "SiT-XL/2":
            goals["mfu_xl2"] = ours["mfu"]
        met = {k: (v >= GOALS[k] if k in ("img_per_s_vs_reference", "mfu_xl2") else v <= GOALS[k])
               for k, v in goals.items()}
        yield dict(status="ok", model=model, goals=goals, met=met)


def step_sampler(dev: torch.device, tiny: bool):
    """The paper's sampler (SDE, CFG 1.8 on t <= 0.7), 50 steps at XL/2 batch 256 (tiny: T/2, batch 4), bf16
    and fp32 with TF32; scaled to 250 steps and to FID-50K on one GPU."""
    model, res, batch = ("SiT-T/2", 64, 4) if tiny else ("SiT-XL/2", 256, 256)
    steps = 5 if tiny else 50
    for precision in ("bf16", "no"):
        (row,) = bench_rows(["--model", model, "--resolution", str(res), "--batch-size", str(batch),
                             "--device", str(dev), "--sampler", "--num-steps", str(steps),
                             "--mixed-precision", precision])
        img_per_s_250 = row["img_per_s"] * steps / 250
        hours = 50_000 / img_per_s_250 / 3600
        yield dict(status="ok", precision=precision, **row, img_per_s_at_250_steps=round(img_per_s_250, 3),
                   fid50k_hours_one_gpu=round(hours, 2), fid50k_hours_8_gpus=round(hours / 8, 2),
                   met=dict(fid50k_hours_one_gpu=hours <= GOALS["fid50k_hours_one_gpu"]))


def step_profile(dev: torch.device, tiny: bool):
    """One training step of ours under the profiler: kernels per step, the busy share, the top kernels."""
    for model, res, batch in sizes(tiny)[:1]:
        (row,) = bench_rows(["--model", model, "--resolution", str(res), "--batch-size", str(batch),
                             "--device", str(dev), "--profile", "--steps", "2", "--warmup", "2",
                             *blocks_of(model)])
        yield dict(status="ok", model=model, profile=row.get("profile"))


def step_compile(dev: torch.device, tiny: bool):
    """torch.compile: the student's and teacher's blocks, and the whole step (fullgraph): img/s against eager,
    and compiled against eager in fp32 (TF32 off). Not on the CPU dry run: inductor's compiles take minutes on
    a small CPU (tests/test_compile.py checks the whole step there)."""
    for model, res, batch in sizes(tiny)[:1]:
        common = ["--model", model, "--resolution", str(res), "--batch-size", str(batch), "--device",
                  str(dev), *blocks_of(model),
                  *(["--steps", "1", "--warmup", "1"] if tiny else ["--steps", "10"])]
        for scope in ("blocks", "step"):
            if dev.type != "cuda":
                yield dict(scope=scope, **skipped("inductor takes minutes on the CPU: tests/test_compile.py"))
                continue
            t0 = time.time()
            (row,) = bench_rows(common + ["--compile", "--compile-scope", scope])
            yield dict(status="ok", scope=scope, first_call_included_s=round(time.time() - t0, 1), **row)
        yield dict(status="ok", eager=bench_rows(common)[0])
        if dev.type == "cuda":
            yield compiled_vs_eager(dev, model, res)


def compiled_vs_eager(dev: torch.device, model_name: str, res: int) -> dict:
    """The step scope against eager, fp32 without TF32, the same draws (eager RNG inside the graph)."""
    import train
    torch.backends.cuda.matmul.allow_tf32 = False
    torch._inductor.config.fallback_random = True
    argv = ["--model", model_name, "--resolution", str(res), "--batch-size", "4", "--device", str(dev),
            "--mixed-precision", "no"]
    args = bench.resolved(bench.parse_args(argv))
    torch.manual_seed(0)
    model, ema, loss_fn, _, _ = bench.setup(args)
    x = torch.randn(4, 4, res // 8, res // 8, device=dev)
    y = torch.randint(0, 1000, (4,), device=dev)
    results = []
    for compiled in (False, True):
        if compiled:
            train.compile_step("step", model, ema, loss_fn)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss, _ = loss_fn(model, x, y)
        loss.mean().backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.grad is not None}))
    (loss0, grads0), (loss1, grads1) = results
    loss_err = ((loss1 - loss0).abs().max() / loss0.abs().max()).item()
    grad_err = max(((grads1[k] - grads0[k]).abs().max() / grads0[k].abs().max().clamp_min(1e-12)).item()
                   for k in grads0)
    limit = THRESHOLDS["compiled_rel_err"]
    ok = loss_err <= limit and grad_err <= limit
    return dict(status="ok" if ok else "fail", check="compiled_vs_eager_fp32", loss_rel_err=loss_err,
                grad_rel_err=grad_err, limit=limit)


def step_memory(dev: torch.device, tiny: bool):
    """XL/2 at batch 64 per GPU (tiny: T/2 at 8): peak memory plain and with --grad-checkpointing."""
    model, res, batch = ("SiT-T/2", 64, 8) if tiny else ("SiT-XL/2", 256, 64)
    for extra in ([], ["--grad-checkpointing"]):
        rows = bench_rows(["--model", model, "--resolution", str(res), "--batch-size", str(batch), "--device",
                           str(dev), "--steps", "2", "--warmup", "1", *blocks_of(model), *extra])
        yield dict(status="ok", **rows[0])


def step_evaluator(dev: torch.device, tiny: bool):
    """The evaluator's torch backend on the full-topology stand-in graph: Inception features per second and
    the hours of FID-50K's sample features."""
    import numpy as np

    from evaluations.inception import load_network
    from fixtures.standin_graph import build_standin_graph

    with tempfile.TemporaryDirectory() as d:
        graph = build_standin_graph(os.path.join(d, "standin.pb"), kind="small" if tiny else "full")
        net = load_network(graph, "torch", str(dev))
        n = 64 if tiny else 2048
        side = 64 if tiny else 256
        images = np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        net.features(images[:64])
        t0 = time.perf_counter()
        for a in range(0, n, 64):
            net.features(images[a:a + 64])
        dt = time.perf_counter() - t0
        net.close()
    yield dict(status="ok", kind="small" if tiny else "full", images=n, images_per_s=round(n / dt, 1),
               fid50k_features_minutes=round(50_000 / (n / dt) / 60, 2))


def step_preprocessing(dev: torch.device, tiny: bool):
    """Encoding a tiny image folder with a random-weight SD-VAE of the real layout (needs diffusers)."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        yield skipped("diffusers is not installed (the SD-VAE's classes come from it)")
        return
    from fixtures import tiny as fixtures_tiny
    from preprocessing.encode import main as encode

    with tempfile.TemporaryDirectory() as d:
        fixtures_tiny.image_folder(os.path.join(d, "train"), classes=2, per_class=4 if tiny else 64)
        fixtures_tiny.tiny_vae(os.path.join(d, "vae"))
        t0 = time.perf_counter()
        rc = encode([os.path.join(d, "train"), os.path.join(d, "out"), "--resolution", "64", "--vae",
                     os.path.join(d, "vae"), "--device", str(dev), "--no-progress"])
        yield dict(status="ok" if rc == 0 else "fail", seconds=round(time.perf_counter() - t0, 2))


def step_train(dev: torch.device, tiny: bool):
    """train.py end to end: the digits preset for 100 steps (tiny: 10), a checkpoint and a lower loss."""
    steps = 10 if tiny else 100
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "train.py", "--preset", "digits", "--max-train-steps", str(steps),
               "--checkpoint-steps", str(steps), "--log-every", str(steps // 2), "--sample-steps", "0",
               "--eval-samples", "0", "--output-dir", d, "--exp-name", "e2e"]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        seconds = time.perf_counter() - t0
        run = os.path.join(d, "e2e")
        rows = []
        if os.path.exists(os.path.join(run, "metrics.jsonl")):
            with open(os.path.join(run, "metrics.jsonl")) as f:
                rows = [json.loads(line) for line in f]
        ok = res.returncode == 0 and os.path.exists(os.path.join(run, "checkpoints", f"{steps:07d}.pt"))
        yield dict(status="ok" if ok else "fail", rc=res.returncode, seconds=round(seconds, 1),
                   losses=[r.get("loss") for r in rows],
                   steps_per_s=rows[-1].get("steps_per_s") if rows else None,
                   stderr=None if ok else res.stderr[-2000:])


if __name__ == "__main__":
    main()
