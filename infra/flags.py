"""The public releases' command-line spellings, accepted next to ours by train.py and sample_ddp.py.

The SRA release (SiT-SRA_DTS_AS/scripts/train.sh and gen.sh), the original SiT-SRA (its README command, told
apart by --t-max) and REPA (its README's train.py and generate.py commands) run with the same meaning here.
Each of their flags is in one of the tables below: renamed (the same meaning under another name), a value
spelled their way, a no-op (with the reason nothing changes), or checked (against the data or the checkpoint);
a few carry a conversion (--use-alignment-loss, --teacher-mask, --resume-step, --epochs, REPA's flags). None
is ignored silently: `resolve_*` return one note per flag, which train.py logs and `--print-config` writes to
stderr (stdout: the resolved settings as one JSON object keyed by our flag names).

train.py, beyond the tables
    --use-alignment-loss        -> --align-target ema, or the --align-target given (repa, sra2) or the
                                   preset's; --no-use-alignment-loss -> --align-target none
    --[no-]teacher-mask         checked against loss.teacher_on_groups (groups and --teacher-t sra / same)
    --mask-ratio "[0.5,0.3,0.2]" the release's list spellings ("0.25", "0.75 0.25", "[0.5,0.3,0.2]",
                                   "0.5,0.5"); --mask-ratio 0 is one token group: plain SRA, as in the release
    --epochs E, --checkpoint-epochs E   -> steps, counted as the release does (epoch_steps); with
                                   --max-train-steps too, the run stops at the first bound reached
    --resume-step N             -> --resume OUTPUT_DIR/EXP_NAME/checkpoints/{N:07d}.pt (REPA; 0 = start fresh)
    --enc-type dinov2-vit-b, --proj-coeff W, --encoder-depth D   REPA's alignment (REPA's train.py always
                                   aligns): --align-target repa, --loss-type cos-token, REPA's defaults for
                                   what is not given (without a preset also one token group and REPA's
                                   400K steps, 50K-step checkpoints, 10K-step previews), targets precomputed
                                   from the real images (--repa-features auto)
    --t-max, --data-dir-train   the original SiT-SRA's flags: with no preset and no token-group flag the
                                   command is that folder's (SIT_SRA_RUN; its --batch-size is per process)
Run folders written before --align-target none saved use_alignment_loss and teacher_mask in their args:
saved_train_args reads them in today's names.
"""
import argparse
import json
import os
import re
import sys

import loss

# the dests that hold their flags until resolve_* converts them
ALIAS = "alias__"
B = argparse.BooleanOptionalAction

# ------------------------------------------------------------------------------------------------------------
# The tables
# ------------------------------------------------------------------------------------------------------------

REPA_ENCODERS = {f"dinov2-vit-{s}": f"dinov2_vit{s}14" for s in "sblg"}
# train.py: their flag -> (our dest, its type): the same meaning under another name
TRAIN_RENAMES = {"--checkpointing-steps": ("checkpoint_steps", int),
                 "--sampling-steps": ("sample_steps", int), "--resume-ckpt": ("resume", str),
                 "--proj-coeff": ("align_weight", float), "--encoder-depth": ("block_out_s", int),
                 "--data-dir-train": ("data_dir", str), "--cfg-prob": ("class_dropout_prob", float)}
# train.py: their value of one of our flags -> ours, and what it means
TRAIN_VALUES = {"loss_type": ({"cos": "cos-channel"}, "the release's cosine over tokens, per channel"),
                "enc_type": (REPA_ENCODERS, "")}
# train.py: their flags that change nothing here: dest -> (as written, argparse settings, why)
TRAIN_NO_OPS = {
    "prediction": ("--prediction v", dict(choices=["v"]), "the network predicts the velocity"),
    "allow_tf32": ("--allow-tf32", dict(action="store_true"), "TF32 matmuls are always on in training"),
    "fused_attn": ("--[no-]fused-attn", dict(action=B),
                   "attention runs the fused kernel; the math kernel differs only by rounding")}
# train.py: their flags checked against the data (check_train_data)
TRAIN_CHECKS = ("resolution", "num_classes")
# sample_ddp.py: their generate.py flags that change nothing here
SAMPLE_NO_OPS = {
    "encoder_depth": ("--encoder-depth", dict(type=int), "the alignment head is not run when sampling"),
    "use_alignment_loss": ("--use-alignment-loss", dict(action="store_true"),
                           "the head is loaded as the file has it and not run"),
    "attention_separation": ("--attention-separation", dict(action="store_true"),
                             "inference uses full attention"),
    "fused_attn": ("--fused-attn", dict(action=B), "attention runs the fused kernel")}
