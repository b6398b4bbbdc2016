"""Whole-slide benchmark (issue 21): open a 32 768² three-level JPEG-tiled slide in napari,
segment a 1 000² region, and stream a larger area block by block; JSON to docs/benchmarks/.

    nice .venv/bin/python benchmarks/wsi.py [--size 32768] [--stream 4096] [--out docs/benchmarks/wsi.json]

The slide is synthetic (pink background, a round tissue area with dark "nuclei" on a
jittered grid), written tile by tile so making it needs little memory. Each measurement runs
in a fresh subprocess so its peak RSS (ru_maxrss) is its own. Times are on whatever CPU runs
it (the project's is a shared 2-core machine).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TILE = 256


def _tile(ty: int, tx: int, d: int, size: int) -> np.ndarray:
    """Tile (ty, tx) of the level with downsample d: the same picture at every level."""
    ys = (np.arange(TILE) + ty * TILE + 0.5) * d
    xs = (np.arange(TILE) + tx * TILE + 0.5) * d
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    c = size / 2
    tissue = (yy - c) ** 2 + (xx - c) ** 2 < (0.42 * size) ** 2
    g = 24.0                                  # nuclei every 24 level-0 px, jittered
    iy, ix = np.floor(yy / g), np.floor(xx / g)
    h = np.sin(iy * 12.9898 + ix * 78.233) * 43758.5453
    jy, jx = (h - np.floor(h)) * 10 - 5, (h * 7 - np.floor(h * 7)) * 10 - 5
    nuc = tissue & (((yy - (iy + 0.5) * g - jy) ** 2 + (xx - (ix + 0.5) * g - jx) ** 2) < 36)
    img = np.empty((TILE, TILE, 3), np.uint8)
    img[:] = (242, 236, 240)
    img[tissue] = (228, 170, 205)
    img[nuc] = (90, 50, 140)
    return img


def make_slide(path: Path, size: int) -> None:
    import tifffile

    kw = dict(tile=(TILE, TILE), compression="jpeg", photometric="rgb", metadata=None,
              dtype=np.uint8)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, d in enumerate((1, 4, 16)):
            n = size // d
            tiles = (_tile(ty, tx, d, size) for ty in range(-(-n // TILE))
                     for tx in range(-(-n // TILE)))
            tif.write(tiles, shape=(n, n, 3), subifds=2 if i == 0 else None,
                      subfiletype=1 if i else 0,
                      **({"resolution": (1e4 / 0.25, 1e4 / 0.25),
                          "resolutionunit": "CENTIMETER"} if i == 0 else {}), **kw)


def _child(code: str, display: bool = False) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line; add its peak RSS."""
    wrapped = code + "\nimport resource, json; print(json.dumps({**R, 'peak_rss_gb': " \
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))"
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    env.setdefault("NAPARI_TEXTDIFF_MODELS", str(Path(__file__).resolve().parents[1] / "src"
                                                 / "napari_textdiff" / "models"))
    cmd = [sys.executable, "-c", wrapped]
    if display and not os.environ.get("DISPLAY"):
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"] + cmd
        env.pop("QT_QPA_PLATFORM")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


OPEN = """
import time, numpy as np
t0 = time.perf_counter()
import napari
v = napari.Viewer(show=True)                   # under Xvfb; napari already running for a user
t_napari = time.perf_counter() - t0
from qtpy.QtWidgets import QApplication

def show(path):
    t0 = time.perf_counter()
    from napari_textdiff._reader import read_paths
    [(data, kw, kind)] = read_paths(path)
    t_reader = time.perf_counter() - t0
    t1 = time.perf_counter()
    layer = v.add_image(data, **kw)
    v.reset_view()
    t_add = time.perf_counter() - t1
    t2 = time.perf_counter()
    shot = v.screenshot(canvas_only=True)      # forces the first frame to be drawn
    t_first = time.perf_counter() - t2
    out = dict(reader_s=t_reader, add_layer_s=t_add, first_frame_s=t_first,
               shown_s=time.perf_counter() - t0, frame_not_blank=bool(shot[..., :3].std() > 1),
               level_shown=int(layer.data_level), levels=[list(a.shape) for a in data],
               scale=list(kw.get('scale', [])))
    v.layers.clear()
    return out

first = show({path!r})                         # includes importing the plugin, zarr, dask
again = show({path!r})                         # the next slide: imports done
R = dict(napari_startup_s=t_napari, first_slide=first, next_slide=again)
v.close()
"""

