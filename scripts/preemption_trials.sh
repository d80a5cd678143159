#!/usr/bin/env bash
# Steps lost to SIGTERM, measured: K digits runs (CPU), each sent SIGTERM at a random moment (3-17 s after
# its first logged step); one JSON line per trial compares the step of checkpoints/latest.pt with the last
# step the run logged (--log-every 1). steps_lost = last step run - checkpoint step; a hard kill instead
# would lose every step since the newest step checkpoint (newest_step_checkpoint; none within the first 50
# steps here).
#
# usage: scripts/preemption_trials.sh K [python|torchrun] [OUT] (torchrun: 2 CPU processes, gloo; default
# OUT /tmp/preemption-trials). torchrun itself exits 1 after forwarding the signal; its workers exit 0.
set -uo pipefail
cd "$(dirname "$0")/.."
K=${1:?usage: $0 K [python|torchrun] [OUT]}
LAUNCH=${2:-python}
OUT=${3:-/tmp/preemption-trials}/$LAUNCH
export OMP_NUM_THREADS=1
rm -rf "$OUT"
mkdir -p "$OUT"
FLAGS=(--preset digits --output-dir "$OUT" --log-every 1 --checkpoint-steps 50 --sample-steps 0
       --eval-samples 0 --num-workers 0 --max-train-steps 100000)
last_step() {
  python -c "import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.endswith('\n')]
print(rows[-1]['step'])" "$1"
}
for k in $(seq 1 "$K"); do
  if [ "$LAUNCH" = torchrun ]; then
    python -m torch.distributed.run --nproc_per_node 2 train.py "${FLAGS[@]}" --exp-name "t$k" \
      > "$OUT/t$k.log" 2>&1 &
  else
    python train.py "${FLAGS[@]}" --exp-name "t$k" > "$OUT/t$k.log" 2>&1 &
  fi
  pid=$!
  until [ -s "$OUT/t$k/metrics.jsonl" ]; do sleep 0.2; done
  sleep $((3 + RANDOM % 15))
  at_signal=$(last_step "$OUT/t$k/metrics.jsonl")
  t0=$(date +%s.%N)
  kill -TERM "$pid"
  wait "$pid"
  rc=$?
  t1=$(date +%s.%N)
  python - "$OUT/t$k" "$at_signal" "$rc" "$t0" "$t1" <<'PY'
import json, os, sys
import torch
d, at_signal, rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0, t1 = float(sys.argv[4]), float(sys.argv[5])
rows = [json.loads(line) for line in open(f"{d}/metrics.jsonl") if line.endswith("\n")]
ckpt = torch.load(f"{d}/checkpoints/latest.pt", map_location="cpu", weights_only=True)["steps"]
numbered = max([int(n[:-3]) for n in os.listdir(f"{d}/checkpoints") if n[:-3].isdigit()] or [0])
print(json.dumps(dict(trial=os.path.basename(d), exit=rc, step_logged_at_signal=at_signal,
                      last_step_run=rows[-1]["step"], checkpoint_step=ckpt,
                      steps_lost=rows[-1]["step"] - ckpt,
                      steps_after_signal=rows[-1]["step"] - at_signal, newest_step_checkpoint=numbered,
                      seconds_signal_to_exit=round(t1 - t0, 2))))
PY
done