# sample_ddp.py: their generate.py flags checked against the checkpoint (check_sample_checkpoint)
SAMPLE_CHECKS = {"resolution": dict(type=int), "num_classes": dict(type=int), "qk_norm": dict(action=B),
                 "projector_embed_dims": dict(help="REPA: checked against the checkpoint's projector")}

# REPA's train.py defaults, for what its flags leave unsaid
REPA_DEFAULTS = dict(block_out_s=8, align_weight=0.5, enc_type="dinov2_vitb14")
# REPA's train.py without a preset: one token group and its step counts (train.py's own defaults are the SRA
# release's recipe)
REPA_RUN = dict(mask_ratio=[0.0], dual_time_scheduling=False, attention_separation=False,
                full_sample_prob=0.0, max_train_steps=400_000, checkpoint_steps=50_000, sample_steps=10_000)
# The original SiT-SRA's train.py (SiT-SRA/train.py, the SRA paper's XL/2 README command): --t-max and
# --data-dir-train are its flags (DTS_AS fixes t_max at 0.2). A command with one of them, no preset and none
# of the token-group / teacher flags (GROUP_FLAGS) is that folder's: one token group, the teacher on the
# student's dropped labels, its checkpoint / preview / epoch counts, and --batch-size per process (global in
# DTS_AS and here).
SIT_SRA_FLAGS = {"--t-max": "t_max", "--data-dir-train": ALIAS + "data_dir"}
SIT_SRA_RUN = dict(mask_ratio=[0.0], dual_time_scheduling=False, attention_separation=False,
                   full_sample_prob=0.0, teacher_labels="dropped", checkpoint_steps=50_000,
                   sample_steps=100_000, epochs=801)
# SiT-SRA/train.py's default per-process batch
SIT_SRA_BATCH = 32
GROUP_FLAGS = ("mask_ratio", "dual_time_scheduling", "attention_separation", "teacher_t", "full_sample_prob",
               "sorted_timesteps", "align_target", ALIAS + "use_alignment_loss", ALIAS + "teacher_mask")


# ------------------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """Bad flags exit 2 with one line (prog: error: ...), not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def mask_ratio_values(text: str) -> list:
    """One --mask-ratio argument -> floats: '0.25', '[0.5,0.3,0.2]', '0.5,0.5' (as the release parses
    them)."""
    text = str(text).strip()
    parts = [p for p in re.split(r"[\s,]+", text.removeprefix("[").removesuffix("]")) if p]
    try:
        # brackets only around the whole list, both or neither
        if text.startswith("[") != text.endswith("]") or not parts:
            raise ValueError
        return [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers such as 0.25 or [0.5,0.3,0.2], "
                                         f"got {text!r}") from None


def given_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set:
    """The dests set on the command line itself (not by a default or a preset): argv parsed into a namespace
    where every dest already holds a marker, which argparse then leaves alone unless the flag is given."""
    unset = object()
    probe = argparse.Namespace(**{dest: unset for dest in vars(parser.parse_args([]))})
    parser.parse_args(argv, namespace=probe)
    return {dest for dest, value in vars(probe).items() if value is not unset}


def print_config(args: argparse.Namespace, notes: list[str], drop: tuple = ()) -> None:
    """The resolved settings on stdout (one JSON object, our flag names), the notes on stderr."""
    cfg = {k: v for k, v in sorted(vars(args).items()) if not k.startswith(ALIAS) and k not in drop}
    print(json.dumps(cfg))
    for n in notes:
        print(f"note: {n}", file=sys.stderr)


def _add_no_ops(group: argparse._ArgumentGroup, table: dict) -> None:
    for dest, (written, settings, why) in table.items():
        flag = "--" + dest.replace("_", "-")
        group.add_argument(flag, dest=ALIAS + dest, default=None, help=f"no-op: {why}", **settings)


def _no_op_notes(args: argparse.Namespace, table: dict) -> list[str]:
    return [f"{written}: no-op ({why})" for dest, (written, _, why) in table.items()
            if getattr(args, ALIAS + dest) is not None]


