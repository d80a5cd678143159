"""The public releases' command-line spellings, accepted next to ours by train.py and sample_ddp.py.

The SRA release (SiT-SRA_DTS_AS/scripts/train.sh and gen.sh), the original SiT-SRA (--t-max) and REPA (its
README's train.py and generate.py commands) run unchanged and mean the same here. Each of their flags is
either converted to ours (same meaning, another name or unit), checked (against the other flags, the data or
the checkpoint, at start), or accepted as a no-op where it changes nothing in this codebase; none is ignored
silently: `resolve_*` return one note per flag, which train.py logs and `--print-config` writes to stderr
(stdout: the resolved settings as one JSON object keyed by our flag names).

train.py
    --use-alignment-loss        -> --align-target ema, or the --align-target given (repa, sra2) or the
                                   preset's; --no-use-alignment-loss -> --align-target none (a contradicting
                                   --align-target is an error)
    --[no-]teacher-mask         checked: the EMA teacher runs on the student's token groups exactly when there
                                   are groups and --teacher-t is sra or same (presets.teacher_mask); a
                                   contradiction (e.g. --teacher-mask --teacher-t self_flow) is an error
    --loss-type cos             -> cos-channel (the release's F.cosine_similarity over tokens)
    --cfg-prob P                = --class-dropout-prob P
    --prediction v              v only (anything else is an error, as in REPA)
    --mask-ratio "[0.5,0.3,0.2]" the release's list spellings ("0.25", "0.75 0.25", "[0.5,0.3,0.2]",
                                   "0.5,0.5")
    --epochs E                  -> E x steps per epoch, counted as the release does: floor(items / (local
                                   batch x processes)) batches per process, / accumulation steps. With
                                   --max-train-steps too, the run stops at the first bound reached, as their
                                   loops do (for epoch in range(epochs) ... break at max_train_steps)
    --checkpoint-epochs E       -> also a checkpoint every E epochs (E x steps per epoch), next to
                                   --checkpoint-steps
    --checkpointing-steps N     -> --checkpoint-steps N (REPA)
    --sampling-steps N          -> --sample-steps N (REPA; previews come from the EMA here)
    --resume-ckpt PATH          -> --resume PATH
    --resume-step N             -> --resume OUTPUT_DIR/EXP_NAME/checkpoints/{N:07d}.pt (REPA; 0 = start fresh)
    --resolution R, --num-classes K   checked against the data
    --allow-tf32, --[no-]fused-attn   no-ops: TF32 is always on in training, attention always uses the fused
                                   kernel (equal to the releases' math attention up to rounding)
    --enc-type dinov2-vit-{s,b,l,g}, --proj-coeff W, --encoder-depth D   REPA: -> --enc-type
                                   dinov2_vit{s,b,l,g}14, --align-weight W, --block-out-s D; any of them turns
                                   on REPA's alignment (REPA's train.py always aligns): --align-target repa,
                                   --loss-type cos-token (REPA's per-token cosine), REPA's defaults for what
                                   is not given (encoder depth 8, weight 0.5, dinov2-vit-b; without a preset
                                   also one token group and REPA's 400K steps, 50K-step checkpoints, 10K-step
                                   previews), targets precomputed from the real images (--repa-features auto)
sample_ddp.py
    --resolution R, --num-classes K, --qk-norm, --projector-embed-dims D   checked against the checkpoint
    --encoder-depth, --use-alignment-loss, --attention-separation, --[no-]fused-attn, --mask-ratio 0   no-ops:
                                   the heads are not run when sampling and inference uses full attention (any
                                   other --mask-ratio is an error)
    --local-rank / --local_rank N  torch.distributed.launch's argument: the device index when LOCAL_RANK is
                                   unset

Run folders written before --align-target none saved use_alignment_loss and teacher_mask in their args:
saved_train_args reads them in today's names.
"""
import argparse
import json
import math
import os
import re
import sys

