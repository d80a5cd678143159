"""The training step in isolation: N real steps (this loss, this model, random latents) -> one JSON line per run.

    python bench.py --model SiT-B/2 --batch-size 2 --device cpu --count-flops           # FLOPs per image
    python bench.py --model SiT-XL/2 --batch-size 32 --compare --compile                  # ours vs the release's costs

--reference-impl runs the public release's costs with the same math: conditioning and adaLN per token, dense
attention with a materialised T x T mask, and the EMA teacher running every block. --compare runs ours, then the
reference, in one process and prints both lines plus a line of ratios. The recipe is the release's unless flags say
otherwise: SRA + DTS + AS, mask ratio 0.25, teacher sra with the mask, student / teacher blocks 3 / 8 (B) or
8 / 20 (L, XL).
"""
import argparse
import json
import platform
import time
from copy import deepcopy

import torch
from torch.utils.flop_counter import FlopCounterMode

from loss import TrainingLoss
from models import SiT_models

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}       # dense, vendor datasheets


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    B = argparse.BooleanOptionalAction
    p.add_argument("--model", default="SiT-B/2", choices=sorted(SiT_models))
    p.add_argument("--batch-size", type=int, default=32, help="per device")
    p.add_argument("--resolution", type=int, default=256, help="image side; latents are resolution / 8")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on GPU, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 on GPU, 1 on CPU)")
    p.add_argument("--mixed-precision", choices=["bf16", "no"], default=None, help="default bf16 on GPU")
    p.add_argument("--compile", action=B, default=False)
    p.add_argument("--count-flops", action=B, default=False, help="FlopCounterMode over one step")
    p.add_argument("--reference-impl", action=B, default=False, help="the public release's costs")
    p.add_argument("--compare", action=B, default=False, help="ours and --reference-impl side by side")
    p.add_argument("--mask-ratio", type=float, nargs="+", default=[0.25])
    p.add_argument("--dual-time-scheduling", action=B, default=True)
    p.add_argument("--attention-separation", action=B, default=True)
    p.add_argument("--use-alignment-loss", action=B, default=True)
    p.add_argument("--teacher-t", default="sra")
    p.add_argument("--block-out-s", type=int, default=None)
    p.add_argument("--block-out-t", type=int, default=None)
    p.add_argument("--peak-tflops", type=float, default=None, help="for MFU (default: by device name, bf16 dense)")
    return p.parse_args(argv)


def setup(args):
    dev = torch.device(args.device)
    model = SiT_models[args.model](input_size=args.resolution // 8, in_channels=4, num_classes=1000,
                                   align_head="ap_head" if args.use_alignment_loss else None).to(dev)
    deep = model.depth > 12
    s = args.block_out_s or (8 if deep else 3)
    t = args.block_out_t or (20 if deep else 8)
    groups = any(0 < r < 1 for r in args.mask_ratio) or len(args.mask_ratio) > 1
    loss_fn = TrainingLoss(num_tokens=model.num_tokens, grid=model.grid, patch=model.patch_size, num_classes=1000,
                           use_alignment_loss=args.use_alignment_loss, block_out_s=s, block_out_t=t,
                           mask_ratio=args.mask_ratio, dual_time_scheduling=args.dual_time_scheduling and groups,
                           attention_separation=args.attention_separation and groups, teacher_t=args.teacher_t,
                           teacher_mask=groups and args.teacher_t != "self_flow")
    ema = deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0, fused=dev.type == "cuda")
    if args.compile:
        for block in model.blocks:
            block.compile()
    return model, ema, loss_fn, opt, (s, t)


def make_step(args, model, ema, loss_fn, opt, reference):
    dev = next(model.parameters()).device
    params, ema_params = list(model.parameters()), list(ema.parameters())
    bf16 = args.mixed_precision == "bf16"
    x = torch.randn(args.batch_size, 4, args.resolution // 8, args.resolution // 8, device=dev)
    y = torch.randint(0, 1000, (args.batch_size,), device=dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = loss_fn(model, x, y, ema=ema, reference=reference)
        loss.mean().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch._foreach_lerp_(ema_params, params, 1e-4)
    return step


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench_one(args, reference: bool) -> dict:
    torch.manual_seed(0)
    model, ema, loss_fn, opt, (s, t) = setup(args)
    dev = next(model.parameters()).device
    step = make_step(args, model, ema, loss_fn, opt, reference)
    out = dict(model=args.model, impl="reference" if reference else "ours", batch_size=args.batch_size,
               resolution=args.resolution, device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else
               f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
               torch=torch.__version__, mixed_precision=args.mixed_precision, compile=args.compile,
               recipe=dict(mask_ratio=args.mask_ratio, dts=loss_fn.dual_time_scheduling,
                           attention_separation=loss_fn.attention_separation, alignment=args.use_alignment_loss,
                           teacher_t=args.teacher_t, block_out_s=s, block_out_t=t))
    if args.count_flops:
        with FlopCounterMode(display=False) as fc:
            step()
        out["gflops_per_img"] = round(fc.get_total_flops() / 1e9 / args.batch_size, 2)
    for _ in range(args.warmup):
        step()
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(dev)
    dt = (time.perf_counter() - t0) / args.steps
    out.update(ms_per_step=round(1000 * dt, 2), img_per_s=round(args.batch_size / dt, 2))
    if dev.type == "cuda":
        out["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(dev) / 2 ** 30, 2)
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in out["device"]), None)
        if peak and "gflops_per_img" in out:
            out["mfu"] = round(out["gflops_per_img"] * out["img_per_s"] / 1e3 / peak, 4)
    return out


def main(argv=None):
    args = parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.steps = args.steps or (20 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    args.mixed_precision = args.mixed_precision or ("bf16" if gpu else "no")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    runs = [False, True] if args.compare else [args.reference_impl]
    results = [bench_one(args, ref) for ref in runs]
    for r in results:
        print(json.dumps(r))
    if args.compare:
        ours, ref = results
        ratio = dict(model=args.model, img_per_s_ratio=round(ours["img_per_s"] / ref["img_per_s"], 3))
        if "peak_mem_gb" in ours:
            ratio["peak_mem_ratio"] = round(ours["peak_mem_gb"] / ref["peak_mem_gb"], 3)
        if "gflops_per_img" in ours:
            ratio["gflops_ratio"] = round(ours["gflops_per_img"] / ref["gflops_per_img"], 3)
        print(json.dumps(ratio))
    return results


if __name__ == "__main__":
    main()