# ------------------------------------------------------------------------------------------------------------
# train.py
# ------------------------------------------------------------------------------------------------------------

def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """Their train.py flags (the tables and the conversions in the module docstring)."""
    g = parser.add_argument_group("the release's / REPA's spellings (infra/flags.py)")
    for flag, (dest, kind) in TRAIN_RENAMES.items():
        g.add_argument(flag, dest=ALIAS + dest, type=kind, default=None, help=f"= --{dest.replace('_', '-')}")
    g.add_argument("--resume-step", dest=ALIAS + "resume_step", type=int, default=None,
                   help="REPA: resume from OUTPUT_DIR/EXP_NAME/checkpoints/{N:07d}.pt (0: start fresh)")
    g.add_argument("--use-alignment-loss", dest=ALIAS + "use_alignment_loss", action=B,
                   default=None, help="= --align-target ema (or the --align-target given); --no-...: none")
    g.add_argument("--teacher-mask", dest=ALIAS + "teacher_mask", action=B, default=None,
                   help="checked: the teacher runs on the student's groups exactly when there are groups and "
                        "--teacher-t is sra or same")
    g.add_argument("--epochs", type=int, default=None, help="train E epochs of the data (converted to steps)")
    g.add_argument("--checkpoint-epochs", type=int, default=None,
                   help="also save a checkpoint every E epochs")
    for dest in TRAIN_CHECKS:
        g.add_argument(f"--{dest.replace('_', '-')}", type=int, default=None, help="checked against the data")
    _add_no_ops(g, TRAIN_NO_OPS)
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved settings as JSON and exit (reads no data, no weights)")


def resolve_train(parser: argparse.ArgumentParser, args: argparse.Namespace, given: set) -> list[str]:
    """Turn the release's / REPA's flags in `args` into ours, in place. -> notes (one per such flag)."""
    notes = []
    if any(dest in given for dest in SIT_SRA_FLAGS.values()) and args.preset is None \
            and not given & set(GROUP_FLAGS):
        _sit_sra_command(args, given, notes)
    _alignment_switch(parser, args, given, notes)
    for flag, (dest, _) in TRAIN_RENAMES.items():
        value = getattr(args, ALIAS + dest)
        if value is None:
            continue
        if dest in given and getattr(args, dest) != value:
            parser.error(f"{flag} {value} and --{dest.replace('_', '-')} {getattr(args, dest)} disagree")
        setattr(args, dest, value)
        notes.append(f"{flag} {value} -> --{dest.replace('_', '-')} {value}")
    _resume_step(parser, args, notes)
    # REPA's flags, before --enc-type is converted
    repa = [flag for flag, (dest, _) in TRAIN_RENAMES.items() if dest in ("align_weight", "block_out_s")
            and getattr(args, ALIAS + dest) is not None]
    if args.enc_type in REPA_ENCODERS:
        repa.insert(0, "--enc-type")
    for dest, (spellings, meaning) in TRAIN_VALUES.items():
        if getattr(args, dest) in spellings:
            ours = spellings[getattr(args, dest)]
            notes.append(f"--{dest.replace('_', '-')} {getattr(args, dest)} -> {ours}"
                         + (f" ({meaning})" if meaning else ""))
            setattr(args, dest, ours)
    # each --mask-ratio argument is a list (mask_ratio_values); a preset's are numbers
    lists = [r if isinstance(r, (list, tuple)) else [r] for r in args.mask_ratio]
    args.mask_ratio = [float(v) for values in lists for v in values]
    if repa:
        _imply_repa(parser, args, given, repa, notes)
    notes += _no_op_notes(args, TRAIN_NO_OPS)
    for flag in ("epochs", "checkpoint_epochs", *TRAIN_CHECKS):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.epochs is not None and "max_train_steps" not in given:
        # set from --epochs once the data is read (epoch_steps)
        args.max_train_steps = None
    if args.epochs is not None:
        notes.append(f"--epochs {args.epochs}: converted to steps from the data's length"
                     + (f"; the run stops at the first of that and --max-train-steps {args.max_train_steps}"
                        if args.max_train_steps is not None else ""))
    notes += [f"--{f.replace('_', '-')} {getattr(args, f)}: checked against the data" for f in TRAIN_CHECKS
              if getattr(args, f) is not None]
    one_token_group(parser, args, given, notes)
    try:
        notes += check_teacher_mask(getattr(args, ALIAS + "teacher_mask"), args.align_target, args.teacher_t,
                                    args.mask_ratio)
    except ValueError as e:
        raise SystemExit(f"invalid flags: {e}") from None
    return notes