import loss

# prefix of the dests that resolve_* consume
_ALIAS = "alias__"
REPA_ENCODERS = {f"dinov2-vit-{s}": f"dinov2_vit{s}14" for s in "sblg"}
REPA_DEFAULTS = dict(block_out_s=8, align_weight=0.5, enc_type="dinov2_vitb14")
# REPA's train.py without a preset: one token group and its step counts (train.py's own defaults are the SRA
# release's recipe)
REPA_RUN = dict(mask_ratio=[0.0], dual_time_scheduling=False, attention_separation=False,
                full_sample_prob=0.0, max_train_steps=400_000, checkpoint_steps=50_000, sample_steps=10_000)
# The original SiT-SRA's train.py (SiT-SRA/train.py, the SRA paper's XL/2 README command): --t-max and
# --data-dir-train are its flags (DTS_AS fixes t_max at 0.2). A command with one of them, no preset and none
# of the token-group / teacher flags below is that folder's: one token group, the teacher on the student's
# dropped labels, its checkpoint / preview / epoch counts, and --batch-size per process (global in DTS_AS and
# here).
SIT_SRA_FLAGS = {"--t-max": "t_max", "--data-dir-train": _ALIAS + "data_dir"}
SIT_SRA_RUN = dict(mask_ratio=[0.0], dual_time_scheduling=False, attention_separation=False,
                   full_sample_prob=0.0, teacher_labels="dropped", checkpoint_steps=50_000,
                   sample_steps=100_000, epochs=801)
# SiT-SRA/train.py's default per-process batch
SIT_SRA_BATCH = 32
# flags that only DTS_AS (or this codebase) has: with one of them, --t-max is this codebase's --t-max
GROUP_FLAGS = ("mask_ratio", "dual_time_scheduling", "attention_separation", "teacher_t", "full_sample_prob",
               "sorted_timesteps", "align_target", _ALIAS + "use_alignment_loss",
               _ALIAS + "teacher_mask")
