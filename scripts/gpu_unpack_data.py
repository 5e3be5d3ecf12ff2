"""Device side of scripts/gpu_nuclei_variants.sh: the carried lossless WebP images back to PNG (the layout
load_dataset reads)."""
import sys
from pathlib import Path

from PIL import Image

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for ds in ("monuseg", "tnbc"):
    for sub in ("images", "labels"):
        (dst / ds / sub).mkdir(parents=True, exist_ok=True)
    for p in sorted((src / ds / "images").glob("*.webp")):
        Image.open(p).save(dst / ds / "images" / (p.stem + ".png"), compress_level=1)
        (dst / ds / "labels" / (p.stem + ".tif")).write_bytes((src / ds / "labels" / (p.stem + ".tif")).read_bytes())
print("unpacked", len(list((dst / "monuseg" / "images").iterdir())), len(list((dst / "tnbc" / "images").iterdir())))
