#!/usr/bin/env bash
# Everlook's GPU figures in one run, under 8 minutes on one H100 (issue [8] point 7).
#
# Installs the gpu extra into the project's venv (make install creates it), prints
# nvidia-smi, then runs with EVERLOOK_DEVICE=cuda:
#   bench/gpu_parity.py       fp16 vs fp32 towers, nvJPEG vs PIL preprocessing, GPU vs CPU
#                             FAISS over 1M vectors, each against the CPU in the same run
#   bench/index_throughput.py indexing img/s (64 camera JPEGs)
#   bench/watch_latency.py    file landed -> searchable
#   bench/query_latency.py    warm query latency over 1M vectors (where present)
# and prints a summary. Every step runs under `timeout`, and the whole script under one
# deadline (GPU_SH_BUDGET seconds, 460 by default, plus at most 10 s to stop a step):
# a step that fails or runs out is reported and the next one runs.
#
#   bash bench/gpu.sh                    # install (a no-op when done), then the benches
#   GPU_SH_INSTALL=0 bash bench/gpu.sh   # the venv as it is, e.g. on a machine offline
#
# Exit status: 0 when every step passed, 1 otherwise. Logs: $GPU_SH_DATA/logs/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
PY=$VENV/bin/python
BUDGET=${GPU_SH_BUDGET:-460}
DATA=${GPU_SH_DATA:-${TMPDIR:-/tmp}/everlook-bench-gpu}
LOGS=$DATA/logs
START=$SECONDS
FAILED=0
RESULTS=()
mkdir -p "$LOGS"
export EVERLOOK_DEVICE=cuda

# step NAME LIMIT_S COMMAND... : run COMMAND under min(LIMIT_S, time left), log it.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < 15)); then
    RESULTS+=("$name: not run (the ${BUDGET}s budget is spent)")
    FAILED=1
    return 0
  fi
  if ((limit > left)); then limit=$left; fi
  local shown="$*"
  echo
  echo "== $name (limit ${limit}s): ${shown:0:120}"
  local t0=$SECONDS rc=0 status
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log" || rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="TIMED OUT at ${limit}s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  if ((rc != 0)); then FAILED=1; fi
  RESULTS+=("$name: $status in $((SECONDS - t0))s")
}

# A bench that sets EVERLOOK_DEVICE=cpu itself measures the CPU whatever we export.
pins_cpu() {
  if grep -Eq 'EVERLOOK_DEVICE"?[:=] ?"cpu"' "$1"; then
    RESULTS+=("  note: $1 sets EVERLOOK_DEVICE=cpu itself: its model figures are CPU figures")
  fi
}

install_gpu() {
  make install VENV="$VENV"
  "$PY" -m pip install --quiet --disable-pip-version-check -e '.[gpu]'
  # faiss-gpu and faiss-cpu (a main dependency) both install the `faiss` package: drop
  # faiss-cpu, then reinstall faiss-gpu so that its files are the ones left.
  if "$PY" -m pip show faiss-cpu >/dev/null 2>&1; then
    "$PY" -m pip uninstall --quiet -y faiss-cpu
    "$PY" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
      'faiss-gpu>=1.15'
  fi
}

# Camera-size JPEGs, made once on every core (made one by one, 64 of them take minutes).
PHOTOS_PY='
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, ".")
from bench.index_throughput import camera_jpeg

folder, n = Path(sys.argv[1]) / "photos", int(sys.argv[2])
folder.mkdir(parents=True, exist_ok=True)

def one(i):
    path = folder / f"IMG_{i:04d}.jpg"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(camera_jpeg(i))
        tmp.rename(path)

with ProcessPoolExecutor() as pool:
    list(pool.map(one, range(n)))
print(f"{n} photos in {folder}")
'

if [[ ${GPU_SH_INSTALL:-1} == 1 ]]; then
  export -f install_gpu
  export VENV PY
  step install 150 bash -c install_gpu
else
  RESULTS+=("install: skipped (GPU_SH_INSTALL=0), $VENV as it is")
fi
step nvidia-smi 20 nvidia-smi
step environment 30 "$PY" -c 'import torch, faiss
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("faiss", faiss.__version__, "GPUs seen by FAISS:", faiss.get_num_gpus())'
step photos 90 "$PY" -c "$PHOTOS_PY" "$DATA" 64

step gpu_parity 120 "$PY" bench/gpu_parity.py --data "$DATA" --photos 32 --vectors 1000000
step index_throughput 120 "$PY" bench/index_throughput.py --data "$DATA" --files 64
pins_cpu bench/index_throughput.py
step watch_latency 100 "$PY" bench/watch_latency.py --data "$DATA" --files 20 --quiet 0.5
pins_cpu bench/watch_latency.py
if [[ -f bench/query_latency.py ]]; then
  step query_latency 150 "$PY" bench/query_latency.py --n 1000000
  pins_cpu bench/query_latency.py
else
  RESULTS+=("query_latency: not run (bench/query_latency.py is not in this checkout)")
  FAILED=1
fi

{
  echo
  echo "==================== summary ($((SECONDS - START))s) ===================="
  printf '%s\n' "${RESULTS[@]}"
  for name in gpu_parity index_throughput watch_latency query_latency; do
    log=$LOGS/$name.log
    [[ -s $log ]] || continue
    echo "-- $name"
    case $name in
      gpu_parity) sed -n '/^summary$/,$p' "$log" | tail -n +2 ;;
      index_throughput) grep -E '^\((a|b|c)\)|everlook index|^c/' "$log" || tail -n 8 "$log" ;;
      watch_latency) grep -E 'p50|bar' "$log" || tail -n 4 "$log" ;;
      *) tail -n 12 "$log" ;;
    esac
  done
} | tee "$LOGS/summary.txt"
exit "$FAILED"