# loss.LossConfig field -> its other spellings (train.py adds them to the field's flag)
LOSS_SPELLINGS = {"class_dropout_prob": ("--cfg-prob",)}
# their flag -> our dest, same meaning (train.py)
TRAIN_RENAMES = {"--checkpointing-steps": "checkpoint_steps", "--sampling-steps": "sample_steps",
                 "--resume-ckpt": "resume", "--proj-coeff": "align_weight", "--encoder-depth": "block_out_s",
                 "--data-dir-train": "data_dir"}


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Bad flags exit 2 with one line (prog: error: ...), not the whole usage block."""
    def error(message):
        parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")
    parser.error = error
    return parser


def _action(parser, dest):
    return next(a for a in parser._actions if a.dest == dest)


def mask_ratio_values(text: str) -> list:
    """One --mask-ratio argument -> floats: '0.25', '[0.5,0.3,0.2]', '0.5,0.5' (as the release parses
    them)."""
    parts = [p for p in re.split(r"[\s,\[\]]+", str(text)) if p]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers such as 0.25 or [0.5,0.3,0.2], "
                                         f"got {text!r}") from None


def given_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set:
    """The dests set on the command line itself (not by a default or a preset)."""
    saved, saved_defaults = {a.dest: a.default for a in parser._actions}, parser._defaults
    try:
        # the preset's values (set_defaults)
        parser._defaults = {}
        for a in parser._actions:
            a.default = argparse.SUPPRESS
        known, _ = parser.parse_known_args(argv)
    finally:
        parser._defaults = saved_defaults
        for a in parser._actions:
            a.default = saved[a.dest]
    return set(vars(known))


def print_config(args: argparse.Namespace, notes: list[str], drop: tuple = ()) -> None:
    """The resolved settings on stdout (one JSON object, our flag names), the notes on stderr."""
    cfg = {k: v for k, v in sorted(vars(args).items()) if not k.startswith(_ALIAS) and k not in drop}
    print(json.dumps(cfg))
    for n in notes:
        print(f"note: {n}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------------------
# train.py
# ------------------------------------------------------------------------------------------------------------

def add_train_aliases(parser: argparse.ArgumentParser) -> None:
    """The release's and REPA's train.py flags that are not ours (see the module docstring)."""
    B = argparse.BooleanOptionalAction
    _action(parser, "loss_type").choices = list(_action(parser, "loss_type").choices) + ["cos"]
    _action(parser, "enc_type").choices = list(_action(parser, "enc_type").choices) + sorted(REPA_ENCODERS)
    _action(parser, "mask_ratio").type = mask_ratio_values
    g = parser.add_argument_group("the release's / REPA's spellings (flags.py)")
    for flag, dest in TRAIN_RENAMES.items():
        g.add_argument(flag, dest=_ALIAS + dest, type=_action(parser, dest).type, default=None,
                       help=f"= --{dest.replace('_', '-')}")
    g.add_argument("--resume-step", dest=_ALIAS + "resume_step", type=int, default=None,
                   help="REPA: resume from OUTPUT_DIR/EXP_NAME/checkpoints/{N:07d}.pt (0: start fresh)")
    g.add_argument("--use-alignment-loss", dest=_ALIAS + "use_alignment_loss", action=B,
                   default=None, help="= --align-target ema (or the --align-target given); --no-...: none")
    g.add_argument("--teacher-mask", dest=_ALIAS + "teacher_mask", action=B, default=None,
                   help="checked: the teacher runs on the student's groups exactly when there are groups and "
                        "--teacher-t is sra or same")
    g.add_argument("--epochs", type=int, default=None, help="train E epochs of the data (converted to steps)")
    g.add_argument("--checkpoint-epochs", type=int, default=None,
                   help="also save a checkpoint every E epochs")
    g.add_argument("--resolution", type=int, default=None, help="checked against the data")
    g.add_argument("--num-classes", type=int, default=None, help="checked against the data")
    g.add_argument("--prediction", dest=_ALIAS + "prediction", choices=["v"], default=None,
                   help="v only (velocity prediction)")
    g.add_argument("--allow-tf32", dest=_ALIAS + "allow_tf32", action="store_true", default=None,
                   help="no-op: TF32 is always on")
    g.add_argument("--fused-attn", dest=_ALIAS + "fused_attn", action=B,
                   default=None, help="no-op: attention always runs fused")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved settings as JSON and exit (reads no data, no weights)")


def resolve_train_aliases(parser: argparse.ArgumentParser, args: argparse.Namespace, given: set) -> list:
    """Turn the release's / REPA's flags in `args` into ours, in place. -> notes (one per such flag)."""
    notes = []
    if _sit_sra_flags(given) and args.preset is None and not given & set(GROUP_FLAGS):
        _sit_sra_command(args, given, notes)
    _alignment_switch(parser, args, given, notes)
    for flag, dest in TRAIN_RENAMES.items():
        value = getattr(args, _ALIAS + dest)
        if value is None:
            continue
        if dest in given and getattr(args, dest) != value:
            parser.error(f"{flag} {value} and --{dest.replace('_', '-')} {getattr(args, dest)} disagree")
        setattr(args, dest, value)
        notes.append(f"{flag} {value} -> --{dest.replace('_', '-')} {value}")
    step = getattr(args, _ALIAS + "resume_step")
    if step:
        path = os.path.join(args.output_dir, args.exp_name, "checkpoints", f"{step:07d}.pt")
        if args.resume is not None and args.resume != path:
            parser.error(f"--resume-step {step} ({path}) and --resume {args.resume} disagree")
        args.resume = path
        notes.append(f"--resume-step {step} -> --resume {path}")
    elif step == 0:
        notes.append("--resume-step 0: start fresh (REPA's default)")
    if args.loss_type == "cos":
        args.loss_type = "cos-channel"
        notes.append("--loss-type cos -> cos-channel (the release's cosine over tokens, per channel)")
    args.mask_ratio = [float(v) for r in args.mask_ratio
                       for v in (r if isinstance(r, (list, tuple)) else [r])]
    repa = [f for f, d in TRAIN_RENAMES.items() if d in ("align_weight", "block_out_s")
            and getattr(args, _ALIAS + d) is not None]
    if args.enc_type in REPA_ENCODERS:
        repa.insert(0, "--enc-type")
    if args.enc_type in REPA_ENCODERS:
        notes.append(f"--enc-type {args.enc_type} -> {REPA_ENCODERS[args.enc_type]}")
        args.enc_type = REPA_ENCODERS[args.enc_type]
    if repa:
        _imply_repa(parser, args, given, repa, notes)
    if getattr(args, _ALIAS + "prediction") is not None:
        notes.append("--prediction v: no-op (the network predicts the velocity)")
    if getattr(args, _ALIAS + "allow_tf32"):
        notes.append("--allow-tf32: no-op (TF32 matmuls are always on in training)")
    if getattr(args, _ALIAS + "fused_attn") is not None:
        notes.append("--[no-]fused-attn: no-op (attention runs the fused kernel; the math kernel differs "
                     "only by rounding)")
    for flag in ("epochs", "checkpoint_epochs", "resolution", "num_classes"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.epochs is not None and "max_train_steps" not in given:
        # set from --epochs once the data is read
        args.max_train_steps = None
    if args.epochs is not None:
        notes.append(f"--epochs {args.epochs}: converted to steps from the data's length"
                     + (f"; the run stops at the first of that and --max-train-steps {args.max_train_steps}"
                        if args.max_train_steps is not None else ""))
    for flag in ("resolution", "num_classes"):
        if getattr(args, flag) is not None:
            notes.append(f"--{flag.replace('_', '-')} {getattr(args, flag)}: checked against the data")
    return notes


def _alignment_switch(parser, args, given, notes):
    """The release's --[no-]use-alignment-loss -> --align-target: on means the target given (or the preset's),
    ema where that is none; off means none."""
    on = getattr(args, _ALIAS + "use_alignment_loss")
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


def one_token_group(parser: argparse.ArgumentParser, args: argparse.Namespace, given: set,
                    notes: list) -> None:
    """--mask-ratio 0 (or 1) is one token group: plain SRA, as the release runs it. Token-group settings that
    came from the defaults or a preset are turned off (with a note); given on the command line, they are
    refused with the two ways out."""
    if len(args.mask_ratio) == 1 and not 0 <= args.mask_ratio[0] < 1:
        parser.error(f"--mask-ratio must lie in [0, 1) (0: one token group), got {args.mask_ratio[0]:g}")
    if len(loss.group_ratios(args.mask_ratio)) > 1:
        return
    on = [dest for dest in ("dual_time_scheduling", "attention_separation", "full_sample_prob",
                            "sorted_timesteps") if getattr(args, dest)]
    flags = " ".join(f"--{dest.replace('_', '-')}" for dest in on)
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
    source = f"--preset {args.preset}" if args.preset else "the defaults (the release recipe)"
    notes.append(f"--mask-ratio {ratio}: one token group, so {flags} of {source} are off: plain SRA, as the "
                 f"release runs --mask-ratio 0")


def check_teacher_mask(args: argparse.Namespace, derived: bool) -> str:
    """The release's --[no-]teacher-mask against the derived value (train.teacher_mask_of): one line (a note)
    when they agree, SystemExit when they contradict."""
    said = getattr(args, _ALIAS + "teacher_mask")
    if said is None:
        return ""
    flag = "--teacher-mask" if said else "--no-teacher-mask"
    if said == derived:
        runs = "runs" if said else "does not run"
        return f"{flag}: agrees with the flags (the teacher {runs} on the groups)"
    try:
        loss.check_teacher_mask(said, args.align_target, args.teacher_t, args.mask_ratio)
    except ValueError as e:
        raise SystemExit(f"invalid flags: {e}") from None
    return ""


def saved_train_args(saved: dict) -> dict:
    """A run's saved args (args.json, a checkpoint's 'args') in today's names. Runs before --align-target none
    saved use_alignment_loss (False: no alignment, whatever align_target says) and teacher_mask (now derived
    from the groups and --teacher-t)."""
    out = dict(saved)
    if "use_alignment_loss" in out and not out.pop("use_alignment_loss"):
        out["align_target"] = "none"
    out.pop("teacher_mask", None)
    return out


def _sit_sra_flags(given: set) -> list[str]:
    """The original SiT-SRA folder's own flags on the command line."""
    return [flag for flag, dest in SIT_SRA_FLAGS.items() if dest in given]


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
    notes.append(f"{' '.join(_sit_sra_flags(given))} without a preset or a token-group flag: the original "
                 f"SiT-SRA command (SiT-SRA/train.py): one token group, teacher on the dropped labels, "
                 f"--batch-size {per_process} per process x {world} process(es) = --batch-size "
                 f"{args.batch_size} (global here), --epochs {args.epochs}, --checkpoint-steps "
                 f"{args.checkpoint_steps}, --sample-steps {args.sample_steps}, --loss-type {args.loss_type} "
                 f"with lambda {args.align_weight} ({args.align_weight_schedule}); add --preset ours-b2 (or "
                 f"any token-group flag) for the DTS_AS release recipe instead")


