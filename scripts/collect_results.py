"""Gather evaluation records into the paper's tables (markdown) and FID / IS curves against training steps
(PNG).

    python scripts/collect_results.py [RESULTS_DIR ...] [--out DIR]

Reads every JSON record under the given folders (default: results/):
  - the ADM evaluator's (evaluations/evaluator.py: fid, sfid, inception_score, precision, recall),
  - the embedded digits metric's (evaluations/digits_metric.py: fd, accuracy),
each described by the sampling.json that sample_ddp.py wrote next to its samples (scripts/sample_eval.sh
copies it next to the records; otherwise the folder of the record's "samples" file is searched). sampling.json
gives the checkpoint (runs/RUN/checkpoints/NNNNNNN.pt -> run name and step) and the sampler (samples, steps,
CFG scale).
The run's setting comes from the flags it saved, runs/RUN/args.json (train.py writes it; both spellings of the
alignment flags are read: --align-target {none,ema,repa,sra2}, or the older --use-alignment-loss with
--align-target), else from a copy of it in the results folder of the run, RESULTS_DIR/RUN/args.json (records
kept without their run folder); the name of the run is only shown:
  scale b2 (--preset *-b2, or SiT-B/2), the EMA teacher at t - t_max U: the ablations of Tables 1-3 and
      Figures 4-5, told apart by --dual-time-scheduling, --attention-separation, --mask-ratio and
      --full-sample-prob
  scale xl2 / xl2-512 (--preset *-xl2[-512], or SiT-XL/2): the system runs of Tables 4-5, one row per method
      (sit, sra, self-flow, repa, sra2, ours, ours-mix; the presets of presets.py)
Records whose run has no args.json in either place are listed in the last table only.
Ablation tables use samples without CFG (scale 1), system tables samples with CFG (scale > 1), as in the
paper.
Where several records fit one cell, the one with the most samples wins. Missing cells are "–". The paper's
numbers (METHOD.md section 9) stand in their own columns.

Writes OUT/results.md (also printed) and the figures OUT/figure4.png (Tables 1-2 settings) and OUT/figure5.png
(mask ratio and full-image mixing, Table 3 settings); records of the digits metric give the same tables and
figures with the digits Frechet distance and accuracy (figure4_digits.png, figure5_digits.png).
"""
import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# E402: the repository root is not on the path of scripts/ until the line above
from infra.fileio import atomic_write_text, unusable_folder  # noqa: E402

DASH = "–"

# ---- the paper's numbers (METHOD.md section 9): FID-10K of the B/2 ablations, system runs with CFG ---------
# ablation setting = (timesteps, attention, mask ratio, full-image mixing rho)
PAPER_ABLATION_FID = {
    ("dual", "full", 0.25, 0.0): {100_000: 58.16, 400_000: 30.20, 800_000: 25.19},
    ("dual", "as", 0.25, 0.0): {100_000: 58.57, 400_000: 29.89, 800_000: 25.06},
    ("single", "full", 0.25, 0.0): {100_000: 62.95, 400_000: 32.10, 800_000: 26.34},
    ("single", "as", 0.25, 0.0): {100_000: 62.39, 400_000: 32.45, 800_000: 25.81},
    ("dual", "full", 0.35, 0.0): {800_000: 24.87},
    ("dual", "as", 0.35, 0.0): {800_000: 27.50},
    ("dual", "full", 0.5, 0.0): {800_000: 24.39},
    ("dual", "as", 0.5, 0.0): {800_000: 38.19},
    ("dual", "as", 0.5, 0.25): {800_000: 24.15},
}
# preset -> {metric: value}
PAPER_SYSTEM = {
    "ours-xl2": dict(fid=1.44, sfid=4.60, inception_score=315.3, precision=0.81, recall=0.63),
    "repa-xl2": dict(fid=1.42),
    "sra-xl2": dict(fid=1.58),
    "self-flow-xl2": dict(fid=1.47),
    # DiT's own FID-50K (CFG 1.5), the DiT-XL/2 row of Tables 4 and 5
    "dit-xl2": dict(fid=2.27),
    "dit-xl2-512": dict(fid=3.04),
    "ours-xl2-512": dict(fid=2.08, sfid=4.12, inception_score=282.7, precision=0.83, recall=0.58),
}
PAPER_STEPS = (100_000, 400_000, 800_000)

