"""BUSI at a working size, in BUSI's own layout, small enough to travel to the GPU machine.

    python scripts/pack_busi.py ../shared/data/busi runs/busi128 --size 128

Images are resized with anti-aliasing, masks with nearest neighbour, every file keeps its
name and folder, so ``mgcc train runs/busi128 --size 128`` finds the same cases in the same
order, hence the same seeded split, as on the full-size folder (scores at native resolution
are computed afterwards, here, on the original images)."""
import argparse
from pathlib import Path

import numpy as np
from skimage.io import imread, imsave
from skimage.transform import resize


def pack(src: str, out: str, size: int) -> int:
    n = 0
    for f in sorted(Path(src).rglob("*.png")):
        a = imread(f)
        if a.ndim == 3:
            a = a[..., :3].mean(-1)
        mask = "_mask" in f.stem
        r = resize(a, (size, size), order=0 if mask else 1, anti_aliasing=not mask,
                   preserve_range=True)
        r = ((r > 127) * 255 if mask else np.clip(np.rint(r), 0, 255)).astype(np.uint8)
        dst = Path(out) / f.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        imsave(dst, r, check_contrast=False)
        n += 1
    return n


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src"); p.add_argument("out"); p.add_argument("--size", type=int, default=128)
    a = p.parse_args()
    print(pack(a.src, a.out, a.size), "files ->", a.out)