def _alignment_switch(parser, args, given, notes):
    """The release's --[no-]use-alignment-loss -> --align-target: on means the target given (or the preset's),
    ema where that is none; off means none."""
    on = getattr(args, ALIAS + "use_alignment_loss")
    if on is None:
        return
    if "align_target" in given and (args.align_target != "none") != on:
        said = f"--{'' if on else 'no-'}use-alignment-loss"
        parser.error(f"{said} and --align-target {args.align_target} disagree")
    if not on:
        args.align_target = "none"
    elif args.align_target == "none":
        args.align_target = "ema"
    notes.append(f"--{'' if on else 'no-'}use-alignment-loss -> --align-target {args.align_target}")


def _resume_step(parser, args, notes):
    """REPA's --resume-step N: the run folder's checkpoint of step N (0: start fresh)."""
    step = getattr(args, ALIAS + "resume_step")
    if step is not None and step < 0:
        parser.error(f"--resume-step must be >= 0 (0: start fresh), got {step}")
    if step:
        path = os.path.join(args.output_dir, args.exp_name, "checkpoints", f"{step:07d}.pt")
        if args.resume is not None and args.resume != path:
            parser.error(f"--resume-step {step} ({path}) and --resume {args.resume} disagree")
        args.resume = path
        notes.append(f"--resume-step {step} -> --resume {path}")
    elif step == 0:
        notes.append("--resume-step 0: start fresh (REPA's default)")


def _sit_sra_command(args: argparse.Namespace, given: set, notes: list) -> None:
    """SiT-SRA/train.py's meaning (SIT_SRA_RUN): one group, dropped labels for the teacher, its counts, and a
    per-process --batch-size made global with the launch's WORLD_SIZE. Its loss: cos (constant 0.5), or
    another distance with the epoch decay of lambda (0.2, then down: METHOD.md section 2)."""
    for dest, value in SIT_SRA_RUN.items():
        if dest not in given:
            setattr(args, dest, value)
    world = int(os.environ.get("WORLD_SIZE", 1))
    per_process = args.batch_size if "batch_size" in given else SIT_SRA_BATCH
    args.batch_size = per_process * world
    if args.loss_type not in ("cos", "cos-channel") and "align_weight" not in given:
        args.align_weight = 0.2
        if "align_weight_schedule" not in given:
            args.align_weight_schedule = "sra-512" if args.resolution == 512 else "sra-256"
    said = " ".join(flag for flag, dest in SIT_SRA_FLAGS.items() if dest in given)
    notes.append(f"{said} without a preset or a token-group flag: the original SiT-SRA command "
                 f"(SiT-SRA/train.py): one token group, teacher on the dropped labels, --batch-size "
                 f"{per_process} per process x {world} process(es) = --batch-size {args.batch_size} (global "
                 f"here), --epochs {args.epochs}, --checkpoint-steps {args.checkpoint_steps}, --sample-steps "
                 f"{args.sample_steps}, --loss-type {args.loss_type} with lambda {args.align_weight} "
                 f"({args.align_weight_schedule}); add --preset ours-b2 (or any token-group flag) for the "
                 f"DTS_AS release recipe instead")


def _imply_repa(parser, args, given, flags, notes):
    """REPA's train.py always aligns: its flags mean REPA's alignment, with REPA's defaults where not
    given."""
    said = ", ".join(flags)
    if getattr(args, ALIAS + "use_alignment_loss") is False:
        parser.error(f"{said} mean REPA's alignment, but --no-use-alignment-loss turns it off")
    if "align_target" in given and args.align_target != "repa":
        parser.error(f"{said} mean REPA's alignment, but --align-target is {args.align_target}")
    from_repa_preset = (args.preset or "").startswith("repa-")
    args.align_target = "repa"
    if "loss_type" not in given:
        args.loss_type = "cos-token"
    defaults = dict(REPA_DEFAULTS, **(REPA_RUN if args.preset is None else {}))
    for dest, value in defaults.items():
        if dest not in given and getattr(args, ALIAS + dest, None) is None and not from_repa_preset:
            setattr(args, dest, value)
    if args.repa_features is None:
        args.repa_features = "auto"
    notes.append(f"{said}: REPA alignment (--align-target repa --loss-type {args.loss_type} --block-out-s "
                 f"{args.block_out_s} --align-weight {args.align_weight} --enc-type {args.enc_type} "
                 f"--repa-features {args.repa_features})")