TABLE1 = [("dual", "full", 0.25, 0.0), ("dual", "as", 0.25, 0.0)]
TABLE2 = [("single", "full", 0.25, 0.0), ("single", "as", 0.25, 0.0)]
TABLE3 = [("dual", "full", 0.35, 0.0), ("dual", "as", 0.35, 0.0), ("dual", "full", 0.5, 0.0),
          ("dual", "as", 0.5, 0.0), ("dual", "as", 0.5, 0.25)]
SYSTEM_METHODS = ["sit", "sra", "self-flow", "repa", "sra2", "ours", "ours-mix", "dit", "dit-sra"]
# rows always shown; others when they have records
TABLE4 = ["sit", "sra", "self-flow", "repa", "sra2", "ours"]
TABLE5 = ["ours"]
METHOD_NAMES = {"sit": "SiT", "sra": "SRA", "self-flow": "Self-Flow", "repa": "REPA", "sra2": "SRA 2",
                "ours": "ours (SRA + DTS + AS)", "ours-mix": "ours + full-image mixing", "dit": "DiT (DDPM)",
                "dit-sra": "DiT + SRA (DDPM)"}

# ---- what each kind of record measures ---------------------------------------------------------------------
# view -> (record kind, main metric, second metric, their labels, all metrics of the system tables)
VIEWS = {
    "adm": dict(main="fid", second="inception_score", label="FID", label2="IS", suffix="",
                system=[("fid", "FID"), ("sfid", "sFID"), ("inception_score", "IS"), ("precision", "Prec."),
                        ("recall", "Rec.")]),
    "digits": dict(main="fd", second="accuracy", label="digits FD", label2="digits accuracy",
                   suffix="_digits",
                   system=[("fd", "digits FD"), ("accuracy", "digits accuracy")]),
}
DIGITS = {"fid": 2, "sfid": 2, "inception_score": 1, "precision": 2, "recall": 2, "fd": 2, "accuracy": 3,
          "memorisation": 3}

# the scales of presets.py, longest first (a preset is METHOD-SCALE); a run without a preset: by its model
SCALES = ("xl2-512", "xl2", "b2")
MODEL_SCALES = {"SiT-B/2": "b2", "SiT-XL/2": "xl2"}


# ---- reading records ---------------------------------------------------------------------------------------

def record_kind(rec: dict) -> str | None:
    if isinstance(rec, dict) and {"fid", "sfid", "inception_score", "precision", "recall"} <= rec.keys():
        return "adm"
    if isinstance(rec, dict) and {"fd", "accuracy"} <= rec.keys():
        return "digits"
    return None


def find_sampling(path: str, rec: dict) -> dict | None:
    """The sampling.json describing a record's samples: next to the record, else next to its samples file."""
    folders = [os.path.dirname(path)]
    if rec.get("samples"):
        folders.append(os.path.dirname(rec["samples"]))
    for folder in folders:
        candidate = os.path.join(folder, "sampling.json")
        if os.path.isfile(candidate):
            try:
                with open(candidate) as f:
                    return json.load(f)
            except (OSError, ValueError) as e:
                raise SystemExit(f"error: {candidate} (describing {path}) cannot be read as JSON ({e}); "
                                 f"rewrite it (sample_ddp.py writes it next to the samples) or move the "
                                 f"record away") from None
    return None


def run_name(checkpoint: str) -> str:
    """runs/RUN/checkpoints/0400000.pt -> RUN; any other file -> its name without extension."""
    folder = os.path.dirname(checkpoint)
    if os.path.basename(folder) == "checkpoints":
        return os.path.basename(os.path.dirname(folder))
    return os.path.splitext(os.path.basename(checkpoint))[0]


def run_args_path(checkpoint: str, record_path: str) -> str:
    """Where the flags of a record's run are: runs/RUN/args.json next to the checkpoints, else the copy in the
    record's results folder of the run (RESULTS_DIR/RUN/STEP-TAG/record.json -> RESULTS_DIR/RUN/args.json);
    the first when neither exists."""
    path = os.path.join(os.path.dirname(os.path.dirname(checkpoint)), "args.json")
    results_run = os.path.dirname(os.path.dirname(os.path.abspath(record_path)))
    if os.path.isfile(path) or os.path.basename(results_run) != run_name(checkpoint):
        return path
    copy = os.path.join(results_run, "args.json")
    return copy if os.path.isfile(copy) else path


