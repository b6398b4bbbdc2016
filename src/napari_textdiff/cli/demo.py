"""``napari-textdiff demo``: the main job on bundled defaults, headless.

Segments a bundled sample image with its description using the bundled default model of its
modality, writes the mask (TIFF) and an overlay picture, and prints the time taken. With
``--napari`` (and a display) it opens napari with the plugin docked and the sample loaded.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

SAMPLES = {"histology": "histology.jpg", "xray": "xray.jpg", "ultrasound": "ultrasound.png"}


def register(sub) -> None:
    p = sub.add_parser("demo", help="segment the bundled sample images with the bundled models")
    p.add_argument("--modality", choices=[*SAMPLES, "all"], default="all",
                   help="which sample to segment (default: all three)")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--napari", action="store_true",
                   help="then open napari with the plugin docked and the sample loaded")
    p.set_defaults(func=_run)


def sample_path(modality: str) -> tuple[Path, dict]:
    """The bundled sample image of a modality and its descriptions.json entry."""
    d = Path(__file__).resolve().parent.parent / "sample_data"
    name = SAMPLES[modality]
    info = json.loads((d / "descriptions.json").read_text(encoding="utf-8"))[name]
    return d / name, info


def overlay(image, mask, color=(1.0, 0.15, 0.1), alpha=0.45):
    """RGB uint8 picture of ``image`` with the mask tinted and its outline drawn."""
    import numpy as np
    from skimage.segmentation import find_boundaries

    rgb = image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1)
    rgb = rgb.astype(np.float32).copy()
    m = mask > 0
    rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(color, np.float32)
    rgb[find_boundaries(mask, mode="outer")] = (1.0, 1.0, 0.0)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def segment_sample(modality: str, out: Path, device="auto") -> dict:
    """Run one modality's default model on its sample; returns what was written and timings."""
    from napari_textdiff.core.calibration import get_threshold
    from napari_textdiff.core.defaults import (default_model_path, missing_model_message,
                                               modality_defaults)
    from napari_textdiff.core.instances import binary_to_instances
    from napari_textdiff.core.io import load_image, write_image, write_mask
    from napari_textdiff.core.models import load_model
    from napari_textdiff.core.prediction import binary_mask

    img_path, info = sample_path(modality)
    defaults = modality_defaults(modality)
    model_path = default_model_path(modality)
    out.mkdir(parents=True, exist_ok=True)
    if model_path is None:
        raise FileNotFoundError(missing_model_message(modality))
    t0 = time.perf_counter()
    model = load_model(model_path, device=device)
    t_load = time.perf_counter() - t0
    image = load_image(img_path, channels=model.channels)
    text = info["description"] if model.uses_text else None
    t0 = time.perf_counter()
    prob = model.predict_proba(image, text)
    t_pred = time.perf_counter() - t0
    threshold = get_threshold(model)      # the model's own (calibrated) threshold
    mask = binary_mask(model, prob, threshold).astype("uint8")
    labels = binary_to_instances(mask) if defaults.split_instances else mask.astype("int32")
    stem = img_path.stem
    write_mask(out / f"{stem}_mask.tif", labels)
    write_image(out / f"{stem}_overlay.png", overlay(load_image(img_path, channels=3), labels))
    return {"modality": modality, "image": str(img_path), "text": text, "model": str(model_path),
            "mask": str(out / f"{stem}_mask.tif"), "overlay": str(out / f"{stem}_overlay.png"),
            "threshold": threshold, "foreground_fraction": float(mask.mean()),
            "objects": int(labels.max()),
            "load_s": round(t_load, 3), "predict_s": round(t_pred, 3), "shape": list(mask.shape)}


def _run(args) -> int:
    from napari_textdiff.cli._common import writable_folder
    from napari_textdiff.core.bundle import atomic_write_bytes

    out = writable_folder(args.out)
    mods = list(SAMPLES) if args.modality == "all" else [args.modality]
    t0 = time.perf_counter()
    results, failed = [], []
    for m in mods:
        try:
            r = segment_sample(m, out, args.device)
        except FileNotFoundError as e:
            # no bundled model yet: still prove the pipeline (read + normalise + write) works
            from napari_textdiff.core.io import load_image, write_image

            img_path, _ = sample_path(m)
            img = load_image(img_path, channels=3)
            prev = out / f"{img_path.stem}_input.png"
            write_image(prev, (img * 255).round().astype("uint8"))
            failed.append(m)
            print(f"[{m}] {e}\n      loaded {img_path.name} {img.shape[1]}x{img.shape[0]} and "
                  f"wrote its normalised copy to {prev} (no segmentation)")
            continue
        results.append(r)
        txt = f' with text "{r["text"][:60]}..."' if r["text"] else ""
        print(f"[{m}] {Path(r['image']).name} {r['shape'][1]}x{r['shape'][0]}{txt}\n"
              f"      model {Path(r['model']).name}: loaded in {r['load_s']:.2f} s, segmented in "
              f"{r['predict_s']:.2f} s; {r['foreground_fraction']:.1%} foreground, "
              f"{r['objects']} object(s)\n      wrote {r['mask']} and {r['overlay']}")
    atomic_write_bytes(out / "demo.json", json.dumps(results, indent=2).encode())
    print(f"demo: {len(results)} sample(s) segmented in {time.perf_counter() - t0:.1f} s total; "
          f"summary in {out / 'demo.json'}")
    if args.napari:
        _open_napari(mods[0])
    return 0


def _open_napari(modality: str) -> None:  # pragma: no cover - needs a display
    import napari

    viewer = napari.Viewer()
    viewer.open_sample("napari-textdiff", modality)
    viewer.window.add_plugin_dock_widget("napari-textdiff")
    napari.run()
