#!/usr/bin/env bash
# GPU check of the dopd worker, prepared to run in one short session on one NVIDIA GPU (H100/H200):
#   1. prefill and decode as two processes on the same GPU: the transport selection picks gloo through host
#      memory (NCCL refuses two ranks on one device); tokens through router -> prefill -> KV transfer ->
#      decode must equal a single-process greedy run (fp32, so both paths round alike);
#   2. with two or more GPUs, the same test with prefill on GPU 0 and decode on GPU 1 selects NCCL;
#   3. a llama3-8b random-preset bf16 decode step: memory and step time at batch 1/8/32, context 1024;
#   4. `dopd profile` on the GPU, written to $OUT.
# Needs: a Python with this repository installed with the [worker] extra (the worker image has it).
# Usage: OUT=/tmp/out worker-image/gpu-check.sh        (about 5 minutes on an H100)
#        DRY_RUN_CPU=1 worker-image/gpu-check.sh          (step 1 on the CPU: checks the script itself)
set -euo pipefail
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/dopd-gpu-check}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/worker-image:$PWD/operator:${PYTHONPATH:-}"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

if [ "${DRY_RUN_CPU:-0}" = 1 ]; then
  DEV0=cpu; DEV1=cpu; NGPU=0
else
  DEV0=cuda:0; DEV1=cuda:1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpus.csv"
  NGPU=$(nvidia-smi -L | wc -l)
fi

wait_health() {  # no curl in the images: ask Python
  for _ in $(seq 240); do
    "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
      "http://127.0.0.1:$1/health" 2>/dev/null && return 0
    sleep 0.5
  done
  echo "port $1 not healthy" >&2; return 1
}

# Disaggregated serving on GPUs $1 (prefill) and $2 (decode); checks tokens against one process.
serve_and_compare() {
  local label=$1 pdev=$2 ddev=$3 base=$4
  "$PY" -m dopd_worker worker --role prefill --model small --device "$pdev" --dtype fp32 --port $((base)) \
    --kv-cache-tokens 65536 >"$OUT/$label-prefill.log" 2>&1 & pids+=($!)
  "$PY" -m dopd_worker worker --role decode --model small --device "$ddev" --dtype fp32 --port $((base + 1)) \
    --kv-port $((base + 2)) --kv-cache-tokens 65536 >"$OUT/$label-decode.log" 2>&1 & pids+=($!)
  wait_health $((base)); wait_health $((base + 1))
  "$PY" -m dopd_worker router --model small --port $((base + 3)) --prefill "http://127.0.0.1:$base" \
    --decode "http://127.0.0.1:$((base + 1))" >"$OUT/$label-router.log" 2>&1 & pids+=($!)
  wait_health $((base + 3)); sleep 1
  timeout 300 "$PY" - "$label" "$((base + 3))" "$pdev" "$ddev" <<'PYEOF' | tee "$OUT/$label-result.txt"
import asyncio, sys, time
import httpx, torch
from dopd_worker.config import PRESETS
from dopd_worker.model import build_model, greedy_reference
from dopd_worker.transfer import DeviceIdentity, select_transport
label, port, pdev, ddev = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
prompts = [[256] + [65 + i % 26] * n for i, n in enumerate((5, 40, 300, 1500))]
async def main():
    async with httpx.AsyncClient(timeout=300) as c:
        async def one(p):
            r = await c.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": "small", "prompt": p,
                             "max_tokens": 32, "temperature": 0, "return_token_ids": True})
            r.raise_for_status(); return r.json()["choices"][0]["token_ids"]
        t = time.perf_counter(); got = await asyncio.gather(*(one(p) for p in prompts))
        return got, time.perf_counter() - t
got, secs = asyncio.run(main())
model = build_model(PRESETS["small"], torch.float32, torch.device(ddev))
want = [greedy_reference(model, p, 32, PRESETS["small"].eos_token_ids) for p in prompts]
pd = DeviceIdentity.of(torch.device(pdev)); dd = DeviceIdentity.of(torch.device(ddev))
print(f"{label}: transport={select_transport(pd, dd).value} tokens_equal={got == want} wall={secs:.2f}s")
sys.exit(0 if got == want else 1)
PYEOF
  cleanup; pids=()
}

echo "== 1. prefill + decode on one GPU (host-staged gloo)"
serve_and_compare same-gpu "$DEV0" "$DEV0" 18100
if [ "$NGPU" -ge 2 ]; then
  echo "== 2. prefill on GPU 0, decode on GPU 1 (NCCL)"
  serve_and_compare two-gpus "$DEV0" "$DEV1" 18200
else
  echo "== 2. skipped: fewer than two GPUs, the NCCL path needs two" | tee "$OUT/two-gpus-result.txt"
fi
if [ "${DRY_RUN_CPU:-0}" = 1 ]; then echo "dry run done; results in $OUT"; exit 0; fi

echo "== 3. llama3-8b random preset, bf16 decode step"
timeout 300 "$PY" - <<'PYEOF' | tee "$OUT/llama3-8b-decode.txt"
import time, torch
from dopd_worker.config import PRESETS
from dopd_worker.kv_cache import PagedKVCache, SequenceSlice, build_batch
from dopd_worker.model import build_model
dev = torch.device("cuda:0"); cfg = PRESETS["llama3-8b"]
t = time.perf_counter(); model = build_model(cfg, torch.bfloat16, dev); torch.cuda.synchronize()
print(f"built llama3-8b ({cfg.parameter_count()/1e9:.2f}B params) in {time.perf_counter()-t:.1f}s, "
      f"{torch.cuda.memory_allocated()/2**30:.1f} GiB")
cache = PagedKVCache(cfg, 32 * 1056 // 16 + 8, 16, torch.bfloat16, dev)
print(f"KV cache {cache.allocator.capacity_tokens} tokens, {cfg.kv_bytes_per_token(2)} B/token")
for batch in (1, 8, 32):
    tables = [cache.allocator.allocate(f"s{i}", 1025) for i in range(batch)]
    b = build_batch([SequenceSlice(tb, 1024, [1]) for tb in tables], 16, dev)
    for _ in range(3): model.forward_paged(b, cache.k, cache.v)
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): model.forward_paged(b, cache.k, cache.v)
    torch.cuda.synchronize(); step = (time.perf_counter() - t) / 10
    print(f"batch {batch:3d} ctx 1024: decode step {step*1e3:.1f} ms, {batch/step:.0f} tokens/s")
    for i in range(batch): cache.allocator.free(f"s{i}")
print(f"peak memory {torch.cuda.max_memory_allocated()/2**30:.1f} GiB")
PYEOF

echo "== 4. dopd profile on the GPU"
timeout 300 "$PY" -m dopd_worker profile --model small --device cuda:0 --out "$OUT/profile-small-gpu.yaml" \
  --prompt-lengths 128,512,1024,2048 --batch-sizes 1,8,32,64 --context-lengths 256,1024 | tee "$OUT/profile.txt"
echo "gpu-check done; results in $OUT"
