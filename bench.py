"""The training step in isolation: N real steps (this loss, this model, random latents) -> one JSON line per
run.

    python bench.py --model SiT-B/2 --batch-size 2 --device cpu --count-flops        # FLOPs per image
    python bench.py --model SiT-XL/2 --batch-size 32 --compare --compile              # ours vs the release
    python bench.py --model SiT-XL/2 --batch-size 2 --device cpu --activation-memory  # activations kept

--reference-impl runs the public release's costs with the same math (models/reference.py): conditioning and
adaLN per token, dense attention with a materialised T x T mask, and the EMA teacher running every block.
--compare runs ours, then the reference, in one process and prints both lines plus a line of ratios. The
recipe is the release's unless flags say otherwise (`--method ours`): SRA + DTS + AS, mask ratio 0.25,
teacher sra on the student's groups, student / teacher blocks 3 / 8 (B) or 8 / 20 (L, XL).
`--method sit|sra|self-flow|repa|sra2|ours-mix` measures the other recipes; REPA's encoder (DINOv2-B, random
weights) runs on images as if read from disk (no VAE decoding counted).
"""
import argparse
import contextlib
import json
import platform
import time
from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import train
from loss import REPATarget, TrainingLoss
from models import SIZES, ReferenceSiT, SiT_models, patch_size_of
from presets import METHODS, resolve

# dense, vendor datasheets
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    B = argparse.BooleanOptionalAction
    p.add_argument("--model", default="SiT-B/2", choices=sorted(SiT_models))
    p.add_argument("--batch-size", type=int, nargs="+", default=[32],
                   help="per device; several values: one row each, in one process")
    p.add_argument("--resolution", type=int, default=256, help="image side; latents are resolution / 8")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda, cpu, or meta (with --count-flops: FLOPs without computing anything)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on GPU, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first (default 5 on GPU, 1 on CPU)")
    p.add_argument("--mixed-precision", choices=["bf16", "no"], default=None, help="default bf16 on GPU")
    p.add_argument("--compile", action=B, default=False)
    p.add_argument("--compile-scope", choices=["blocks", "step"], default="blocks",
                   help="what --compile compiles (train.py's --compile-scope)")
    p.add_argument("--count-flops", action=B, default=False, help="FlopCounterMode over one step")
    p.add_argument("--count-ops", action=B, default=False,
                   help="operators dispatched in one step (views not counted, AdamW as one op): ops_per_step")
    p.add_argument("--reference-impl", action=B, default=False, help="the public release's costs")
    p.add_argument("--compare", action=B, default=False, help="ours and --reference-impl side by side")
    p.add_argument("--method", choices=sorted(METHODS), default="ours", help="a recipe of presets.py")
    p.add_argument("--attention-separation", action=B, default=None, help="override the method's AS setting")
    p.add_argument("--sampler", action=B, default=False,
                   help="time the sampler instead: SDE --num-steps, CFG 1.8 on t <= 0.7, batch --batch-size")
    p.add_argument("--num-steps", type=int, default=250, help="sampler steps (with --sampler)")
    p.add_argument("--block-out-s", type=int, default=None)
    p.add_argument("--block-out-t", type=int, default=None)
    p.add_argument("--activation-memory", action=B, default=False,
                   help="bytes the training forward keeps for backward, without and with "
                        "--grad-checkpointing (CPU: saved tensors counted once per storage, no parameters)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="for MFU (default: by device name, bf16 dense)")
    p.add_argument("--grad-checkpointing", action=B, default=False, help="recompute each student block")
    p.add_argument("--sdpa-backend", choices=sorted(SDPA_BACKENDS), default="auto",
                   help="restrict scaled_dot_product_attention to one kernel (auto: PyTorch chooses)")
    p.add_argument("--profile", action=B, default=False,
                   help="profile one step: kernels (operators on the CPU) per step, the device's busy share, "
                        "the top kernels")
    p.add_argument("--sync-debug", action=B, default=False,
                   help="CUDA: a host synchronisation in the timed steps is an error (sync_error in the row)")
    p.add_argument("--json-out", default=None, help="also append each row to this file (JSON lines)")
    p.add_argument("--suite", choices=["gpu"], default=None,
                   help="run the GPU suite (bench_suite.py) instead: every step, its results in --out")
    p.add_argument("--out", default=None, help="--suite: the folder of results.jsonl")
    p.add_argument("--tiny", action=B, default=False, help="--suite: tiny sizes (the CPU dry run)")
    return p.parse_args(argv)


# --sdpa-backend: name -> torch.nn.attention.SDPBackend member (None: PyTorch chooses)
SDPA_BACKENDS = {"auto": None, "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                 "cudnn": "CUDNN_ATTENTION", "math": "MATH"}


def sdpa_context(name: str):
    """The context that restricts SDPA to the --sdpa-backend kernel."""
    if SDPA_BACKENDS[name] is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[name]))


