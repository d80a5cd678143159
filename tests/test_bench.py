"""bench.py's FLOP accounting (meta device: nothing is computed): ours vs the public release's costs."""
import pytest

import bench


def test_b2_release_recipe_flops_against_the_release():
    ours, ref = bench.main(["--model", "SiT-B/2", "--batch-size", "2", "--device", "meta", "--count-flops",
                            "--compare"])
    assert ours["recipe"]["groups"] == [64, 192] and ours["recipe"]["attention_separation"]
    # SRA + DTS + AS, student 3 / teacher 8
    assert ours["gflops_per_img"] <= 180
    # the release: per-token adaLN, full teacher (279)
    assert 270 <= ref["gflops_per_img"] <= 285


@pytest.mark.parametrize("method,low,high", [("sit", 135, 141), ("sra2", 1.0, 1.06), ("repa", 1.3, 1.5)])
def test_method_overheads(method, low, high):
    (sit,) = bench.main(["--model", "SiT-B/2", "--batch-size", "1", "--device", "meta", "--count-flops",
                         "--method", "sit"])
    (other,) = bench.main(["--model", "SiT-B/2", "--batch-size", "1", "--device", "meta", "--count-flops",
                           "--method", method])
    value = other["gflops_per_img"] if method == "sit" else other["gflops_per_img"] / sit["gflops_per_img"]
    assert low <= value <= high, value


def test_activation_memory_with_and_without_grad_checkpointing():
    """Recomputing every block keeps at least the blocks' inputs (depth x N x T x D fp32) and much less in
    all."""
    (r,) = bench.main(["--model", "SiT-B/2", "--batch-size", "2", "--resolution", "64", "--device", "cpu",
                       "--activation-memory"])
    # B/2 at 64 px: 12 blocks, 16 tokens, width 768
    block_inputs = 12 * 2 * 16 * 768 * 4
    assert block_inputs <= r["saved_bytes_grad_checkpointing"] < r["saved_bytes"] / 4


def test_the_gpu_suite_runs_every_step_on_the_cpu(tmp_path):
    """The CPU dry run of `bench.py --suite gpu` (tiny sizes): every step leaves its records in
    results.jsonl, none fails; the steps that need CUDA say so."""
    import json
    import os
    import subprocess
    import sys

    import bench_suite

    cmd = [sys.executable, "bench.py", "--suite", "gpu", "--out", str(tmp_path), "--device", "cpu", "--tiny"]
    root = os.path.dirname(os.path.abspath(bench.__file__))
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
    assert [r["step"] for r in rows if r["status"] == "done"] == [name for name, _ in bench_suite.STEPS]
    assert not [r for r in rows if r["status"] in ("error", "timeout", "fail")]
    skipped = {r["step"]: r["reason"] for r in rows if r["status"] == "skipped"}
    assert "GPU" in skipped["sync_audit"] and "varlen" in skipped["attention"]
    results = {r["step"] for r in rows if r["status"] == "ok"}
    assert results >= {"env", "attention", "qk_norm_full_rows", "throughput", "sampler", "profile", "memory",
                       "evaluator", "train"}