def read_run_args(checkpoint: str, record_path: str) -> dict | None:
    """runs/RUN/checkpoints/NNNNNNN.pt -> the flags in runs/RUN/args.json or in its copy beside the records
    (run_args_path; None, said, when there is none)."""
    path = run_args_path(checkpoint, record_path)
    if not os.path.isfile(path):
        print(f"{record_path}: no {path}, so its run's setting is unknown: listed in the last table only",
              file=sys.stderr)
        return None
    try:
        with open(path) as f:
            args = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path} (the flags of the run behind {record_path}) cannot be read as JSON "
                         f"({e}); rewrite it or move the record away") from None
    return args if isinstance(args, dict) else None


def align_target(args: dict) -> str:
    """none | ema | repa | sra2 from either spelling: --align-target alone, or --use-alignment-loss (off:
    none) with --align-target."""
    if args.get("use_alignment_loss") is False:
        return "none"
    return args.get("align_target") or "none"


def _mask_ratios(args: dict) -> list:
    ratio = args.get("mask_ratio", [0.0])
    return [float(r) for r in ratio] if isinstance(ratio, (list, tuple)) else [float(ratio)]


def run_scale(args: dict) -> str | None:
    """b2 | xl2 | xl2-512: the preset's scale, else the model's (None for other models)."""
    preset = args.get("preset") or ""
    for scale in SCALES:
        if preset.endswith(f"-{scale}"):
            return scale
    return MODEL_SCALES.get(args.get("model"))


def ablation_setting(args: dict) -> tuple | None:
    """(timesteps, attention, mask ratio, rho) of a B/2 ablation run (the EMA teacher at t - t_max U, i.e.
    ours-b2 with one factor changed), e.g. ('dual', 'as', 0.5, 0.25); None for other runs."""
    if run_scale(args) != "b2" or align_target(args) != "ema" or args.get("teacher_t", "sra") != "sra":
        return None
    ratios = _mask_ratios(args)
    timesteps = "dual" if args.get("dual_time_scheduling") else "single"
    attention = "as" if args.get("attention_separation") else "full"
    ratio = ratios[0] if len(ratios) == 1 else tuple(ratios)
    return timesteps, attention, ratio, float(args.get("full_sample_prob") or 0.0)


def system_method(args: dict) -> str | None:
    """The method (SYSTEM_METHODS) a run's loss flags make, as the presets of presets.py set them; None for
    recipes the tables do not show (e.g. sra-orig, self-flow-like settings with other attention)."""
    target = align_target(args)
    # DiT's process (--process ddpm): DiT, or DiT + the SRA teacher; never a flow-matching row
    if args.get("process", "flow") == "ddpm":
        if target == "none":
            return "dit"
        return "dit-sra" if target == "ema" and max(_mask_ratios(args)) == 0 else None
    if target != "ema":
        return {"none": "sit", "repa": "repa", "sra2": "sra2"}.get(target)
    if args.get("teacher_t", "sra") == "self_flow":
        return "self-flow"
    if max(_mask_ratios(args)) == 0:
        # sra-orig (smooth-L1, the decaying lambda) is another recipe
        return "sra" if args.get("loss_type", "cos-channel") == "cos-channel" else None
    if args.get("dual_time_scheduling") and args.get("attention_separation"):
        return "ours-mix" if (args.get("full_sample_prob") or 0.0) > 0 else "ours"
    return None