def _imply_repa(parser, args, given, flags, notes):
    """REPA's train.py always aligns: its flags mean REPA's alignment, with REPA's defaults where not
    given."""
    said = ", ".join(flags)
    if getattr(args, _ALIAS + "use_alignment_loss") is False:
        parser.error(f"{said} mean REPA's alignment, but --no-use-alignment-loss turns it off")
    if "align_target" in given and args.align_target != "repa":
        parser.error(f"{said} mean REPA's alignment, but --align-target is {args.align_target}")
    from_repa_preset = (args.preset or "").startswith("repa-")
    args.align_target = "repa"
    if "loss_type" not in given:
        args.loss_type = "cos-token"
    defaults = dict(REPA_DEFAULTS, **(REPA_RUN if args.preset is None else {}))
    for dest, value in defaults.items():
        if dest not in given and getattr(args, _ALIAS + dest, None) is None and not from_repa_preset:
            setattr(args, dest, value)
    if args.repa_features is None:
        args.repa_features = "auto"
    notes.append(f"{said}: REPA alignment (--align-target repa --loss-type {args.loss_type} --block-out-s "
                 f"{args.block_out_s} --align-weight {args.align_weight} --enc-type {args.enc_type} "
                 f"--repa-features {args.repa_features})")


def steps_per_epoch(num_items: int, batch_size: int, world_size: int, grad_accum: int) -> int:
    """Optimizer steps in one pass over the data, as the release / REPA count them (accelerate-prepared
    DataLoader with drop_last): floor(items / (local batch x processes)) batches per process, then one step
    per `grad_accum` batches (the last, shorter accumulation of an epoch also steps)."""
    local = batch_size // world_size // grad_accum
    batches = num_items // (local * world_size)
    if batches < 1:
        raise SystemExit(f"--batch-size {batch_size}: the data has {num_items} items, fewer than one global "
                         f"batch of {local * world_size}")
    return math.ceil(batches / grad_accum)


