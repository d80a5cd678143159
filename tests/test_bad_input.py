"""Bad input at every entry point ends with one line naming the flag or the file (issue 13, "Bad input").

Each row of CASES is one input: (entry point, command line, fragment the message must contain). Every entry
point is called in-process through its main(argv); `outcome` sorts what happened into
    ok          SystemExit (or a returned exit code >= 1 with one line on stderr) whose one-line message names
                the fragment,
    unnamed     one line, but without the fragment (e.g. numpy's own text under --data-dir),
    multi-line  an error message of several lines,
    traceback   any other exception (what a user sees as a Python traceback),
    accepted    the command ran (silently wrong for these inputs).
The inputs are built once per module in small temporary folders (a latent-shard dataset of random moments, a
tiny image folder and VAE, a tiny checkpoint, npz batches), so the whole table runs in about 30 s on one core.
"""
import contextlib
import io
import multiprocessing
import json
import os
import shutil
import signal
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import bench
import sample_ddp
import train
from evaluations import evaluator, make_reference
from fixtures import tiny
from models import SiT_models
from preprocessing import encode, import_repa, repa_features
from preprocessing.shards import ShardWriter, atomic_write_json, finalize, shard_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the scripts' folder is not a package: on the path for collect_results
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import collect_results  # noqa: E402

TRAIN = ["--preset", "digits", "--batch-size", "16", "--log-every", "1", "--sample-steps", "0",
         "--eval-samples", "0", "--num-workers", "0", "--mixed-precision", "no", "--block-out-s", "1",
         "--block-out-t", "2", "--max-train-steps", "1", "--checkpoint-steps", "1"]