def load_records(roots: list) -> list[dict]:
    """Every evaluation record under `roots`, as flat dicts: run, step, n, sampler, cfg, kind, values, path,
    the record as read (record), the run's flags (args, {} when unknown) and its setting (ablation tuple),
    scale and method from them (None when unknown)."""
    records, unreadable = [], []
    for root in roots:
        if not os.path.isdir(root):
            raise SystemExit(f"error: results folder not found: {root}")
        for path in sorted(glob.glob(os.path.join(root, "**", "*.json"), recursive=True)):
            if os.path.basename(path) == "sampling.json":
                continue
            try:
                with open(path) as f:
                    rec = json.load(f)
            except (OSError, ValueError) as e:
                print(f"skipping {path}: not readable JSON ({e})", file=sys.stderr)
                unreadable.append(path)
                continue
            kind = record_kind(rec)
            if kind is None:
                continue
            sampling = find_sampling(path, rec)
            if sampling is None or "settings" not in sampling or "checkpoint" not in sampling:
                print(f"skipping {path}: no sampling.json next to it or its samples", file=sys.stderr)
                continue
            s = sampling["settings"]
            metrics = VIEWS[kind]["system"]
            text = [m for m, _ in metrics if rec.get(m) is not None and not _is_number(rec[m])]
            if text:
                named = ", ".join(f"{m}={rec[m]!r}" for m in text)
                raise SystemExit(f"error: {path}: {named} is not a number")
            args = read_run_args(sampling["checkpoint"], path) or {}
            records.append(dict(
                run=run_name(sampling["checkpoint"]), step=s.get("steps"), kind=kind,
                setting=ablation_setting(args) if args else None, scale=run_scale(args),
                method=system_method(args) if args else None,
                n=int(sampling.get("num_fid_samples") or rec.get("num_samples") or rec.get("n") or 0),
                sampler=f"{s.get('mode')}-{s.get('num_steps')}", cfg=float(s.get("cfg_scale", 1.0)),
                guidance=(float(s.get("guidance_low", 0.0)), float(s.get("guidance_high", 1.0))),
                values={m: rec[m] for m, _ in metrics if rec.get(m) is not None}, path=path, record=rec,
                args=args))
    if not records and unreadable:
        raise SystemExit(f"error: no evaluation records under {', '.join(roots)}: {len(unreadable)} JSON "
                         f"file(s) cannot be read, e.g. {unreadable[0]} (cut short?)")
    return records


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def best(records: list[dict], **match) -> dict | None:
    """The record with the most samples among those whose fields equal `match` (None when there is none)."""
    hits = [r for r in records if all(r[k] == v for k, v in match.items())]
    return max(hits, key=lambda r: r["n"]) if hits else None


# ---- formatting --------------------------------------------------------------------------------------------

def fmt(value: float | None, metric: str) -> str:
    return DASH if value is None else f"{value:.{DIGITS[metric]}f}"


def step_label(step: int | None) -> str:
    if step is None:
        return DASH
    if step >= 1_000_000 and step % 100_000 == 0:
        return f"{step / 1_000_000:g}M"
    if step >= 1000 and step % 1000 == 0:
        return f"{step // 1000}K"
    return str(step)


def setting_label(setting: tuple, ratio_name: str = "ratio") -> str:
    """('dual', 'as', 0.5, 0.25) -> 'dual t, AS, ratio 0.5, rho 0.25' (the mask ratio called `ratio_name`)."""
    timesteps, attention, ratio, rho = setting
    steps = "dual" if timesteps == "dual" else "single"
    text = f"{steps} t, {'AS' if attention == 'as' else 'full attn'}, {ratio_name} {ratio:g}"
    return text + (f", rho {rho:g}" if rho else "")


def md_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ours_note(records: list[dict], view: str, where: str) -> str:
    """'Ours: FID over 10,000 samples per cell, by training step.' or a note that no record fits yet."""
    counts = sorted({r["n"] for r in records})
    if not counts:
        return "Ours: no records yet."
    return f"Ours: {VIEWS[view]['label']} over {', '.join(f'{n:,}' for n in counts)} samples {where}."


# ---- tables ------------------------------------------------------------------------------------------------

def ablation_records(records: list[dict], kind: str) -> list[dict]:
    """Unguided (CFG 1) records of the B/2 ablation runs."""
    return [r for r in records if r["kind"] == kind and r["cfg"] <= 1.0 and r["setting"] is not None]


def steps_table(title: str, settings: list, recs: list[dict], view: str, with_paper: bool) -> str:
    """Tables 1-2: rows = settings, columns = training steps (ours), then the paper's FID-10K at its steps."""
    main = VIEWS[view]["main"]
    ours_steps = sorted({r["step"] for r in recs if r["setting"] in settings and r["step"] is not None})
    steps = sorted(set(ours_steps) | set(PAPER_STEPS))
    header = ["setting"] + [step_label(s) for s in steps]
    if with_paper:
        header += [f"paper {step_label(s)}" for s in PAPER_STEPS]
    rows = []
    for setting in settings:
        row = [setting_label(setting)]
        for s in steps:
            r = best(recs, setting=setting, step=s)
            row.append(fmt(r["values"].get(main) if r else None, main))
        if with_paper:
            row += [fmt(PAPER_ABLATION_FID[setting].get(s), "fid") for s in PAPER_STEPS]
        rows.append(row)
    used = [r for r in recs if r["setting"] in settings]
    note = ours_note(used, view, "per cell, by training step") + (" Paper: FID-10K." if with_paper else "")
    return f"### {title}\n\n{md_table(header, rows)}\n\n{note}"


