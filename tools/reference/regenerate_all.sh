#!/usr/bin/env bash
# Regenerate every fixture in order. See tools/reference/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
REFENV=${REFENV:-/opt/refenv/bin/python}   # torch CPU + diffusers==0.42.1 + transformers 5 + open_clip_torch + opencv
TF4ENV=${TF4ENV:-/opt/tf4env/bin/python}   # transformers 4.x + ftfy (slow CLIPTokenizer)
"$TF4ENV" tools/tokenizer/build_clip_tokenizer.py --refenv "$REFENV"
"$REFENV" tools/reference/make_tiny_sdxl.py
"$REFENV" tools/reference/make_references.py
"$REFENV" tools/reference/make_randn.py
"$REFENV" tools/reference/make_lora_references.py   # needs peft
"$REFENV" tools/reference/make_refiner_vae_references.py   # refiner, fp16-fix VAE, VAE tiling
"$REFENV" tools/reference/make_scheduler_references.py   # needs scipy
"$REFENV" tools/reference/make_controlnet_references.py   # needs opencv-python-headless; reruns itself to check determinism
"$REFENV" tools/reference/make_esrgan_references.py   # tiny RRDBNet .pth fixtures + RealESRGANer references; reruns itself
du -sh tests/fixtures assets/clip_tokenizer.json.gz