def one_token_group(parser: argparse.ArgumentParser, args: argparse.Namespace, given: set,
                    notes: list) -> None:
    """--mask-ratio 0 is one token group: plain SRA, as the release runs it. Token-group settings that came
    from the defaults or a preset are turned off (with a note); given on the command line, they are refused
    with the two ways out."""
    if len(args.mask_ratio) == 1 and not 0 <= args.mask_ratio[0] < 1:
        parser.error(f"--mask-ratio must lie in [0, 1) (0: one token group), got {args.mask_ratio[0]:g}")
    if len(loss.group_ratios(args.mask_ratio)) > 1:
        return
    on = [dest for dest in ("dual_time_scheduling", "attention_separation", "full_sample_prob",
                            "sorted_timesteps") if getattr(args, dest)]
    ratio = " ".join(f"{r:g}" for r in args.mask_ratio)
    said = [dest for dest in on if dest in given]
    if said:
        flags = " ".join(f"--{dest.replace('_', '-')}" for dest in said)
        parser.error(f"--mask-ratio {ratio} is one token group, so {flags} cannot apply: for plain SRA drop "
                     f"them (or add --no-dual-time-scheduling --no-attention-separation), for token groups "
                     f"set --mask-ratio to a value in (0, 1)")
    if not on:
        return
    for dest in on:
        setattr(args, dest, type(getattr(args, dest))(0))
    flags = " ".join(f"--{dest.replace('_', '-')}" for dest in on)
    source = f"--preset {args.preset}" if args.preset else "the defaults (the release recipe)"
    notes.append(f"--mask-ratio {ratio}: one token group, so {flags} of {source} are off: plain SRA, as the "
                 f"release runs --mask-ratio 0")


def check_teacher_mask(given: bool | None, align_target: str, teacher_t: str, mask_ratio) -> list[str]:
    """The release's --[no-]teacher-mask against loss.teacher_on_groups: -> a note when they agree, nothing
    when the flag is absent; a contradiction is a ValueError naming the flags."""
    if given is None:
        return []
    flag = "--teacher-mask" if given else "--no-teacher-mask"
    if given == loss.teacher_on_groups(align_target, teacher_t, mask_ratio):
        return [f"{flag}: agrees with the flags (the teacher {'runs' if given else 'does not run'} on the "
                f"groups)"]
    if given and align_target != "ema":
        why = f"--align-target {align_target} has no EMA teacher"
    elif given and teacher_t == "self_flow":
        why = ("--teacher-t self_flow feeds the teacher the whole image at t_lo (Eq. 7); --teacher-mask does "
               "not apply to it")
    elif given:
        why = f"it needs token groups: {loss.ask_for_groups(mask_ratio)}"
    else:
        why = (f"--teacher-t {teacher_t} with token groups runs the teacher on the student's groups: add "
               "--teacher-mask (or use --teacher-t self_flow for a teacher on the whole image)")
    raise ValueError(f"{flag}: {why}")


def epoch_steps(args: argparse.Namespace, steps_per_epoch: int,
                num_items: int) -> tuple[int, int | None, list[str]]:
    """--epochs / --checkpoint-epochs at `steps_per_epoch` (dataset.EpochOrder.steps_per_epoch, the release's
    count) -> (the step the run stops at, the checkpoint interval of --checkpoint-epochs or None, notes)."""
    notes = []
    last = args.max_train_steps
    if args.epochs is not None:
        bound = args.epochs * steps_per_epoch
        last = bound if last is None else min(bound, last)
        notes.append(f"--epochs {args.epochs} x {steps_per_epoch} steps per epoch ({num_items} items) = "
                     f"{bound} steps: the run stops at step {last}")
    every = args.checkpoint_epochs * steps_per_epoch if args.checkpoint_epochs else None
    if every:
        notes.append(f"--checkpoint-epochs {args.checkpoint_epochs}: also a checkpoint every {every} steps")
    return last, every, notes