SEGMENT = """
import time
from napari_textdiff.core.defaults import default_model_path
from napari_textdiff.core.models import load_model
from napari_textdiff.core.calibration import get_threshold
from napari_textdiff.core.slides import open_slide
from napari_textdiff.core.wsi import iter_segment_slide
from napari_textdiff.core.geojson import label_features, write_geojson
from napari_textdiff.core.progress import run
t0 = time.perf_counter()
model = load_model(default_model_path('histology'), device='cpu')
t_load = time.perf_counter() - t0
s = open_slide({path!r})
t1 = time.perf_counter()
res = run(iter_segment_slide(model, s, 'The nuclei density is high.', region={region!r},
                             threshold=get_threshold(model), instances=True, block={block}))
t2 = time.perf_counter()
feats = list(label_features(res.labels, origin=res.box[:2], downsample=res.downsample, mpp=res.mpp,
                            classification='Nucleus'))
write_geojson({gj!r}, feats)
import numpy as np
xy = np.array([p for f in feats for p in f['geometry']['coordinates'][0]]) if feats else np.zeros((0, 2))
R = dict(model_load_s=t_load, segment_s=t2 - t1, geojson_s=time.perf_counter() - t2,
         level=res.level, objects=res.objects, region=list(res.region),
         megapixels=res.region[2] * res.region[3] / 1e6,
         s_per_megapixel=(t2 - t1) / (res.region[2] * res.region[3] / 1e6),
         geojson_x_range=[float(xy[:, 0].min()), float(xy[:, 0].max())] if len(xy) else None,
         geojson_y_range=[float(xy[:, 1].min()), float(xy[:, 1].max())] if len(xy) else None)
res.close()
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32768)
    ap.add_argument("--stream", type=int, default=2048,
                    help="side of the level-0 area streamed block by block (s/MP)")
    ap.add_argument("--work", default="/tmp/textdiff-wsi-bench")
    ap.add_argument("--out", default="docs/benchmarks/wsi.json")
    ap.add_argument("--skip", nargs="*", default=[], choices=["open", "region", "stream"])
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    slide = work / f"synthetic_{a.size}.tif"
    res: dict = {}
    if a.skip and Path(a.out).is_file():        # a partial rerun keeps the other results
        res = json.loads(Path(a.out).read_text())
    res.update({"slide": {"size": a.size, "levels": 3, "tile": TILE, "compression": "jpeg",
                          "mpp": 0.25},
                "host": {"cpus": os.cpu_count(), "machine": platform.machine(),
                         "load_avg": os.getloadavg()}})
    if not slide.is_file():
        t0 = time.perf_counter()
        make_slide(slide, a.size)
        res["slide"]["make_s"] = time.perf_counter() - t0
    res["slide"]["file_mb"] = slide.stat().st_size / 1e6
    c = a.size // 2
    if "open" not in a.skip:
        res["open"] = _child(OPEN.format(path=str(slide)), display=True)
        print("open", res["open"], file=sys.stderr)
    if "region" not in a.skip:
        res["region_1000"] = _child(SEGMENT.format(path=str(slide), region=(c, c, 1000, 1000),
                                                   block=2048, gj=str(work / "region.geojson")))
        print("region", res["region_1000"], file=sys.stderr)
    if "stream" not in a.skip:
        n = a.stream
        res["streamed"] = _child(SEGMENT.format(path=str(slide), region=(c - n // 2, c - n // 2,
                                                                         n, n),
                                                block=256, gj=str(work / "stream.geojson")))
        print("stream", res["streamed"], file=sys.stderr)
    from napari_textdiff.core.bundle import atomic_write_bytes

    atomic_write_bytes(a.out, json.dumps(res, indent=2).encode())
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
