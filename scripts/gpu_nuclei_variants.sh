#!/usr/bin/env bash
# Device run: nuclei training variants (issue 12) then the GPU benchmark (issue 13).
# The three nuclei training variants of issue 12, run once on a lent H200 (2026-12-04) with the
# MoNuSeg training images and TNBC slides 01-08 carried as lossless WebP (.gpu/data, unpacked to PNG
# by scripts/gpu_unpack_data.py; the device call carries at most 64 MiB), then benchmarks/gpu.py. Results:
# docs/results.md "Retraining the nuclei model on a GPU".
set -u
export PYTHONPATH=$PWD/src:$PWD/.gpu/pylib PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
DEV=${DEV:-cuda}; EPOCHS=${EPOCHS:-12}; SPE=${SPE:-2500}; WORKERS=${WORKERS:-4}; MAXMIN=${MAXMIN:-4.5}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch, numpy, skimage, scipy; print('torch', torch.__version__, torch.cuda.is_available(), 'numpy', numpy.__version__, 'skimage', skimage.__version__)"
nproc; D=/tmp/gpudata
python3 scripts/gpu_unpack_data.py .gpu/data $D || exit 1
VAL="TCGA-21-5786* TCGA-49-4488* TCGA-AY-A8YK* TCGA-B0-5698* TCGA-G9-6356* TCGA-HE-7130* tnbc_07_* tnbc_08_*"
LIC="MoNuSeg 2018 training data: CC BY-NC-SA 4.0 (non-commercial research use); TNBC (Naylor et al. 2019, Zenodo 1175282): research use with citation"
common=(--task nuclei --epochs $EPOCHS --steps-per-epoch $SPE --lr 2e-3 --lr-schedule cosine --patience 100
        --max-minutes $MAXMIN --seed 0 --threads 1 --workers $WORKERS --pixel-size 0.25 --device $DEV --licence "$LIC")
mkdir -p runs/gpu
python3 -m napari_minenet.cli train --data $D/monuseg $D/tnbc --hold-out $VAL --exclude 'tnbc_0[1-6]_*' 'tnbc_09_*' 'tnbc_1[01]_*' \
    -o runs/gpu/mono --name nuclei "${common[@]}" > runs/gpu/mono.log 2>&1 &
python3 -m napari_minenet.cli train --data $D/monuseg $D/tnbc --hold-out $VAL --exclude 'tnbc_0[1-6]_*' 'tnbc_09_*' 'tnbc_1[01]_*' \
    --stain-jitter 0.15 --scale-range 0.6 1.6 -o runs/gpu/monoaug --name nuclei "${common[@]}" > runs/gpu/monoaug.log 2>&1 &
python3 -m napari_minenet.cli train --data $D/monuseg $D/tnbc --hold-out $VAL --exclude 'tnbc_09_*' 'tnbc_1[01]_*' \
    --stain-jitter 0.15 --scale-range 0.6 1.6 -o runs/gpu/mix --name nuclei "${common[@]}" > runs/gpu/mix.log 2>&1 &
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv 2>/dev/null; uptime
wait
for f in runs/gpu/*.log; do echo "== $f"; grep -v "^training" $f | tail -8; done
tar cf $OUT/train.tar runs/gpu/*.safetensors runs/gpu/*.json runs/gpu/*.log
echo "elapsed $SECONDS s"
if [ "$DEV" = cuda ]; then
  left=$((575 - SECONDS))
  timeout $((left / 2)) python3 benchmarks/gpu.py --sizes 2048 --json $OUT/gpu_2048.json > $OUT/gpu_2048.txt 2>&1
  tail -25 $OUT/gpu_2048.txt
  timeout $((575 - SECONDS)) python3 benchmarks/gpu.py --sizes 8192 --no-segment --json $OUT/gpu_8192.json > $OUT/gpu_8192.txt 2>&1
  tail -25 $OUT/gpu_8192.txt
fi
echo "total $SECONDS s"