def apply_epochs(args: argparse.Namespace, num_items: int, world_size: int) -> list:
    """--epochs / --checkpoint-epochs -> steps (in place): args.max_train_steps, args.checkpoint_epoch_steps.
    -> notes."""
    spe = steps_per_epoch(num_items, args.batch_size, world_size, args.gradient_accumulation_steps)
    args.steps_per_epoch = spe
    notes = []
    if args.epochs is not None:
        bound = args.epochs * spe
        args.max_train_steps = bound if args.max_train_steps is None else min(bound, args.max_train_steps)
        notes.append(f"--epochs {args.epochs} x {spe} steps per epoch ({num_items} items) = {bound} steps: "
                     f"the run stops at step {args.max_train_steps}")
    args.checkpoint_epoch_steps = args.checkpoint_epochs * spe if args.checkpoint_epochs else None
    if args.checkpoint_epochs:
        notes.append(f"--checkpoint-epochs {args.checkpoint_epochs}: also a checkpoint every "
                     f"{args.checkpoint_epoch_steps} steps")
    return notes


def check_train_data(args: argparse.Namespace, dataset) -> None:
    """--resolution / --num-classes (release / REPA) against what the data holds: one-line SystemExit."""
    for flag, have in (("resolution", dataset.resolution), ("num_classes", dataset.num_classes)):
        want = getattr(args, flag)
        if want is not None and want != have:
            raise SystemExit(f"--{flag.replace('_', '-')} {want} but --data-dir {args.data_dir} holds "
                             f"{flag.replace('_', ' ')} {have}")


