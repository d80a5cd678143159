"""The CPU ablation study's table and figure (studies/cpu-ablations/run.sh): mean and spread over seeds,
paired differences for each of the paper's claims with a verdict, the paper's numbers beside.

    python studies/cpu-ablations/collect.py [RESULTS_DIR] [--out DIR]       # default results/cpu-study

Reads the records with scripts/collect_results.py's reader (load_records): every digits.json under
RESULTS_DIR scored against the held-out digits (evaluations/digits_metric.py --reference heldout), the
sampling.json next to it (checkpoint -> run, step) and the flags of its run (runs/RUN/args.json, or the copy
run.sh keeps in RESULTS_DIR/RUN/args.json), which give the run's setting (one of the study's, see run.sh
--help) and its seed; and RESULTS_DIR/study.json when present (the study's size and wall time). Writes
OUT/cpu_study.md (also printed), OUT/cpu_study.png (digits FD, accuracy and memorisation against training
steps, one line per setting, the band = mean +- one standard deviation over seeds) and OUT/cpu_study.json
(every number of the table).

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
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
# scripts/ is not a package: on the path for collect_results
sys.path.insert(0, os.path.join(ROOT, "scripts"))
# E402: neither folder is on the path of studies/ until the lines above
import collect_results  # noqa: E402
from infra.fileio import atomic_write_json, atomic_write_text  # noqa: E402

DASH = collect_results.DASH
# the study's metrics (digits-metric record keys), with their labels; collect_results.fmt knows their digits
METRICS = [("fd", "digits FD"), ("accuracy", "accuracy"), ("memorisation", "memorisation")]
# of the run -> the paper's step it stands for: 100K / 400K / 800K of 800K
POINTS = ("1/8", "1/2", "1")
PAPER_POINTS = dict(zip(POINTS, collect_results.PAPER_STEPS))


def ablation_name(setting: tuple) -> str:
    """collect_results' ablation setting -> the study's name, e.g. ('dual', 'as', 0.5, 0.25) ->
    'dual-as-r0.5-rho0.25' (runs are named cpu-NAME-sSEED)."""
    timesteps, attention, ratio, rho = setting
    return f"{timesteps}-{attention}-r{ratio:g}" + (f"-rho{rho:g}" if rho else "")


# The study's settings: the B/2 ablations of Tables 1-3 (ours-b2 with one factor changed), by name, and the
# baselines, by the method collect_results reads from a run's flags.
ABLATIONS = {ablation_name(s): s
             for s in collect_results.TABLE1 + collect_results.TABLE2 + collect_results.TABLE3}
BASELINES = ("sit", "sra", "self-flow", "dit", "dit-sra")
# the method (SRA + DTS + AS, alpha 0.25) is this ablation run
OURS = "dual-as-r0.25"

TABLES = [
    ("Table 1: dual timesteps, mask ratio 0.25", ["dual-full-r0.25", "dual-as-r0.25"]),
    ("Table 2: one timestep (AS as augmentation)", ["single-full-r0.25", "single-as-r0.25"]),
    ("Table 3: mask ratio and full-image mixing", ["dual-full-r0.5", "dual-as-r0.5", "dual-as-r0.5-rho0.25",
                                                    "dual-full-r0.35", "dual-as-r0.35"]),
    ("The method against its baselines", ["sit", "sra", "self-flow", OURS]),
    ("DiT's process (DDPM, ancestral sampler), with vanilla SiT for reference", ["dit", "dit-sra", "sit"]),
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
    ("DiT + SRA (the release's DiT-SRA) is not worse than DiT (the SRA paper's claim for DiT)", "dit-sra",
     "dit", "not-worse"),
]
NAMES = {"sit": "SiT (vanilla)", "sra": "SRA", "self-flow": "Self-Flow (DTS + full attn, teacher t_lo)",
         "dit": "DiT (DDPM)", "dit-sra": "DiT + SRA (DDPM, the release's DiT-SRA)",
         OURS: "dual t, AS, alpha 0.25 = ours (SRA + DTS + AS)"}

# two-sided 95% Student t quantiles t(0.975, df), df = K - 1 (scipy.stats.t.ppf(0.975, df))
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def setting_name(setting: str) -> str:
    if setting in NAMES:
        return NAMES[setting]
    if setting in ABLATIONS:
        return collect_results.setting_label(ABLATIONS[setting], ratio_name="alpha")
    return setting


def paper_fid(setting: str) -> dict:
    """The paper's FID-10K of an ablation setting (SiT-B/2, 800K steps) by point (METHOD.md section 9)."""
    fids = collect_results.PAPER_ABLATION_FID.get(ABLATIONS.get(setting), {})
    return {p: fids[step] for p, step in PAPER_POINTS.items() if step in fids}


def system_fid(method: str) -> float | None:
    """The paper's Table 4 FID-50K of a method (SiT-XL/2, 4M steps, CFG); None when it has none."""
    return collect_results.PAPER_SYSTEM.get(f"{method}-xl2", {}).get("fid")


def paper_step(point: str) -> str:
    return collect_results.step_label(PAPER_POINTS[point])


