#!/usr/bin/env bash
# How the built-in models in weights/ were trained (one after the other, on the 2-core CPU
# of the development machine). Needs the datasets in ../shared/data (see the model cards).
# Each run writes weights/<name>.safetensors + .json and a checkpoint <name>.ckpt.*
# (resume an interrupted run with --resume weights/<name>.ckpt).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}

napari-minenet train --data "$DATA/monuseg/train" --task nuclei -o weights/nuclei --name nuclei \
    --epochs 100 --steps-per-epoch 200 --lr 2e-3 --lr-schedule cosine --patience 10 --max-minutes 80 \
    --seed 0 --threads 2 --licence "MoNuSeg training data: CC BY-NC-SA 4.0, non-commercial research use only"

napari-minenet train --data "$DATA/drive/train" --task vessels -o weights/vessels --name vessels \
    --epochs 100 --steps-per-epoch 100 --lr 2e-3 --lr-schedule cosine --patience 10 --max-minutes 30 \
    --seed 0 --threads 2 --licence "DRIVE: released by its authors for research use"

napari-minenet train --data "$DATA/ph2/train" --task lesion -o weights/lesion --name lesion \
    --epochs 100 --steps-per-epoch 100 --lr 2e-3 --lr-schedule cosine --patience 10 --max-minutes 25 \
    --seed 0 --threads 2 --licence "PH2: released by its authors for research and educational use, with citation"

# the benchmarks' reference: the same command and budget as vessels, with a U-Net (not shipped)
napari-minenet train --data "$DATA/drive/train" --task vessels -o runs/unet/unet-vessels --name unet-vessels \
    --architecture UNet --epochs 100 --steps-per-epoch 100 --lr 2e-3 --lr-schedule cosine --patience 10 \
    --max-minutes 30 --seed 0 --threads 2