def check_train_data(args: argparse.Namespace, dataset) -> None:
    """--resolution / --num-classes (release / REPA) against what the data holds: one-line SystemExit."""
    for flag in TRAIN_CHECKS:
        want = getattr(args, flag)
        if want is not None and want != getattr(dataset, flag):
            raise SystemExit(f"--{flag.replace('_', '-')} {want} but --data-dir {args.data_dir} holds "
                             f"{flag.replace('_', ' ')} {getattr(dataset, flag)}")


def saved_train_args(saved: dict) -> dict:
    """A run's saved args (args.json, a checkpoint's 'args') in today's names. Runs before --align-target none
    saved use_alignment_loss (False: no alignment, whatever align_target says) and teacher_mask (now derived
    from the groups and --teacher-t)."""
    out = dict(saved)
    if "use_alignment_loss" in out and not out.pop("use_alignment_loss"):
        out["align_target"] = "none"
    out.pop("teacher_mask", None)
    return out


# ------------------------------------------------------------------------------------------------------------
# sample_ddp.py
# ------------------------------------------------------------------------------------------------------------

def add_sample_flags(parser: argparse.ArgumentParser) -> None:
    """Their generate.py flags (SAMPLE_NO_OPS, SAMPLE_CHECKS, --mask-ratio 0, torch.distributed.launch's
    --local-rank)."""
    g = parser.add_argument_group("the release's / REPA's generate.py spellings (infra/flags.py)")
    for dest, settings in SAMPLE_CHECKS.items():
        g.add_argument(f"--{dest.replace('_', '-')}", default=None,
                       **{"help": "checked against the checkpoint", **settings})
    _add_no_ops(g, SAMPLE_NO_OPS)
    g.add_argument("--mask-ratio", dest=ALIAS + "mask_ratio", type=float, default=None,
                   help="0 only: inference uses full attention")
    g.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                   help="torch.distributed.launch: the device index when LOCAL_RANK is unset")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved settings as JSON and exit (reads no weights)")


def resolve_sample(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Check / convert the release's and REPA's generate.py flags in place. -> notes."""
    notes = _no_op_notes(args, SAMPLE_NO_OPS)
    ratio = getattr(args, ALIAS + "mask_ratio")
    if ratio is not None:
        if ratio != 0:
            parser.error(f"--mask-ratio {ratio:g}: inference uses full attention and one timestep (Sec. 4 of "
                         f"the paper); only --mask-ratio 0 is accepted")
        notes.append("--mask-ratio 0: no-op (full attention)")
    if args.projector_embed_dims is not None:
        try:
            widths = str(args.projector_embed_dims).split(",")
            args.projector_embed_dims = [int(d) for d in widths if d.strip()]
        except ValueError:
            parser.error(f"--projector-embed-dims: expected comma-separated widths such as 768, got "
                         f"{args.projector_embed_dims!r}")
    if args.local_rank is not None:
        notes.append(f"--local-rank {args.local_rank}: the device index when LOCAL_RANK is unset "
                     f"(torch.distributed.launch)")
    notes += [f"--{dest.replace('_', '-')}: checked against the checkpoint" for dest in SAMPLE_CHECKS
              if getattr(args, dest) is not None]
    return notes


def check_sample_checkpoint(args: argparse.Namespace, info: dict) -> None:
    """--resolution / --num-classes / --qk-norm / --projector-embed-dims (the release's / REPA's generate.py
    flags) against the loaded file: ValueError naming both values.

    info: models.load_checkpoint's settings of the file (resolution, num_classes, qk_norm, align_head,
    z_dim)."""
    side = info.get("resolution") or info["input_size"] * (8 if info["in_channels"] == 4 else 1)
    have = dict(resolution=int(side), num_classes=info["num_classes"], qk_norm=bool(info.get("qk_norm")))
    for flag in ("resolution", "num_classes", "qk_norm"):
        want = getattr(args, flag)
        if want is not None and want != have[flag]:
            raise ValueError(f"--{flag.replace('_', '-')} {want} but {args.ckpt} holds a model with "
                             f"{flag.replace('_', ' ')} {have[flag]}")
    dims = args.projector_embed_dims
    if dims is not None and info.get("align_head") == "projector" and dims != [info.get("z_dim")]:
        raise ValueError(f"--projector-embed-dims {','.join(map(str, dims))} but {args.ckpt} has one REPA "
                         f"projector, of width {info.get('z_dim')}")