# ---- reading -----------------------------------------------------------------------------------------------

def study_setting(record: dict) -> str | None:
    """The study's name of a record's setting, from its run's flags as collect_results reads them: sit, sra or
    self-flow for the baselines, else the ablation's name; None for runs of no setting of the study."""
    if record["method"] in BASELINES:
        return record["method"]
    if record["setting"] in ABLATIONS.values():
        return ablation_name(record["setting"])
    return None


def load(root: str) -> list:
    """Every digits record of the study, read by collect_results.load_records: dicts with setting, seed (the
    run's --seed), step, n and the metric values."""
    out = []
    for r in collect_results.load_records([root]):
        if r["kind"] != "digits":
            continue
        rec = r["record"]
        setting = study_setting(r)
        seed = r["args"].get("seed")
        if setting is None or seed is None or r["step"] is None or rec.get("reference") != "heldout":
            print(f"skipping {r['path']}: not a run of the study's settings scored against the held-out "
                  f"digits", file=sys.stderr)
            continue
        out.append(dict(setting=setting, seed=int(seed), step=int(r["step"]), n=r["n"],
                        memorisation_real=rec.get("memorisation_real"), fd_floor=rec.get("fd_train_same_n"),
                        heldout_accuracy=rec.get("heldout_accuracy"), **{k: rec.get(k) for k, _ in METRICS}))
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

fmt = collect_results.fmt
md_table = collect_results.md_table


def fmt_ms(mean: float | None, std: float | None, metric: str) -> str:
    """'mean ± std' with the metric's digits; the mean alone for one seed."""
    if mean is None:
        return DASH
    return fmt(mean, metric) + (f" ± {fmt(std, metric)}" if std is not None else "")


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
        for metric, _ in METRICS:
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
                                        for m, _ in METRICS}
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
              + ", ".join(f"{p} of the run = step {steps[p]} (paper {paper_step(p)})"
                          for p in POINTS if p in steps)
              + f". Reference figures: real held-out digits' memorisation share "
              f"{fmt(refs['memorisation_real'], 'memorisation')}, the classifier's accuracy on them "
              f"{fmt(refs['heldout_accuracy'], 'accuracy')}, digits FD of random training digits at the same "
              f"N {fmt(refs['fd_floor'], 'fd')} (the floor), N = {refs['n']}.", ""]
    for title, settings in TABLES:
        header = ["setting"] + [f"{label} @ {p}" for p in POINTS if p in steps for _, label in METRICS] \
            + [f"paper FID {paper_step(p)}" for p in POINTS]
        rows = []
        for setting in settings:
            row = [setting_name(setting)]
            for p in POINTS:
                if p not in steps:
                    continue
                for metric, _ in METRICS:
                    c = cells.get(setting, {}).get(p, {}).get(metric)
                    row.append(fmt_ms(c["mean"], c["std"], metric) if c else DASH)
            paper = paper_fid(setting)
            if title.startswith(("The method", "DiT's process")):
                paper = {"1": system_fid("ours" if setting == OURS else setting)}
            row += [fmt(paper.get(p), "fid") for p in POINTS]
            rows.append(row)
        parts += [f"## {title}", "", md_table(header, rows), ""]
        if title.startswith("The method"):
            parts += ["Paper column for the baselines: Table 4 (SiT-XL/2, 4M steps, FID-50K with CFG), the "
                      "only place the paper compares them; SiT is not in it.", ""]
        if title.startswith("DiT's process"):
            parts += ["Paper column: Table 4's DiT-XL/2 row (DiT's own FID-50K, 7M steps, CFG 1.5); the DiT "
                      "runs are sampled with DDPM's ancestral sampler at the study's step count.", ""]
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
            row.append(fmt_ms(d["mean"], d["std"], "fd") + interval)
        final = c["points"].get("1", {})
        row += [fmt_ms(final["accuracy"]["mean"], final["accuracy"]["std"], "accuracy") if final else DASH,
                fmt_ms(final["memorisation"]["mean"], final["memorisation"]["std"], "memorisation")
                if final else DASH]
        pa = paper_fid(c["a"]).get("1") or system_fid("ours" if c["a"] == OURS else c["a"])
        pb = paper_fid(c["b"]).get("1") or system_fid(c["b"])
        # a claim of Table 4: both sides from it
        if c["a"] == OURS and system_fid(c["b"]) is not None:
            pa, pb = system_fid("ours"), system_fid(c["b"])
        row += [DASH if pa is None or pb is None else f"{pa - pb:+.2f}", c["verdict"]]
        rows.append(row)
    parts += ["## The claims: paired differences A − B over seeds (mean ± sd [95% CI])", "",
              md_table(header, rows), "",
              "Lower digits FD is better; a claim's verdict reads the 95% interval of the paired FD "
              "difference at the end of the run (the docstring of studies/cpu-ablations/collect.py gives the "
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
        for col, (metric, label) in enumerate(METRICS):
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
        raise SystemExit(f"error: no records of the CPU study (RUN/STEP-TAG/digits.json with a "
                         f"sampling.json, of a run of the study's settings, scored with --reference heldout) "
                         f"under {root}")
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
