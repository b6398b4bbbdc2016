#!/usr/bin/env bash
# The whole device call of a session that is lent a GPU: the GPU check (scripts/gpu_check.sh)
# in front, its other modes beside it on the same GPU (GPU_SESSION_JOBS, default "ldm busi"),
# then what should come back packed into $OUT as at most 8 files of < 16 MiB.
# HERE first (no device time):
#   bash scripts/gpu_check.sh prepare
#   python scripts/pack_busi.py ../shared/data/busi runs/busi128 --size 128
# then one call:
#   run(command="bash scripts/gpu_session.sh", carry=[".whl", "runs/busi128"], timeout_s=590)
# Jobs: ldm = the ultrasound LDM, trained on `benchmark busi`'s training part only (packed on
# the device with `ldm_report.py pack --split benchmark`), latent UNet batch 128 (it was
# launch-bound at 32); busi = the BUSI benchmark's units without the + synthetic row (it needs
# that LDM: a second call, if the machine is still warm, with GPU_SESSION_CHECK=0
# GPU_SESSION_JOBS=busi GPU_BUSI_METHODS=mgcc_50_synthetic GPU_BUSI_LDM=runs/ldm_gpu/export);
# mgcc = MGCC width/schedule runs (session 11). Join the busi units of several calls here with
# `benchmark busi --merge`.
# The trainings share the GPU and the CPU with the check, so the check's speed numbers are
# those of a busy machine (say so wherever they are quoted).
# GPU_SESSION_CHECK=0 skips the check. CPU dry run of both calls (session 13: 276 s and 67 s,
# every file packed, the second call's merge reports all three rows):
#   GPU_SESSION_CHECK=0 GPU_CHECK_DEVICE=cpu OMP_NUM_THREADS=1 GPU_BUSI_THREADS=1
#   GPU_SESSION_SECONDS=560 GPU_LDM_SECONDS=300 GPU_LDM_REPORT_SECONDS=200 VAE_STEPS=4
#   LDM_STEPS=4 GPU_LDM_UNET_BATCH=4 GPU_LDM_SAMPLES=4 GPU_LDM_CHECKPOINT=2 GPU_BUSI_SECONDS=400
#   GPU_BUSI_ITERS=6 GPU_BUSI_SEEDS=0 GPU_BUSI_BATCH=2 GPU_BUSI_WIDTH=0.125 GPU_BUSI_VAL_EVERY=3
#   OUT=/tmp/o bash scripts/gpu_session.sh
# then the same with GPU_SESSION_JOBS=busi GPU_BUSI_METHODS=mgcc_50_synthetic
# GPU_BUSI_LDM=runs/ldm_gpu/export GPU_BUSI_N_SYNTHETIC=4 GPU_BUSI_LDM_STEPS=2.
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT:-runs/gpu_session}; mkdir -p "$O"
T0=$(date +%s)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
CAP=${GPU_SESSION_SECONDS:-540}   # the background jobs' hard cap, so packing always happens
JOBS=" ${GPU_SESSION_JOBS:-ldm busi} "
case $JOBS in *" ldm "*)
  GPU_CHECK_WORK=runs/gc_ldm GPU_LDM_BUSI=${GPU_LDM_BUSI:-runs/busi128} GPU_LDM_SPLIT=${GPU_LDM_SPLIT:-benchmark} \
    GPU_LDM_DATA=${GPU_LDM_DATA:-runs/ldm_bench} GPU_LDM_UNET_BATCH=${GPU_LDM_UNET_BATCH:-128} \
    GPU_LDM_SECONDS=${GPU_LDM_SECONDS:-360} GPU_LDM_REPORT_SECONDS=${GPU_LDM_REPORT_SECONDS:-120} \
    timeout -s INT -k 20 "$CAP" bash scripts/gpu_check.sh ldm > "$O/ldm.log" 2>&1 & ;; esac
case $JOBS in *" mgcc "*)
  GPU_CHECK_WORK=runs/gc_mgcc GPU_MGCC_SECONDS=${GPU_MGCC_SECONDS:-420} \
    timeout -s INT -k 20 "$CAP" bash scripts/gpu_check.sh mgcc > "$O/mgcc.log" 2>&1 & ;; esac
case $JOBS in *" busi "*)   # its units stop themselves (SIGINT) before the cap, then merge
  GPU_CHECK_WORK=runs/gc_busi GPU_BUSI_SECONDS=${GPU_BUSI_SECONDS:-$(( CAP - 90 ))} \
    timeout -s INT -k 20 "$CAP" bash scripts/gpu_check.sh busi > "$O/busi.log" 2>&1 & ;; esac
if [ "${GPU_SESSION_CHECK:-1}" = 1 ]; then
  GPU_CHECK_BUDGET=${GPU_CHECK_BUDGET:-400} bash scripts/gpu_check.sh 2>&1 | tee "$O/gpu_check.log"
  cp docs/benchmarks/gpu_check.json "$O/" 2>/dev/null
fi
wait
echo "[gpu_session] all done after $(( $(date +%s) - T0 ))s; packing"
L=runs/ldm_gpu; M=runs/mgcc_gpu
cp "$L/export/unet/diffusion_pytorch_model.safetensors" "$O/ldm_unet.safetensors" 2>/dev/null
tar czf "$O/ldm_rest.tgz" --exclude=export/unet/diffusion_pytorch_model.safetensors -C "$L" export \
  2>/dev/null
for run in "$M"/*/; do r=$(basename "$run"); f=$run/best.safetensors   # else the latest
  [ -f "$f" ] || f=$run/final.safetensors; [ -f "$f" ] || continue
  [ "$(stat -c %s "$f")" -lt 16000000 ] && cp "$f" "$O/mgcc_$r.safetensors"
done
B=${GPU_BUSI_OUT:-runs/busi_gpu}   # every unit's JSON (for --merge here) and the merged report
tar czf "$O/busi.tgz" --exclude='*.png' --exclude='*.units_in_training' "$B" 2>/dev/null
tar czf "$O/logs.tgz" --exclude=site --exclude='*.safetensors' --exclude='*.pt' \
  "$O"/*.log runs/gc_ldm runs/gc_mgcc runs/gc_busi runs/gpu_check "$L"/*.json "$L"/*.csv "$L/report" \
  "$M"/*.log "$M"/*/train.log 2>/dev/null
rm -f "$O"/*.log   # they are in logs.tgz
ls -la "$O"
