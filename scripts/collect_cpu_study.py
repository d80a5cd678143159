"""The CPU ablation study's table and figure (scripts/ablations_cpu.sh): mean and spread over seeds, paired
differences for each of the paper's claims with a verdict, the paper's numbers beside.

    python scripts/collect_cpu_study.py [RESULTS_DIR] [--out DIR]       # default results/cpu-study

Reads RESULTS_DIR/cpu-SETTING-sSEED/STEP-TAG/digits.json (evaluations/digits_metric.py --reference heldout)
and the sampling.json next to it (checkpoint -> run, step), and RESULTS_DIR/study.json when present (the
study's size and wall time). Writes OUT/cpu_study.md (also printed), OUT/cpu_study.png (digits FD, accuracy
and memorisation against training steps, one line per setting, the band = mean +- one standard deviation over
seeds) and OUT/cpu_study.json (every number of the table).

Points: the run's steps S/8, S/2, S stand for the paper's 100K, 400K, 800K of 800K. The metric: fd = Frechet
distance of the samples to the held-out digits in the classifier's features (lower is better, the FID
analogue), accuracy = share classified as their label, memorisation = share of samples nearer to a training
digit than to any held-out digit (the real held-out digits' own share is printed beside it).

A claim compares two settings by their paired difference over seeds (the same seed gives both runs the same
initial weights and data order): d_k = fd(A, seed k) - fd(B, seed k), mean d, standard deviation s_d and the
two-sided 95% interval mean d +- t(0.975, K-1) s_d / sqrt(K). Verdicts from that interval, fixed before any
run:
  "A worse than B" claims  reproduced if the interval lies above 0, not reproduced if it lies below 0, else
                           not resolvable at this scale;
  "A not worse than B"     reproduced if the interval lies below 0 (A better), not reproduced if above 0 (A
                           worse), else not resolvable (a difference within the seed spread: consistent with
                           the claim but no evidence either way at this scale).
"""
import argparse
import glob
import json
import math
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# the repository root is not on the path of scripts/
from infra.fileio import atomic_write_json, atomic_write_text  # noqa: E402

DASH = "–"
RUN_RE = re.compile(r"^cpu-(.+)-s(\d+)$")
METRICS = [("fd", "digits FD", 2), ("accuracy", "accuracy", 3), ("memorisation", "memorisation", 3)]
# of the run: the paper's 100K / 400K / 800K of 800K
POINTS = ("1/8", "1/2", "1")
PAPER_STEPS = {"1/8": "100K", "1/2": "400K", "1": "800K"}

# The paper's FID-10K (SiT-B/2, 800K steps), by setting and point; Table 4's FID-50K (XL/2, 4M steps, CFG).
PAPER = {
    "dual-full-r0.25": {"1/8": 58.16, "1/2": 30.20, "1": 25.19},
    "dual-as-r0.25": {"1/8": 58.57, "1/2": 29.89, "1": 25.06},
    "single-full-r0.25": {"1/8": 62.95, "1/2": 32.10, "1": 26.34},
    "single-as-r0.25": {"1/8": 62.39, "1/2": 32.45, "1": 25.81},
    "dual-full-r0.35": {"1": 24.87},
    "dual-as-r0.35": {"1": 27.50},
    "dual-full-r0.5": {"1": 24.39},
    "dual-as-r0.5": {"1": 38.19},
    "dual-as-r0.5-rho0.25": {"1": 24.15},
}
PAPER_SYSTEM = {"sra": 1.58, "self-flow": 1.47, "ours": 1.44}
# the method (SRA + DTS + AS, alpha 0.25) is this ablation run
OURS = "dual-as-r0.25"