# ------------------------------------------------------------------------------------------------------------
# sample_ddp.py
# ------------------------------------------------------------------------------------------------------------

def add_sample_aliases(parser: argparse.ArgumentParser) -> None:
    """The release's and REPA's generate.py flags that are not ours (see the module docstring)."""
    B = argparse.BooleanOptionalAction
    g = parser.add_argument_group("the release's / REPA's generate.py spellings (flags.py)")
    g.add_argument("--resolution", type=int, default=None, help="checked against the checkpoint")
    g.add_argument("--num-classes", type=int, default=None, help="checked against the checkpoint")
    g.add_argument("--qk-norm", action=B, default=None,
                   help="checked against the checkpoint")
    g.add_argument("--projector-embed-dims", default=None,
                   help="REPA: checked against the checkpoint's projector")
    g.add_argument("--encoder-depth", dest=_ALIAS + "encoder_depth", type=int, default=None,
                   help="no-op: the alignment head is not run when sampling")
    g.add_argument("--use-alignment-loss", dest=_ALIAS + "use_alignment_loss", action="store_true",
                   default=None, help="no-op: the head is loaded as the file has it and not run")
    g.add_argument("--attention-separation", dest=_ALIAS + "attention_separation", action="store_true",
                   default=None, help="no-op: inference uses full attention")
    g.add_argument("--fused-attn", dest=_ALIAS + "fused_attn", action=B, default=None,
                   help="no-op: attention always runs fused")
    g.add_argument("--mask-ratio", dest=_ALIAS + "mask_ratio", type=float, default=None,
                   help="0 only: inference uses full attention")
    g.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                   help="torch.distributed.launch: the device index when LOCAL_RANK is unset")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved settings as JSON and exit (reads no weights)")


def resolve_sample_aliases(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list:
    """Check / convert the release's and REPA's generate.py flags in place. -> notes."""
    notes = []
    for dest, why in (("encoder_depth", "the alignment head is not run when sampling"),
                      ("use_alignment_loss", "the head is loaded as the file has it and not run"),
                      ("attention_separation", "inference uses full attention"),
                      ("fused_attn", "attention runs the fused kernel")):
        if getattr(args, _ALIAS + dest) is not None:
            notes.append(f"--{dest.replace('_', '-')}: no-op ({why})")
    ratio = getattr(args, _ALIAS + "mask_ratio")
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
    for flag in ("resolution", "num_classes", "qk_norm", "projector_embed_dims"):
        if getattr(args, flag) is not None:
            notes.append(f"--{flag.replace('_', '-')}: checked against the checkpoint")
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