# ------------------------------------------------------------------------------------------------ the inputs
def _write_shards(out, counts=(24, 16), h=8, num_classes=5, seed=0, labels=None, poison=None):
    """A shard-format dataset of random moments (preprocessing.shards, no VAE); poison (shard, row): a
    NaN."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "shards"), exist_ok=True)
    for k, c in enumerate(counts):
        m = rng.normal(size=(c, 8, h, h)).astype(np.float32)
        m[:, 4:] = np.exp(m[:, 4:] - 2)
        if poison is not None and poison[0] == k:
            m[poison[1], 2, 1, 1] = np.nan
        y = rng.integers(0, num_classes, c) if labels is None else np.asarray(labels[k])
        w = ShardWriter(shard_files(out, k)["moments"], c, (8, h, h), "float32")
        w.write(m)
        atomic_write_json(shard_files(out, k)["meta"], {"count": c, "labels": y.tolist(),
                                                         "sources": [[f"c/{k}_{i}.png", 0] for i in range(c)],
                                                         "skipped": [], "stats": w.stats})
        w.close()
    header = {"resolution": 8 * h, "latent_size": h, "latent_channels": 4, "moments_shape": [8, h, h],
              "dtype": "float32", "vae": "test", "flip": False, "num_classes": num_classes,
              "class_names": [f"c{i}" for i in range(num_classes)]}
    finalize(out, len(counts), header)
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def build_inputs(root):
    """Every file the table refers to, under `root`; returns {name: path} for the command-line templates."""
    p = {"root": root, "out": os.path.join(root, "runs"), "file": os.path.join(root, "a_file.txt")}
    with open(p["file"], "w") as f:
        f.write("not a folder\n")
    rnd = np.random.default_rng(1).bytes(4096)

    lat = p["lat"] = _write_shards(os.path.join(root, "lat"))
    high, negative = [[0] * 23 + [7], [1] * 16], [[0] * 24, [-1] + [1] * 15]
    p["lat_label_high"] = _write_shards(os.path.join(root, "lat_label_high"), labels=high)
    p["lat_label_neg"] = _write_shards(os.path.join(root, "lat_label_neg"), labels=negative)
    p["lat_nan"] = _write_shards(os.path.join(root, "lat_nan"), poison=(1, 3))
    p["lat_json"] = _copy(lat, os.path.join(root, "lat_json"))
    with open(os.path.join(p["lat_json"], "dataset.json"), "r+") as f:
        text = f.read()
        f.seek(0)
        # cut in the middle: not JSON
        f.write(text[: len(text) // 2])
        f.truncate()
    p["lat_json_key"] = _copy(lat, os.path.join(root, "lat_json_key"))
    info = json.load(open(os.path.join(lat, "dataset.json")))
    del info["num_classes"]
    json.dump(info, open(os.path.join(p["lat_json_key"], "dataset.json"), "w"))
    p["lat_shard_bytes"] = _copy(lat, os.path.join(root, "lat_shard_bytes"))
    open(os.path.join(p["lat_shard_bytes"], "shards", "moments-00000.npy"), "wb").write(rnd)
    p["lat_shard_cut"] = _copy(lat, os.path.join(root, "lat_shard_cut"))
    shard = os.path.join(p["lat_shard_cut"], "shards", "moments-00001.npy")
    os.truncate(shard, os.path.getsize(shard) // 2)
    p["lat_labels_bytes"] = _copy(lat, os.path.join(root, "lat_labels_bytes"))
    open(os.path.join(p["lat_labels_bytes"], "labels.npy"), "wb").write(rnd)
    p["lat_labels_float"] = _copy(lat, os.path.join(root, "lat_labels_float"))
    np.save(os.path.join(p["lat_labels_float"], "labels.npy"), np.full(40, 0.5))

    repa = os.path.join(root, "repa", "vae-sd")
    os.makedirs(os.path.join(repa, "00000"))
    entries = []
    for i in range(20):
        rel = f"00000/img-mean-std-{i:08d}.npy"
        moments = np.abs(np.random.default_rng(i).normal(size=(8, 8, 8))).astype(np.float32)
        np.save(os.path.join(repa, rel), moments)
        entries.append([rel, i % 4])
    json.dump({"labels": entries}, open(os.path.join(repa, "dataset.json"), "w"))
    p["repa"] = os.path.dirname(repa)
    p["repa_json"] = _copy(p["repa"], os.path.join(root, "repa_json"))
    open(os.path.join(p["repa_json"], "vae-sd", "dataset.json"), "w").write('{"labels": [["00000/img')
    p["repa_neg"] = _copy(p["repa"], os.path.join(root, "repa_neg"))
    json.dump({"labels": [[r, -1 if i == 5 else y] for i, (r, y) in enumerate(entries)]},
              open(os.path.join(p["repa_neg"], "vae-sd", "dataset.json"), "w"))
    p["repa_npy_bytes"] = _copy(p["repa"], os.path.join(root, "repa_npy_bytes"))
    open(os.path.join(p["repa_npy_bytes"], "vae-sd", "00000", "img-mean-std-00000000.npy"), "wb").write(rnd)

    # a tiny ImageNet layout, a narrow VAE, and one finished preprocessing run (32 px, 2 shards)
    src = p["images"] = os.path.join(root, "imagenet", "train")
    rng = np.random.default_rng(0)
    for c in range(2):
        os.makedirs(os.path.join(src, f"n{c:08d}"))
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                os.path.join(src, f"n{c:08d}", f"{i}.png"))
    with contextlib.redirect_stdout(io.StringIO()):
        tiny.tiny_vae(os.path.join(root, "vae"))
    p["vae"] = os.path.join(root, "vae")
    p["done"] = os.path.join(root, "encoded")
    with contextlib.redirect_stdout(io.StringIO()):
        assert encode.main([src, p["done"], "--resolution", "32", "--vae", p["vae"], "--batch-size", "4",
                            "--shard-size", "4", "--workers", "0", "--device", "cpu", "--no-progress"]) == 0

    # a tiny pixel-space checkpoint for sample_ddp (SiT-T/2 on 8x8 one-channel images)
    torch.manual_seed(0)
    sd = SiT_models["SiT-T/2"](input_size=8, in_channels=1, num_classes=10).state_dict()
    p["ckpt"] = os.path.join(root, "0000001.pt")
    torch.save({"model": sd, "ema": sd, "args": {"model": "SiT-T/2"}, "steps": 1, "time_convention": "ours"},
               p["ckpt"])

    # npz batches for the evaluator and make_reference; a graph file that is never parsed (checks come first)
    imgs = np.random.default_rng(2).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    for name, arrays in {"good": {"arr_0": imgs}, "one": {"arr_0": imgs[:1]}, "keys": {"images": imgs},
                         "float": {"arr_0": imgs.astype(np.float32)},
                         "nchw": {"arr_0": imgs.transpose(0, 3, 1, 2)},
                         "nan_stats": {"arr_0": imgs, "mu": np.full(2048, np.nan), "sigma": np.eye(2048),
                                       "mu_s": np.zeros(2023), "sigma_s": np.eye(2023)},
                         "bad_labels": {"arr_0": imgs, "labels": np.arange(3)}}.items():
        p[f"npz_{name}"] = os.path.join(root, f"{name}.npz")
        np.savez(p[f"npz_{name}"], **arrays)
    p["npz_bytes"] = os.path.join(root, "bytes.npz")
    open(p["npz_bytes"], "wb").write(rnd)
    p["graph"] = os.path.join(root, "graph.pb")
    open(p["graph"], "wb").write(b"never parsed")

    # results folders for collect_results: a record cut short, a sampling.json cut short, a value that is text
    record = {"fid": 30.2, "sfid": 6.1, "inception_score": 45.0, "precision": 0.6, "recall": 0.6,
              "num_samples": 10}
    sampling = {"settings": {"steps": 100000, "mode": "sde", "num_steps": 250, "cfg_scale": 1.0},
                "checkpoint": "runs/b2-dual-as-r0.25/checkpoints/0100000.pt", "num_fid_samples": 10}
    for name, rec, smp in (("res_good", json.dumps(record), json.dumps(sampling)),
                           ("res_json", json.dumps(record)[:20], json.dumps(sampling)),
                           ("res_sampling", json.dumps(record), json.dumps(sampling)[:20]),
                           ("res_value", json.dumps(dict(record, fid="n/a")), json.dumps(sampling))):
        d = p[name] = os.path.join(root, name)
        os.makedirs(d)
        open(os.path.join(d, "samples_10_eval.json"), "w").write(rec)
        open(os.path.join(d, "sampling.json"), "w").write(smp)
    return p


# ------------------------------------------------------------------------------------------------ the table
def _train(argv):
    return train.main(TRAIN + argv)


def _sample(argv):
    try:
        return sample_ddp.main(argv)
    # what sample_ddp's __main__ prints
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"sample_ddp.py: error: {e}") from None


def _encode(argv):
    return encode.main(argv)


def _import_repa(argv):
    return import_repa.main(argv)


def _repa_features(argv):
    return repa_features.main(argv)


def _evaluator(argv):
    return evaluator.main(argv)


def _make_reference(argv):
    return make_reference.main(argv)


def _collect(argv):
    return collect_results.main(argv)


def _bench(argv):
    return bench.main(["--model", "SiT-T/2", "--resolution", "32", "--batch-size", "2", "--device", "cpu",
                       "--steps", "1", "--warmup", "0", "--block-out-s", "1", "--block-out-t", "2"] + argv)


ENTRY = {"train": _train, "sample": _sample, "encode": _encode, "import-repa": _import_repa,
         "repa-features": _repa_features, "evaluator": _evaluator, "make-reference": _make_reference,
         "collect": _collect, "bench": _bench}

# train.py on a dataset folder
D = "--output-dir {out} --exp-name bad --data-dir"
SMP = "--ckpt {ckpt} --num-fid-samples 2 --per-proc-batch-size 2 --num-steps 1 --no-progress"
ENC = "{images} {root}/enc_new --vae {vae} --device cpu --workers 0 --no-progress"
EV = "{npz_good} {npz_good} --inception {graph} --no-progress"
MR = "{root}/ref_out.npz --no-stats"

CASES = [
    # train.py: values that were accepted and silently wrong
    ("train", "--ema-decay 1.5", "--ema-decay"),
    ("train", "--ema-decay -0.5", "--ema-decay"),
    ("train", "--ema-decay nan", "--ema-decay"),
    ("train", "--class-dropout-prob 1", "--class-dropout-prob"),
    ("train", "--class-dropout-prob -0.1", "--class-dropout-prob"),
    ("train", "--max-grad-norm 0", "--max-grad-norm"),
    ("train", "--max-grad-norm -1", "--max-grad-norm"),
    ("train", "--learning-rate nan", "--learning-rate"),
    ("train", "--sample-steps -1", "--sample-steps"),
    ("train", "--keep-last -1", "--keep-last"),
    ("train", "--eval-samples -5", "--eval-samples"),
    ("train", "--full-sample-prob 1.5", "--full-sample-prob"),
    ("train", "--mask-ratio 1.5", "--mask-ratio"),
    ("train", "--checkpoint-minutes -1", "--checkpoint-minutes"),
    ("train", "--checkpoint-minutes nan", "--checkpoint-minutes"),
    # train.py: values that crashed somewhere inside
    ("train", "--batch-size 0", "--batch-size"),
    ("train", "--batch-size -16", "--batch-size"),
    ("train", "--gradient-accumulation-steps 0", "--gradient-accumulation-steps"),
    ("train", "--batch-size 4096", "--batch-size 4096"),
    ("train", "--learning-rate -0.0001", "--learning-rate"),
    ("train", "--adam-beta1 1", "--adam-beta1"),
    ("train", "--adam-beta2 -0.1", "--adam-beta2"),
    ("train", "--adam-epsilon -1", "--adam-epsilon"),
    ("train", "--adam-weight-decay -1", "--adam-weight-decay"),
    ("train", "--preview-num-steps 0 --sample-steps 1", "--preview-num-steps"),
    ("train", "--output-dir {file}", "--output-dir"),
    ("train", "--seed -1", "--seed"),
    ("train", "--data-dir digits:x", "digits:x"),
    ("train", "--data-dir digits:12", "--data-dir"),
    ("train", f"{D} {{lat}} --num-workers -1", "--num-workers"),
    # train.py: data files, named
    ("train", f"{D} {{lat_label_high}}", "labels.npy"),
    ("train", f"{D} {{lat_label_neg}}", "labels.npy"),
    ("train", f"{D} {{lat_labels_float}}", "labels.npy"),
    ("train", f"{D} {{lat_labels_bytes}}", "labels.npy"),
    ("train", f"{D} {{lat_json}}", "dataset.json"),
    ("train", f"{D} {{lat_json_key}}", "dataset.json"),
    ("train", f"{D} {{lat_shard_bytes}}", "moments-00000.npy"),
    ("train", f"{D} {{lat_shard_cut}}", "moments-00001.npy"),
    ("train", f"{D} {{lat_nan}}", "moments-00001.npy"),
    ("train", f"{D} {{repa_json}}", "dataset.json"),
    ("train", f"{D} {{repa_neg}}", "dataset.json"),
    ("train", f"{D} {{repa_npy_bytes}}", "img-mean-std-00000000.npy"),
    # sample_ddp.py
    ("sample", f"{SMP} --sample-dir {{file}}", "--sample-dir"),
    ("sample", f"{SMP} --sample-dir {{file}}/sub", "--sample-dir"),
    ("sample", f"{SMP} --sample-dir {{root}}/s --grid --grid-per-class 0", "--grid-per-class"),
    ("sample", f"{SMP} --sample-dir {{root}}/s --cfg-scale nan", "--cfg-scale"),
    ("sample", f"{SMP} --sample-dir {{root}}/s --cfg-scale -1", "--cfg-scale"),
    ("sample", f"{SMP} --sample-dir {{root}}/s --vae {{file}}", "--vae"),
    ("sample", f"{SMP} --sample-dir {{root}}/s --global-seed 18446744073709551615", "--global-seed"),
    # python -m preprocessing (encode)
    ("encode", f"{ENC} --resolution 100", "--resolution 100"),
    ("encode", f"{ENC} --resolution 0", "--resolution 0"),
    ("encode", f"{ENC} --batch-size 0", "--batch-size"),
    ("encode", f"{ENC} --shard-size 0", "--shard-size"),
    ("encode", f"{ENC} --workers -1", "--workers"),
    ("encode", f"{ENC} --reference-batch -1", "--reference-batch"),
    ("encode", f"{ENC} --max-shards 0", "--max-shards"),
    ("encode", f"{ENC} --device nonsense", "--device"),
    ("encode", "{images} {file} --vae {vae} --device cpu --workers 0 --no-progress", "OUT_DIR"),
    ("encode", "{images} {done} --vae {vae} --device cpu --workers 0 --no-progress --resolution 64 "
               "--batch-size 4 --shard-size 4", "--resolution"),
    ("encode", "{images} {done} --vae {vae} --device cpu --workers 0 --no-progress --resolution 32 "
               "--batch-size 4 --shard-size 4 --flip", "--flip"),
    ("encode", "{images} {done} --vae {vae} --device cpu --workers 0 --no-progress --resolution 32 "
               "--batch-size 4 --shard-size 3", "--shard-size"),
    # import-repa, repa-features
    ("import-repa", "{repa} {root}/imp0 --shard-size 0 --no-progress", "--shard-size"),
    ("import-repa", "{repa} {root}/imp1 --workers -1 --no-progress", "--workers"),
    ("import-repa", "{repa} {file} --workers 0 --no-progress", "OUT_DIR"),
    ("import-repa", "{repa} {root}/imp2 --num-classes 2 --workers 0 --no-progress", "--num-classes 2"),
    ("import-repa", "{repa_json} {root}/imp3 --workers 0 --no-progress", "dataset.json"),
    ("repa-features", "{done} --batch-size 0 --device cpu", "--batch-size"),
    ("repa-features", "{done} --patch-size 3 --device cpu", "--patch-size 3"),
    ("repa-features", "{done} --workers -1 --device cpu", "--workers"),
    ("repa-features", "{lat_json} --device cpu", "dataset.json"),
    # evaluations/evaluator.py
    ("evaluator", f"{EV} --batch-size 0", "--batch-size"),
    ("evaluator", f"{EV} --out {{file}}/x.json", "--out"),
    ("evaluator", "{npz_good} {npz_one} --inception {graph} --no-progress", "one.npz"),
    ("evaluator", "{npz_nan_stats} {npz_good} --inception {graph} --no-progress", "nan_stats.npz"),
    ("evaluator", "{npz_good} {npz_keys} --inception {graph} --no-progress", "keys.npz"),
    ("evaluator", "{npz_good} {npz_float} --inception {graph} --no-progress", "float.npz"),
    ("evaluator", "{npz_good} {npz_nchw} --inception {graph} --no-progress", "nchw.npz"),
    ("evaluator", "{npz_good} {npz_bytes} --inception {graph} --no-progress", "bytes.npz"),
    ("evaluator", "{root}/missing.npz {npz_good} --inception {graph} --no-progress", "missing.npz"),
    # evaluations/make_reference.py
    ("make-reference", f"{MR} --npz {{npz_good}} --batch-size 0", "--batch-size"),
    ("make-reference", f"{MR} --npz {{npz_good}} --num-ref 0", "--num-ref"),
    ("make-reference", f"{MR} --npz {{npz_good}} --max-images 0", "--max-images"),
    ("make-reference", f"{MR} --npz {{npz_good}} --resolution -8", "--resolution"),
    ("make-reference", f"{MR} --images {{images}} --resolution 0", "--resolution"),
    ("make-reference", "{file}/ref.npz --no-stats --npz {npz_good}", "ref.npz"),
    ("make-reference", f"{MR} --npz {{npz_keys}}", "keys.npz"),
    ("make-reference", f"{MR} --npz {{npz_bad_labels}}", "bad_labels.npz"),
    ("make-reference", f"{MR} --npz {{npz_bytes}}", "bytes.npz"),
    ("make-reference", f"{MR} --npz {{root}}/missing.npz", "missing.npz"),
    # scripts/collect_results.py
    ("collect", "{root}/no_results", "no_results"),
    ("collect", "{res_json}", "res_json/samples_10_eval.json"),
    ("collect", "{res_sampling}", "res_sampling/sampling.json"),
    ("collect", "{res_value}", "res_value/samples_10_eval.json"),
    ("collect", "{res_good} --out {file}", "--out"),
    # bench.py
    ("bench", "--batch-size 0", "--batch-size"),
    ("bench", "--steps 0", "--steps"),
    ("bench", "--warmup -1", "--warmup"),
    ("bench", "--resolution 100", "--resolution 100"),
    ("bench", "--sampler --num-steps 0", "--num-steps"),
    ("bench", "--block-out-s 99", "--block-out-s"),
    ("bench", "--peak-tflops 0", "--peak-tflops"),
    ("bench", "--device nonsense", "--device"),
    ("bench", "--model SiT-T/4 --resolution 48", "--resolution 48"),
    ("bench", "--block-out-t 0", "--block-out-t"),
]


class _Timeout(Exception):
    pass


def outcome(entry, argv, fragment, timeout=120):
    """-> (kind, message): see the module docstring. A run longer than `timeout` s counts as a traceback."""
    err = io.StringIO()

    def alarm(*_):
        raise _Timeout(f"no answer within {timeout} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = ENTRY[entry](argv)
    except SystemExit as e:
        message = e.code if isinstance(e.code, str) else err.getvalue().strip()
        if isinstance(e.code, int) and e.code == 0:
            return "accepted", ""
        return _classify(str(message), fragment)
    except BaseException as e:  # noqa: BLE001  (the point is to see everything)
        return "traceback", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
        return _classify(err.getvalue().strip(), fragment)
    return "accepted", ""


def _classify(message, fragment):
    if "\n" in message.strip():
        return "multi-line", message
    return ("ok" if fragment in message else "unnamed"), message


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    torch.set_num_threads(1)
    return build_inputs(str(tmp_path_factory.mktemp("bad_input")))


@pytest.mark.parametrize("entry,line,fragment", CASES, ids=[f"{e}:{c}" for e, c, _ in CASES])
def test_one_line_naming_the_flag_or_file(inputs, entry, line, fragment):
    argv = line.format(**inputs).split()
    kind, message = outcome(entry, argv, fragment)
    assert kind == "ok", f"{entry} {line}: {kind}: {message}"


def test_the_commands_of_the_table_run_without_the_bad_value(inputs, tmp_path):
    """The base command lines of the table are good ones: each row fails because of its own bad value."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        _train(["--output-dir", str(tmp_path), "--exp-name", "good"])
        assert os.path.isfile(tmp_path / "good" / "checkpoints" / "0000001.pt")
        _train(["--output-dir", str(tmp_path), "--exp-name", "lat", "--data-dir", inputs["lat"]])
        assert _sample(SMP.format(**inputs).split() + ["--sample-dir", str(tmp_path / "s")]).endswith(".npz")
        assert len(_bench([])) == 1


def test_a_damaged_shard_read_by_a_loader_worker_is_named_in_one_line(inputs, tmp_path):
    """The non-finite check runs where the shard is read, in a DataLoader worker: the message still comes back
    as one line naming the shard, not the worker's traceback."""
    argv = ["--output-dir", str(tmp_path), "--exp-name", "w", "--data-dir", inputs["lat_nan"],
            "--num-workers", "1", "--max-train-steps", "4"]
    kind, message = outcome("train", argv, "moments-00001.npy")
    assert kind == "ok" and "row 3 of" in message, message
    # the worker is gone too: one left behind ignores SIGTERM and Python's exit would wait for it forever
    assert not multiprocessing.active_children()