TABLES = [
    ("Table 1: dual timesteps, mask ratio 0.25", ["dual-full-r0.25", "dual-as-r0.25"]),
    ("Table 2: one timestep (AS as augmentation)", ["single-full-r0.25", "single-as-r0.25"]),
    ("Table 3: mask ratio and full-image mixing", ["dual-full-r0.5", "dual-as-r0.5", "dual-as-r0.5-rho0.25",
                                                    "dual-full-r0.35", "dual-as-r0.35"]),
    ("The method against its baselines", ["sit", "sra", "self-flow", OURS]),
]
# (claim, setting A, setting B, kind): kind "worse" = the paper finds A worse than B, "not-worse" = A is not
# worse than B
CLAIMS = [
    ("Table 1: with dual timesteps at alpha 0.25, AS is not worse than full attention (25.06 vs 25.19)",
     "dual-as-r0.25", "dual-full-r0.25", "not-worse"),
    ("Table 2: with one timestep, AS is not worse than full attention (25.81 vs 26.34)",
     "single-as-r0.25", "single-full-r0.25", "not-worse"),
    ("Table 3: at alpha 0.5, AS is much worse than full attention (38.19 vs 24.39)",
     "dual-as-r0.5", "dual-full-r0.5", "worse"),
    ("Table 3: at alpha 0.5, AS without full-image samples is worse than AS with rho 0.25 (38.19 vs 24.15)",
     "dual-as-r0.5", "dual-as-r0.5-rho0.25", "worse"),
    ("Table 3: at alpha 0.35, AS is worse than full attention (27.50 vs 24.87)",
     "dual-as-r0.35", "dual-full-r0.35", "worse"),
    ("Table 4: ours is not worse than Self-Flow (1.44 vs 1.47)", OURS, "self-flow", "not-worse"),
    ("Table 4: ours is not worse than SRA (1.44 vs 1.58)", OURS, "sra", "not-worse"),
    ("ours is not worse than vanilla SiT (the paper's premise; SiT is not in its Table 4)", OURS, "sit",
     "not-worse"),
]
NAMES = {"sit": "SiT (vanilla)", "sra": "SRA", "self-flow": "Self-Flow (DTS + full attn, teacher t_lo)",
         OURS: "dual t, AS, alpha 0.25 = ours (SRA + DTS + AS)"}

# two-sided 95% Student t quantiles t(0.975, df), df = K - 1 (scipy.stats.t.ppf(0.975, df))
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def setting_name(setting: str) -> str:
    if setting in NAMES:
        return NAMES[setting]
    m = re.match(r"^(dual|single)-(full|as)-r([0-9.]+)(?:-rho([0-9.]+))?$", setting)
    if not m:
        return setting
    text = f"{m.group(1)} t, {'AS' if m.group(2) == 'as' else 'full attn'}, alpha {float(m.group(3)):g}"
    return text + (f", rho {float(m.group(4)):g}" if m.group(4) else "")


# ---- reading -----------------------------------------------------------------------------------------------

def load(root: str) -> list:
    """Every digits record of the study: dicts with setting, seed, step, and the metric values."""
    if not os.path.isdir(root):
        raise SystemExit(f"error: results folder not found: {root}")
    out = []
    for path in sorted(glob.glob(os.path.join(root, "cpu-*", "*", "digits.json"))):
        sampling = os.path.join(os.path.dirname(path), "sampling.json")
        try:
            with open(path) as f:
                rec = json.load(f)
            with open(sampling) as f:
                s = json.load(f)
        except (OSError, ValueError) as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        ckpt = s["checkpoint"]
        m = RUN_RE.match(os.path.basename(os.path.dirname(os.path.dirname(ckpt))))
        if not m or rec.get("reference") != "heldout":
            print(f"skipping {path}: not a cpu-SETTING-sSEED run scored against the held-out digits",
                  file=sys.stderr)
            continue
        out.append(dict(setting=m.group(1), seed=int(m.group(2)), step=int(s["settings"]["steps"]),
                        n=int(rec["n"]), memorisation_real=rec.get("memorisation_real"),
                        fd_floor=rec.get("fd_train_same_n"), heldout_accuracy=rec.get("heldout_accuracy"),
                        **{k: rec.get(k) for k, _, _ in METRICS}))
    return out


def point_of(step: int, last: int) -> str | None:
    for label, frac in (("1/8", 8), ("1/2", 2), ("1", 1)):
        if step * frac == last:
            return label
    return None


# ---- statistics --------------------------------------------------------------------------------------------

def mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation (ddof 1; None for one value), count); (None, None, 0) when empty."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, std, len(values)


