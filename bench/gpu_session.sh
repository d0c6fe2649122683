#!/usr/bin/env bash
# Everything that awaits a GPU, in one run of at most 9.5 minutes (under a device call's 10) on an H100/H200 class card:
# the gpu-marked tests, then apply/remove speed, then the product benchmark (flux-dev at
# 8/12/16/24 GiB). Logs and result JSON go to $OUT (default ./gpu-out); copy the JSON into
# bench/results/ afterwards. On a lent device machine (../shared/GPU.md), carry the wheels in
# .whl/ and run:  bash bench/gpu_session.sh   (SWEEP=1: the gpu tests, then the 512x512 and
# 768x768 sweep the cost model's copy-bound overheads await, in place of 2. and 3.)
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 XDG_DATA_HOME=/tmp/xdg XDG_CACHE_HOME=/tmp/xdg-cache
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))' \
  > "$OUT/versions.txt" 2>&1
# 1. the gpu tests (23 s on the H100 for the first ~20; now about 100, with the ring under a
# slow compute stream, the first copies into reused memory and the mapping finalizer); -s
# prints the timings some of them report
timeout 150 python3 -m pytest -q -s -m gpu -p no:cacheprovider tests > "$OUT/pytest_gpu.log" 2>&1
echo "pytest -m gpu: rc=$?" | tee -a "$OUT/summary.txt"
if [ "${SWEEP:-0}" = 1 ]; then
  # the copy-bound regime instead of 2. and 3.: tuned plans at 512x512 and 768x768, predicted
  # against measured (bench/results/replay_h100.json holds what the cost model expects there)
  for res in 512x512 768x768; do
    timeout 180 python3 bench/gpu_offload.py --device cuda --resolution $res --budgets 8,12,16,24 \
      --steps 3 --skip-diffusers -o "$OUT/gpu_offload_cuda_$res.json" > "$OUT/gpu_offload_$res.log" 2>&1
    echo "gpu_offload $res: rc=$?" | tee -a "$OUT/summary.txt"
  done
  tail -n 5 "$OUT"/*.log >> "$OUT/summary.txt"
  exit 0
fi
# 2. apply/remove against plain copies of the same bytes (flux-dev, as the H100 evidence)
timeout 150 python3 bench/apply_speed.py --device cuda --model flux-dev --repeats 2 \
  -o "$OUT/apply_speed_cuda.json" > "$OUT/apply_speed.log" 2>&1
echo "apply_speed: rc=$?" | tee -a "$OUT/summary.txt"
# 3. the product: tuned plans from a measured profile, peers, whole model, diffusers offloading
timeout 270 python3 bench/gpu_offload.py --device cuda --budgets 8,12,16,24 --steps 3 \
  -o "$OUT/gpu_offload_cuda.json" > "$OUT/gpu_offload.log" 2>&1
echo "gpu_offload: rc=$?" | tee -a "$OUT/summary.txt"
tail -n 5 "$OUT"/*.log >> "$OUT/summary.txt"