def final_step_table(title: str, settings: list, recs: list[dict], view: str, with_paper: bool) -> str:
    """Table 3: rows = settings, ours at the latest evaluated step, the paper at 800K."""
    main = VIEWS[view]["main"]
    header = ["mask ratio", "attention", "timesteps", "mixing rho", "step", VIEWS[view]["label"]]
    if with_paper:
        header += ["paper FID-10K (800K)"]
    rows = []
    for setting in settings:
        timesteps, attention, ratio, rho = setting
        stepped = [r["step"] for r in recs if r["setting"] == setting and r["step"] is not None]
        r = best(recs, setting=setting, step=max(stepped)) if stepped else None
        row = [f"{ratio:g}", "AS" if attention == "as" else "full", timesteps, f"{rho:g}",
               step_label(r["step"]) if r else DASH, fmt(r["values"].get(main) if r else None, main)]
        if with_paper:
            row.append(fmt(PAPER_ABLATION_FID[setting].get(800_000), "fid"))
        rows.append(row)
    used = [r for r in recs if r["setting"] in settings]
    note = ours_note(used, view, "at the latest evaluated step")
    return f"### {title}\n\n{md_table(header, rows)}\n\n{note}"


def system_table(title: str, scale: str, always: list, records: list[dict], view: str,
                 with_paper: bool) -> str:
    """Tables 4-5: rows = the methods in `always` and any other method with a record of runs at `scale`;
    columns = metrics at the latest evaluated step with CFG, then the paper's (preset METHOD-SCALE)."""
    metrics = VIEWS[view]["system"]
    header = ["method", "run", "step", "samples"] + [label for _, label in metrics]
    if with_paper:
        header += [f"paper {label}" for _, label in metrics]
    rows = []
    for method in SYSTEM_METHODS:
        preset = f"{method}-{scale}"
        recs = [r for r in records
                if r["kind"] == view and r["method"] == method and r["scale"] == scale and r["cfg"] > 1.0]
        if not recs and method not in always:
            continue
        stepped = [r["step"] for r in recs if r["step"] is not None]
        r = best(recs, step=max(stepped)) if stepped else None
        run = r["run"] if r else preset
        row = [METHOD_NAMES[method], run, step_label(r["step"]) if r else DASH, f"{r['n']:,}" if r else DASH]
        row += [fmt(r["values"].get(m) if r else None, m) for m, _ in metrics]
        if with_paper:
            row += [fmt(PAPER_SYSTEM.get(preset, {}).get(m), m) for m, _ in metrics]
        rows.append(row)
    return f"### {title}\n\n{md_table(header, rows)}\n\nOurs: the latest evaluated step, samples with CFG " \
           f"(the paper: FID-50K, CFG 1.8 for t <= 0.7)."


def all_records_table(records: list[dict]) -> str:
    """Every evaluation found, one row per (run, step, samples, sampler, CFG), ADM and digits numbers side by
    side."""
    merged = {}
    for r in records:
        step = -1 if r["step"] is None else r["step"]
        key = (r["run"], step, r["n"], r["sampler"], r["cfg"], r["guidance"])
        merged.setdefault(key, {}).update(r["values"])
    header = ["run", "step", "samples", "sampler", "CFG (interval)", "FID", "sFID", "IS", "Prec.", "Rec.",
              "digits FD", "digits acc."]
    rows = []
    for (run, step, n, sampler, cfg, guidance), vals in sorted(merged.items()):
        interval = f"{cfg:g}" + (f" ({guidance[0]:g}-{guidance[1]:g})" if cfg > 1 else "")
        metrics = ("fid", "sfid", "inception_score", "precision", "recall", "fd", "accuracy")
        rows.append([run, step_label(None if step == -1 else step), f"{n:,}", sampler, interval]
                    + [fmt(vals.get(m), m) for m in metrics])
    return "### All evaluation records\n\n" + md_table(header, rows)


# ---- figures -----------------------------------------------------------------------------------------------