def paired(a: dict, b: dict) -> dict:
    """a, b: seed -> value. Paired differences a - b over the seeds both have: dict(mean, std, k, lo, hi)."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds if a[s] is not None and b[s] is not None]
    mean, std, k = mean_std(diffs)
    if k < 2:
        return dict(mean=mean, std=std, k=k, lo=None, hi=None)
    half = T975.get(k - 1, 1.96) * std / math.sqrt(k)
    return dict(mean=mean, std=std, k=k, lo=mean - half, hi=mean + half)


UNRESOLVED = "not resolvable at this scale (difference within the seed spread)"


def verdict(diff: dict, kind: str) -> str:
    if diff["lo"] is None:
        return "not resolvable at this scale (fewer than 2 paired seeds)"
    above, below = diff["lo"] > 0, diff["hi"] < 0
    if kind == "worse":
        if above:
            return "reproduced"
        return "not reproduced (the opposite: significantly better)" if below else UNRESOLVED
    if below:
        return "reproduced (significantly better)"
    return "not reproduced (significantly worse)" if above else UNRESOLVED


# ---- the table ---------------------------------------------------------------------------------------------

def fmt(v: float | None, digits: int) -> str:
    return DASH if v is None else f"{v:.{digits}f}"


def fmt_ms(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return DASH
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def summarise(records: list) -> dict:
    """cells[setting][point][metric] = dict(mean, std, k, per_seed); steps[point] = step; claims = [...]."""
    last = max(r["step"] for r in records)
    steps, cells = {}, {}
    for r in records:
        point = point_of(r["step"], last)
        if point is None:
            continue
        steps[point] = r["step"]
        cell = cells.setdefault(r["setting"], {}).setdefault(point, {})
        for metric, _, _ in METRICS:
            cell.setdefault(metric, {})[r["seed"]] = r[metric]
    for setting in cells.values():
        for point in setting.values():
            for metric, per_seed in list(point.items()):
                mean, std, k = mean_std(list(per_seed.values()))
                point[metric] = dict(mean=mean, std=std, k=k, per_seed=per_seed)
    claims = []
    for text, a, b, kind in CLAIMS:
        row = dict(claim=text, a=a, b=b, kind=kind, points={})
        for point in POINTS:
            ca, cb = cells.get(a, {}).get(point), cells.get(b, {}).get(point)
            if ca and cb:
                row["points"][point] = {m: paired(ca[m]["per_seed"], cb[m]["per_seed"])
                                        for m, _, _ in METRICS}
        final = row["points"].get("1")
        row["verdict"] = verdict(final["fd"], kind) if final else "not run"
        claims.append(row)
    refs = dict(memorisation_real=next((r["memorisation_real"] for r in records), None),
                heldout_accuracy=next((r["heldout_accuracy"] for r in records), None),
                fd_floor=mean_std([r["fd_floor"] for r in records])[0], n=sorted({r["n"] for r in records}))
    return dict(steps=steps, last=last, cells=cells, claims=claims, references=refs)


def render(summary: dict, study: dict | None = None) -> str:
    cells = summary["cells"]
    steps = summary["steps"]
    refs = summary["references"]
    seeds = sorted({s for st in cells.values() for p in st.values() for s in p["fd"]["per_seed"]})
    parts = ["# The paper's ablations at small scale: SiT-N/2 on the embedded digits", ""]
    if study:
        g = study.get
        parts += [f"Study: {g('model')} on {g('data_dir')}, {g('steps')} steps of batch {g('batch_size')}, "
                  f"lr {g('learning_rate')}, EMA decay {g('ema_decay')}, {g('num_samples')} samples per "
                  f"evaluation ({g('sampler')}), seeds {g('seeds')}; wall time {g('wall_seconds')} s with "
                  f"{g('jobs')} jobs (load average {g('load_before')} before, {g('load_after')} after).", ""]
    parts += [f"Seeds found: {seeds}. Cells: mean ± standard deviation over seeds. Points: "
              + ", ".join(f"{p} of the run = step {steps[p]} (paper {PAPER_STEPS[p]})"
                          for p in POINTS if p in steps)
              + f". Reference figures: real held-out digits' memorisation share "
              f"{fmt(refs['memorisation_real'], 3)}, the classifier's accuracy on them "
              f"{fmt(refs['heldout_accuracy'], 3)}, digits FD of random training digits at the same N "
              f"{fmt(refs['fd_floor'], 2)} (the floor), N = {refs['n']}.", ""]
    for title, settings in TABLES:
        header = ["setting"] + [f"{label} @ {p}" for p in POINTS if p in steps for _, label, _ in METRICS] \
            + [f"paper FID {PAPER_STEPS[p]}" for p in POINTS]
        rows = []
        for setting in settings:
            row = [setting_name(setting)]
            for p in POINTS:
                if p not in steps:
                    continue
                for metric, _, digits in METRICS:
                    c = cells.get(setting, {}).get(p, {}).get(metric)
                    row.append(fmt_ms(c["mean"], c["std"], digits) if c else DASH)
            paper = PAPER.get(setting, {})
            if title.startswith("The method"):
                paper = {"1": PAPER_SYSTEM.get("ours" if setting == OURS else setting)}
            row += [fmt(paper.get(p), 2) for p in POINTS]
            rows.append(row)
        parts += [f"## {title}", "", md_table(header, rows), ""]
        if title.startswith("The method"):
            parts += ["Paper column for the baselines: Table 4 (SiT-XL/2, 4M steps, FID-50K with CFG), the "
                      "only place the paper compares them; SiT is not in it.", ""]
    header = ["claim", "A - B"] + [f"Δ digits FD @ {p} (95% CI)" for p in POINTS if p in steps] \
        + ["Δ accuracy @ 1", "Δ memorisation @ 1", "paper Δ FID @ 800K", "verdict (digits FD @ 1)"]
    rows = []
    for c in summary["claims"]:
        row = [c["claim"], f"{c['a']} − {c['b']}"]
        for p in POINTS:
            if p not in steps:
                continue
            d = c["points"].get(p, {}).get("fd")
            if not d or d["mean"] is None:
                row.append(DASH)
                continue
            interval = f" [{d['lo']:.2f}, {d['hi']:.2f}]" if d["lo"] is not None else ""
            row.append(fmt_ms(d["mean"], d["std"], 2) + interval)
        final = c["points"].get("1", {})
        row += [fmt_ms(final["accuracy"]["mean"], final["accuracy"]["std"], 3) if final else DASH,
                fmt_ms(final["memorisation"]["mean"], final["memorisation"]["std"], 3) if final else DASH]
        pa = PAPER.get(c["a"], {}).get("1") or PAPER_SYSTEM.get("ours" if c["a"] == OURS else c["a"])
        pb = PAPER.get(c["b"], {}).get("1") or PAPER_SYSTEM.get(c["b"])
        if c["a"] == OURS and c["b"] in PAPER_SYSTEM:
            pa, pb = PAPER_SYSTEM["ours"], PAPER_SYSTEM[c["b"]]
        row += [DASH if pa is None or pb is None else f"{pa - pb:+.2f}", c["verdict"]]
        rows.append(row)
    parts += ["## The claims: paired differences A − B over seeds (mean ± sd [95% CI])", "",
              md_table(header, rows), "",
              "Lower digits FD is better; a claim's verdict reads the 95% interval of the paired FD "
              "difference at the end of the run (the docstring of scripts/collect_cpu_study.py gives the "
              "rule).", ""]
    return "\n".join(parts)


# ---- the figure --------------------------------------------------------------------------------------------

def plot(summary: dict, path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = summary["cells"]
    steps = summary["steps"]
    refs = summary["references"]
    fig, axes = plt.subplots(len(TABLES), len(METRICS), figsize=(4.2 * len(METRICS), 3.2 * len(TABLES)),
                             squeeze=False)
    for row, (title, settings) in enumerate(TABLES):
        for col, (metric, label, _) in enumerate(METRICS):
            ax = axes[row][col]
            for k, setting in enumerate(settings):
                have = cells.get(setting, {})
                pts = [(steps[p], have[p][metric]) for p in POINTS
                       if p in steps and p in have and have[p][metric]["mean"] is not None]
                if not pts:
                    continue
                x = [s for s, _ in pts]
                mean = [c["mean"] for _, c in pts]
                std = [c["std"] or 0.0 for _, c in pts]
                ax.plot(x, mean, "o-", color=f"C{k}", label=setting_name(setting))
                ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=f"C{k}", alpha=0.2)
            if metric == "memorisation" and refs["memorisation_real"] is not None:
                ax.axhline(refs["memorisation_real"], color="k", ls=":", lw=1, label="real held-out digits")
            if metric == "fd" and refs["fd_floor"] is not None:
                ax.axhline(refs["fd_floor"], color="k", ls=":", lw=1, label="training digits (floor)")
            ax.set_xlabel("training steps")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_title(title, fontsize=9, loc="left")
            if col == 0 or metric == "memorisation":
                ax.legend(fontsize=6)
    fig.suptitle("digits metric vs training steps (mean ± sd over seeds)", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def collect(root: str, out: str) -> tuple[str, str, dict]:
    """-> (markdown, figure path, summary); writes cpu_study.md, cpu_study.png and cpu_study.json into
    `out`."""
    records = load(root)
    if not records:
        raise SystemExit(f"error: no records of the CPU study (cpu-*/STEP-TAG/digits.json with a "
                         f"sampling.json, scored with --reference heldout) under {root}")
    study = None
    if os.path.isfile(os.path.join(root, "study.json")):
        with open(os.path.join(root, "study.json")) as f:
            study = json.load(f)
    summary = summarise(records)
    text = render(summary, study)
    os.makedirs(out, exist_ok=True)
    figure = plot(summary, os.path.join(out, "cpu_study.png"))
    image = f"\n![digits metric vs steps]({os.path.basename(figure)})\n"
    atomic_write_text(os.path.join(out, "cpu_study.md"), text + image)
    atomic_write_json(os.path.join(out, "cpu_study.json"), dict(study=study, **summary))
    return text, figure, summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", default="results/cpu-study", help="the study's RESULTS_DIR")
    p.add_argument("--out", help="where cpu_study.{md,png,json} go (default: the results folder)")
    args = p.parse_args(argv)
    text, figure, _ = collect(args.root, args.out or args.root)
    print(text)
    print(f"wrote {os.path.join(args.out or args.root, 'cpu_study.md')} and {figure}")


if __name__ == "__main__":
    main()