def resolved(args: argparse.Namespace) -> argparse.Namespace:
    """The device-dependent defaults filled in: timed / warm-up steps, precision, TF32 on a GPU."""
    gpu = args.device.startswith("cuda")
    args.steps = args.steps or (20 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    args.mixed_precision = args.mixed_precision or ("bf16" if gpu else "no")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return args


def recipe_args(args: argparse.Namespace) -> argparse.Namespace:
    """train.py's settings for `--method` at this model size: the preset's flags through train.parse_args,
    with bench's block and AS overrides."""
    scale = "xl2" if args.model.startswith(("SiT-XL", "SiT-L")) else "b2"
    argv = ["--preset", f"{args.method}-{scale}", "--model", args.model, "--data-dir", "bench"]
    for flag, value in (("--block-out-s", args.block_out_s), ("--block-out-t", args.block_out_t)):
        argv += [flag, str(value)] if value is not None else []
    if args.attention_separation is not None:
        argv.append("--attention-separation" if args.attention_separation else "--no-attention-separation")
    return train.parse_args(argv)


def setup(args: argparse.Namespace, reference: bool = False) -> tuple:
    """Model, EMA, loss and optimizer for `--method`, built by train.py's own builders on random latents of
    the ImageNet shape (1000 classes).

    reference: the loss runs the student and the EMA teacher at the release's costs (models/reference.py)."""
    dev = torch.device(args.device)
    run = recipe_args(args)
    data = SimpleNamespace(latent_size=args.resolution // 8, latent_channels=4, num_classes=1000,
                           is_latent=True)
    target = None
    if run.align_target == "repa":
        # DINOv2-B (random weights) on images as if read from disk: REPA's setup
        from models.dinov2 import build_dinov2
        encoder = build_dinov2("dinov2_vitb14").to(dev).requires_grad_(False).eval()
        images = torch.rand(args.batch_size, 3, args.resolution, args.resolution, device=dev) * 2 - 1
        target = REPATarget(encoder, to_images=lambda x0: images)
    elif run.align_target == "sra2":
        target = train.build_target(run, data, dev)
    model = train.build_model(run, data, target).to(dev)
    model.grad_checkpointing = args.grad_checkpointing
    ema = train.build_ema(model)
    opt = train.build_optimizer(run, model)
    student = ReferenceSiT(model) if reference else model
    loss_fn = train.build_loss(run, model, data, target, ReferenceSiT(ema) if reference else ema)
    if args.compile:
        train.compile_step(args.compile_scope, model, ema, loss_fn)
    return student, ema, loss_fn, opt, (run.block_out_s, run.block_out_t)


class OpCounter(TorchDispatchMode):
    """Counts the operators dispatched (on a GPU, each is at least one kernel launch); views are not counted
    (they launch nothing). While `one_op` is set (the optimizer step, a single fused multi-tensor kernel on a
    GPU) nothing is counted; the caller adds one."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.one_op = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        view = any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
        if not (view or self.one_op):
            self.ops += 1
        return out


def count_ops_per_step(args: argparse.Namespace, reference: bool) -> int:
    """Operators of one training step (loss, backward, clipping, AdamW as one, the EMA update) on the CPU,
    after one step that warms caches."""
    cpu = argparse.Namespace(**{**vars(args), "device": "cpu", "compile": False, "mixed_precision": "no"})
    torch.manual_seed(0)
    model, ema, loss_fn, opt, _ = setup(cpu, reference)
    counter = OpCounter()
    real_step = opt.step

    def fused_step(*a, **kw):
        counter.ops += 1
        counter.one_op = True
        try:
            return real_step(*a, **kw)
        finally:
            counter.one_op = False

    opt.step = fused_step
    step = make_step(cpu, model, ema, loss_fn, opt)
    step()
    counter.ops = 0
    with counter:
        step()
    return counter.ops


def make_step(args: argparse.Namespace, model: torch.nn.Module, ema: torch.nn.Module, loss_fn: TrainingLoss,
              opt: torch.optim.Optimizer) -> Callable[[], None]:
    """One training step as train.train_step runs it on one device: the loss (student and target) under
    autocast, backward, clipping, AdamW, then train.py's EMA update."""
    dev = next(model.parameters()).device
    params = list(model.parameters())
    bf16 = args.mixed_precision == "bf16"
    x = torch.randn(args.batch_size, 4, args.resolution // 8, args.resolution // 8, device=dev)
    y = torch.randint(0, 1000, (args.batch_size,), device=dev)
    raw = model.model if isinstance(model, ReferenceSiT) else model
    update_ema = train.ema_updater(raw, ema, 0.9999)

    def step() -> None:
        with torch.autocast("cuda" if dev.type == "cuda" else "cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = loss_fn(model, x, y)
        loss.mean().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        update_ema()
    return step


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "meta":
        return "meta (FLOPs only)"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def count_gflops_per_img(args: argparse.Namespace, reference: bool) -> float:
    """FlopCounterMode over one step built on the meta device: the same code path, nothing computed, and every
    attention kernel counted (CPU's fused SDPA kernel has no FLOP formula, so counting on CPU would miss
    it)."""
    meta = argparse.Namespace(**{**vars(args), "device": "meta", "compile": False})
    with torch.device("meta"):
        model, ema, loss_fn, opt, _ = setup(meta, reference)
        step = make_step(meta, model, ema, loss_fn, opt)
        with FlopCounterMode(display=False) as fc:
            step()
    return round(fc.get_total_flops() / 1e9 / args.batch_size, 2)


def bench_one(args: argparse.Namespace, reference: bool) -> dict:
    """One row: the recipe, FLOPs / operators when asked, and img/s, ms per step, peak memory and MFU of
    --steps timed steps after --warmup (with --sdpa-backend, --sync-debug, --profile as asked)."""
    torch.manual_seed(0)
    with torch.device(args.device if args.device == "meta" else "cpu"):
        model, ema, loss_fn, opt, (s, t) = setup(args, reference)
    dev = next(model.parameters()).device
    step = make_step(args, model, ema, loss_fn, opt)
    out = dict(model=args.model, impl="reference" if reference else "ours", batch_size=args.batch_size,
               resolution=args.resolution, device=device_name(dev),
               torch=torch.__version__, mixed_precision=args.mixed_precision, compile=args.compile,
               compile_scope=args.compile_scope if args.compile else None, sdpa_backend=args.sdpa_backend,
               grad_checkpointing=args.grad_checkpointing,
               recipe=dict(method=args.method, groups=list(loss_fn.sizes),
                           dts=loss_fn.cfg.dual_time_scheduling,
                           attention_separation=loss_fn.cfg.attention_separation, block_out_s=s,
                           block_out_t=t))
    if args.count_flops:
        out["gflops_per_img"] = count_gflops_per_img(args, reference)
    if args.count_ops:
        out["ops_per_step"] = count_ops_per_step(args, reference)
    if dev.type == "meta":
        # counts only: nothing to time
        return out
    with sdpa_context(args.sdpa_backend):
        for _ in range(args.warmup):
            step()
        sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        try:
            with sync_debug(args.sync_debug and dev.type == "cuda"):
                for _ in range(args.steps):
                    step()
        except RuntimeError as e:
            out["sync_error"] = str(e).splitlines()[0]
            return out
        sync(dev)
        dt = (time.perf_counter() - t0) / args.steps
        if args.profile:
            out["profile"] = profile_step(step, dev)
    out.update(ms_per_step=round(1000 * dt, 2), img_per_s=round(args.batch_size / dt, 2))
    if args.sync_debug and dev.type == "cuda":
        out["sync_error"] = None
    if dev.type == "cuda":
        out["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(dev) / 2 ** 30, 2)
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in out["device"]), None)
        if peak and "gflops_per_img" in out:
            out["mfu"] = round(out["gflops_per_img"] * out["img_per_s"] / 1e3 / peak, 4)
    return out


@contextlib.contextmanager
def sync_debug(on: bool):
    """CUDA's sync debug mode "error" inside the block: a host synchronisation raises."""
    if not on:
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def profile_step(step: Callable[[], None], dev: torch.device, top: int = 10) -> dict:
    """One step under torch.profiler: kernels launched (on the CPU: operators run), the device's busy time
    over the wall time, and the `top` kernels by time."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        step()
        sync(dev)
    wall = time.perf_counter() - t0
    if dev.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
        busy = sum(e.device_time for e in kernels) / 1e6
    else:
        kernels = [e for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None]
        busy = sum(e.cpu_time_total for e in kernels) / 1e6
    totals = {}
    for e in kernels:
        totals[e.name] = totals.get(e.name, 0.0) + (e.device_time if dev.type == "cuda" else e.cpu_time_total)
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return dict(kernels_per_step=len(kernels), wall_ms=round(1000 * wall, 2),
                busy_share=round(min(busy / wall, 1.0), 4) if wall else None,
                top=[dict(name=name[:120], ms=round(us / 1000, 3)) for name, us in ranked])


def activation_memory(args: argparse.Namespace) -> dict:
    """The bytes one training forward (student, EMA teacher, loss) keeps alive for backward, plain and with
    every student block recomputed in backward: each storage saved for backward once (autograd's saved-tensor
    hooks), parameters excluded, plus the block inputs that recomputation keeps. CPU (real storages), fp32 or
    bf16."""
    if args.device != "cpu":
        raise SystemExit("--activation-memory counts storages on the CPU: add --device cpu")
    torch.manual_seed(0)
    model, ema, loss_fn, _, (s, t) = setup(args)
    x = torch.randn(args.batch_size, 4, args.resolution // 8, args.resolution // 8)
    y = torch.randint(0, 1000, (args.batch_size,))
    params = {p.untyped_storage().data_ptr() for p in [*model.parameters(), *ema.parameters()]}
    out = dict(model=args.model, batch_size=args.batch_size, resolution=args.resolution,
               torch=torch.__version__, mixed_precision=args.mixed_precision,
               recipe=dict(method=args.method, block_out_s=s, block_out_t=t))
    for recompute in (False, True):
        model.grad_checkpointing = recompute
        kept = {}

        def keep(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                kept[storage.data_ptr()] = storage.nbytes()
            return t

        hooks = [b.register_forward_pre_hook(lambda m, a: [keep(a[0])] and None) for b in model.blocks]
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16"):
            loss, _ = loss_fn(model, x, y)
        for h in hooks:
            h.remove()
        out["saved_bytes_grad_checkpointing" if recompute else "saved_bytes"] = sum(kept.values())
        del loss
    out["saved_gib"] = round(out["saved_bytes"] / 2 ** 30, 3)
    out["saved_gib_grad_checkpointing"] = round(out["saved_bytes_grad_checkpointing"] / 2 ** 30, 3)
    out["ratio"] = round(out["saved_bytes_grad_checkpointing"] / out["saved_bytes"], 4)
    return out


@torch.no_grad()
def bench_sampler(args: argparse.Namespace, reference: bool) -> dict:
    """SDE sampling img/s (SiT sampler settings of the paper: CFG 1.8 on t <= 0.7), per-sample
    conditioning."""
    from samplers import sample
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = SiT_models[args.model](input_size=args.resolution // 8, in_channels=4, num_classes=1000)
    model = model.to(dev).eval()
    net = ReferenceSiT(model) if reference else model
    z = torch.randn(args.batch_size, 4, args.resolution // 8, args.resolution // 8, device=dev)
    y = torch.randint(0, 1000, (args.batch_size,), device=dev)
    kw = dict(mode="sde", num_steps=args.num_steps, cfg_scale=1.8, guidance_high=0.7,
              bf16=args.mixed_precision == "bf16")
    # warm-up
    sample(net, z[:2], y[:2], **{**kw, "num_steps": 2})
    sync(dev)
    t0 = time.perf_counter()
    sample(net, z, y, **kw)
    sync(dev)
    dt = time.perf_counter() - t0
    return dict(model=args.model, impl="reference" if reference else "ours", mode="sampler",
                batch_size=args.batch_size, num_steps=args.num_steps, device=device_name(dev),
                torch=torch.__version__, mixed_precision=args.mixed_precision, seconds=round(dt, 2),
                img_per_s=round(args.batch_size / dt, 3))


def check_args(args: argparse.Namespace) -> None:
    """Flag values that would crash inside torch, refused in one line naming the flag."""
    for flag, value, low in (("--batch-size", min(args.batch_size), 1), ("--steps", args.steps, 1),
                             ("--warmup", args.warmup, 0), ("--num-steps", args.num_steps, 1)):
        if value is not None and value < low:
            raise SystemExit(f"{flag} must be >= {low}, got {value}")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise SystemExit(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    # VAE factor x patch: whole patches of latent
    step = 8 * patch_size_of(args.model)
    if args.resolution < step or args.resolution % step:
        raise SystemExit(f"--resolution {args.resolution}: {args.model} needs a positive multiple of {step} "
                         f"(latent side resolution / 8 in whole patches of {patch_size_of(args.model)})")
    try:
        dev = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise SystemExit(f"--device {args.device!r} is not a device (cpu, cuda, cuda:N, meta)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA GPU is visible here (use --device cpu)")
    depth = SIZES[args.model.split("-")[1].split("/")[0]][0]
    scale = "xl2" if args.model.startswith(("SiT-XL", "SiT-L")) else "b2"
    preset = resolve(f"{args.method}-{scale}")
    used = [("--block-out-s", "block_out_s")]
    if preset["align_target"] == "ema":
        used.append(("--block-out-t", "block_out_t"))
    for flag, key in used if preset["align_target"] != "none" else []:
        block = preset[key] if getattr(args, key) is None else getattr(args, key)
        if not 1 <= block <= depth:
            given = "" if getattr(args, key) is not None else f" (the {args.method}-{scale} preset's)"
            raise SystemExit(f"{flag} {block}{given} is outside {args.model}'s blocks 1..{depth}")


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.suite:
        import bench_suite
        return bench_suite.run_suite(args)
    check_args(args)
    args = resolved(args)
    rows = []
    for batch_size in args.batch_size:
        rows += run_one(argparse.Namespace(**{**vars(args), "batch_size": batch_size}))
    return rows


def run_one(args: argparse.Namespace) -> list[dict]:
    """The rows of one batch size: activation memory, or ours / the reference (and their ratios)."""
    if args.activation_memory:
        return emit(args, [activation_memory(args)])
    runs = [False, True] if args.compare else [args.reference_impl]
    if args.device == "meta" and not (args.count_flops or args.count_ops):
        raise SystemExit("--device meta only counts: add --count-flops or --count-ops")
    results = [(bench_sampler if args.sampler else bench_one)(args, ref) for ref in runs]
    if not args.compare:
        return emit(args, results)
    ours, ref = results
    ratio = dict(model=args.model, batch_size=args.batch_size)
    for key, name in (("img_per_s", "img_per_s_ratio"), ("peak_mem_gb", "peak_mem_ratio"),
                      ("gflops_per_img", "gflops_ratio"), ("ops_per_step", "ops_ratio")):
        if key in ours and key in ref:
            ratio[name] = round(ours[key] / ref[key], 3)
    # the two rows, and the line of ratios printed after them
    emit(args, [*results, ratio])
    return results


def emit(args: argparse.Namespace, rows: list[dict]) -> list[dict]:
    """Each row as one JSON line on stdout (and appended to --json-out)."""
    for row in rows:
        print(json.dumps(row), flush=True)
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


if __name__ == "__main__":
    main()