def plot_curves(path: str, title: str, settings: list, recs: list[dict], view: str,
                with_paper: bool) -> str | None:
    """Two panels, FID (or digits FD) and IS (or digits accuracy) against training steps, one line per
    setting.
    The paper's FID points are drawn (hollow, dashed) once our curves reach its first evaluation step (100K).
    Returns the path, or None when none of the settings has a record."""
    series = []
    for setting in settings:
        steps = sorted({r["step"] for r in recs if r["setting"] == setting and r["step"] is not None})
        points = [(s, best(recs, setting=setting, step=s)["values"]) for s in steps]
        if points:
            series.append((setting, points))
    if not series:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    v = VIEWS[view]
    show_paper = with_paper and max(s for _, points in series for s, _ in points) >= PAPER_STEPS[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, (setting, points) in enumerate(series):
        color = f"C{k}"
        for ax, metric in zip(axes, (v["main"], v["second"])):
            xy = [(s, vals[metric]) for s, vals in points if metric in vals]
            ax.plot([x for x, _ in xy], [y for _, y in xy], "o-", color=color, label=setting_label(setting))
        paper = PAPER_ABLATION_FID.get(setting, {}) if show_paper else {}
        if paper:
            axes[0].plot(sorted(paper), [paper[s] for s in sorted(paper)], "s--", color=color, mfc="none",
                         label=f"paper: {setting_label(setting)}")
    for ax, label in zip(axes, (v["label"], v["label2"])):
        ax.set_xlabel("training steps")
        ax.set_ylabel(label)
        # steps are whole numbers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: step_label(int(x)) if x >= 0 else ""))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- main --------------------------------------------------------------------------------------------------

def collect(roots: list, out: str) -> tuple[str, list]:
    """Builds the markdown and the figures; returns (markdown text, [figure paths])."""
    records = load_records(roots)
    if not records:
        raise SystemExit(f"error: no evaluation records (ADM evaluator or digits metric JSON with a "
                         f"sampling.json) under {', '.join(roots)}")
    parts = ["# Results", "", f"{len(records)} evaluation records from {', '.join(roots)}."]
    figures = []
    for view in VIEWS:
        if not any(r["kind"] == view for r in records):
            continue
        # the paper's numbers are ADM numbers
        with_paper = view == "adm"
        label = VIEWS[view]["label"]
        recs = ablation_records(records, view)
        title1 = f"Table 1: SiT-B/2, dual timesteps, mask ratio 0.25: {label}"
        title2 = f"Table 2: SiT-B/2, single timestep (AS as augmentation): {label}"
        title3 = f"Table 3: SiT-B/2, mask ratio and full-image mixing: {label}"
        parts += ["", f"## {'ADM evaluator' if view == 'adm' else 'Embedded digits metric'}", "",
                  steps_table(title1, TABLE1, recs, view, with_paper), "",
                  steps_table(title2, TABLE2, recs, view, with_paper), "",
                  final_step_table(title3, TABLE3, recs, view, with_paper), "",
                  system_table("Table 4: SiT-XL/2, ImageNet 256, 4M steps", "xl2", TABLE4, records, view,
                               with_paper),
                  "",
                  system_table("Table 5: SiT-XL/2, ImageNet 512, 1M steps", "xl2-512", TABLE5, records, view,
                               with_paper)]
        for name, title, settings in (("figure4", "Figure 4: dual vs single timestep, full attention vs AS",
                                       TABLE1 + TABLE2),
                                      ("figure5", "Figure 5: mask ratio and full-image mixing", TABLE3)):
            path = plot_curves(os.path.join(out, f"{name}{VIEWS[view]['suffix']}.png"), title, settings, recs,
                               view, with_paper)
            if path:
                figures.append(path)
    parts += ["", all_records_table(records), ""]
    if figures:
        parts += ["Figures: " + ", ".join(figures), ""]
    return "\n".join(parts), figures


def main(argv: list | None = None) -> tuple[str, list]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="*", default=["results"],
                   help="folders searched for records (default: results)")
    p.add_argument("--out", help="where results.md and the figures go (default: the first folder)")
    args = p.parse_args(argv)
    out = args.out or args.roots[0]
    problem = unusable_folder(out, "--out")
    if problem:
        raise SystemExit(f"error: {problem}")
    text, figures = collect(args.roots, out)
    path = os.path.join(out, "results.md")
    atomic_write_text(path, text)
    print(text)
    print(f"wrote {path}" + (f" and {len(figures)} figure(s)" if figures else " (no curves to plot)"))
    return text, figures


if __name__ == "__main__":
    main()
