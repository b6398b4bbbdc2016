"""Benchmark outputs: JSON (everything), Markdown (tables), plots (matplotlib, Agg), and the
README results section generated from the JSON files (so numbers are never typed by hand).

Every JSON file is one dict with ``benchmark`` ("monuseg" | "busi" | "xray" | "speed"),
``run`` (command, commit, device, versions, seeds, config), ``rows`` (one per method x setting
x seed, with per-image metrics and loss curves) and ``summary`` (mean ± std over seeds).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

__all__ = ["write_outputs", "write_json", "markdown", "readme_section", "update_readme",
           "PAPER", "LABELS", "START", "END"]

START = "<!-- results:start -->"
END = "<!-- results:end -->"

LABELS = {
    "textdiff": "TextDiff", "textdiff_no_text": "TextDiff without text",
    "textdiff_no_xattn": "TextDiff without cross-attention (pooled text concatenated)",
    "unet": "U-Net from scratch", "mgcc_light": "MGCC-light, supervised only",
    "random_forest": "random forest on skimage filters (the classic peer)",
    "mgcc_50": "MGCC, 50 % labeled", "mgcc_50_synthetic": "MGCC, 50 % labeled + synthetic",
    "unet_full": "U-Net, fully supervised",
    "textdiff_notes": "TextDiff with clinical notes", "textdiff_no_notes": "TextDiff without notes",
}
PROTOCOL_LABELS = {"paper": "whole image → {size}² (paper)",
                   "tiles": "native resolution, {size}² tiles"}
METRIC_LABELS = {"dice": "Dice", "iou": "IoU", "precision": "Precision", "recall": "Recall",
                 "f1": "F1"}

#: published numbers (percent) the measured ones sit next to
PAPER = {
    "monuseg": {  # TextDiff paper, 5 training images, whole image resized to 256²
        "protocol": "paper", "k": 5,
        "rows": {"textdiff": {"dice": 78.67, "iou": 64.98},
                 "textdiff_no_text": {"dice": 77.73},
                 "textdiff_no_xattn": {"dice": 76.34}},
        "source": "TextDiff (Feng et al. 2023), MoNuSeg test set (14 images)",
        # measured by the project on the withheld test set (REFERENCE.md), 3 subsets of 5
        "reference": [("pixel MLP on a classic filter bank", 64.5),
                      ("small U-Net from scratch, 1 500 steps", 70.3),
                      ("pixel MLP on an untrained diffusion UNet's decoder features", 68.9),
                      ("the same after ~1 000 steps of DDPM pretraining", 71.0)],
    },
    "busi": {
        "rows": {"mgcc_50": {"iou": 68.06}, "mgcc_50_synthetic": {"iou": 68.70},
                 "unet_full": {"iou": 69.69}},
        "source": "MGCC (Tang et al.), BUSI 780 cases incl. normals, 70/30 split; synthetic: "
                  "725 LDM images",
    },
    "xray": {"rows": {}, "source": "TextDiff reports QaTa-COV19 (not this collection)"},
}


# ------------------------------------------------------------------------------- JSON
def _clean(o):
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, Path):
        return str(o)
    return o


def write_json(result: dict, path) -> Path:
    from ..core.bundle import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, json.dumps(_clean(result), indent=1).encode())
    return path


def load_results(folder) -> dict[str, dict]:
    """``{benchmark: result}`` of the ``*.json`` benchmark files in ``folder``."""
    out = {}
    for p in sorted(Path(folder).glob("*.json")):
        if p.name.endswith(".partial.json"):     # an unfinished run (UnitLog)
            continue
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{p}: not a readable benchmark JSON ({e})") from e
        if isinstance(d, dict) and d.get("benchmark") in ("monuseg", "busi", "xray", "speed"):
            out[d["benchmark"]] = d
    return out


# ------------------------------------------------------------------------------- tables
def _pct(v, std=None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    s = f"{100 * v:.2f}"
    return s + (f" ± {100 * std:.2f}" if std is not None else "")


def _label(m):
    return LABELS.get(m, m)


def _summary_table(res: dict, keys: list[str], settings: list[str]) -> list[str]:
    paper = PAPER.get(res["benchmark"], {})
    prow = paper.get("rows", {})
    show_paper = any(prow.values())
    size = res.get("run", {}).get("config", {}).get("size", 256)
    head = ["Method", *[s.capitalize() if s != "k" else "K" for s in settings],
            *[f"{METRIC_LABELS.get(k, k)} % (mean ± std over seeds)" for k in keys],
            "seeds × images"]
    if show_paper:
        head.append("paper " + "/".join(METRIC_LABELS.get(k, k) for k in keys))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in res["summary"]:
        cells = [_label(s["method"])]
        for st in settings:
            v = s.get(st)
            cells.append(PROTOCOL_LABELS.get(v, str(v)).format(size=size) if st == "protocol"
                         else str(v))
        one = s.get("n_seeds", 0) < 2           # no spread to show from a single seed
        cells += [_pct(s.get(k), None if one else s.get(f"{k}_std")) for k in keys]
        cells.append(f"{s['n_seeds']} × {s['n_images'] // max(1, s['n_seeds'])}")
        if show_paper:
            pr = prow.get(s["method"], {})
            match = all(s.get(k2) == v2 for k2, v2 in paper.items()
                        if k2 in ("protocol", "k") and k2 in s)
            cells.append("/".join(f"{pr[k]:.2f}" if k in pr else "–" for k in keys)
                         if pr and match else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _shown_path(path) -> str:
    """A path under the current folder (the repository, for the README) relative to it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (TypeError, ValueError, OSError):
        return str(path)


def _run_lines(res: dict) -> list[str]:
    r = res["run"]
    lines = [f"- command: `{r['command']}`",
             f"- device: {r['device_description']} (torch {r['torch']}, Python {r['python']})",
             f"- git commit: `{r.get('git_commit')}`; started {r['started']}; wall time "
             f"{res.get('wall_seconds', float('nan')) / 60:.1f} min; seeds {r['seeds']}"]
    bb = res.get("backbone")
    if bb:
        lines.append(f"- TextDiff backbone: {bb['source']}"
                     + (f" ({bb.get('preset')} preset) — {bb['note']}" if bb.get("note") else
                        f" ({_shown_path(bb.get('path'))})"))
    if res.get("text_encoder"):
        lines.append(f"- text encoder: {res['text_encoder']}")
    cfg = r.get("config") or {}
    if cfg.get("textdiff_overrides"):      # the protocol label's tile size no longer holds
        over = ", ".join(f"{k}={v}" for k, v in cfg["textdiff_overrides"].items())
        lines.append(f"- TextDiff head preset `{cfg.get('head_preset')}`, settings set after "
                     f"the protocol's: {over}")
    if res.get("split_note"):
        lines.append(f"- split: {res['split_note']}")
    if res.get("resumed"):
        src = res["resumed"].get("from")
        n_src = len(src) if isinstance(src, list) else 1
        lines.append(f"- resumed: {res['resumed']['units']} of {len(res.get('rows', []))} runs "
                     + (f"were finished by earlier invocations with the same settings and "
                        f"read back from `{src}` (`--resume`)" if n_src == 1 else
                        f"were finished by earlier invocations with the same settings, "
                        f"merged from {n_src} output folders (`--resume`/`--merge`)"))
    stopped = [r for r in res.get("rows", []) if r.get("stopped")]
    if stopped:
        def unit(r):
            return " ".join(f"{k}={r[k]}" for k in ("method", "protocol", "k", "seed") if k in r)

        lines.append(f"- **{len(stopped)} run(s) stopped before their budget** (Ctrl-C or a time "
                     "limit; scored with their best validated weights, rerun by `--resume`): "
                     + "; ".join(unit(r) + (f" at {r['iterations_done']} iterations"
                                            if r.get("iterations_done") else "")
                                 for r in stopped))
    secs = [r["train_seconds"] for r in res.get("rows", []) if r.get("train_seconds")]
    if secs:
        lines.append(f"- training time summed over the {len(secs)} runs: "
                     f"{sum(secs) / 60:.1f} min (evaluation not included)")
    return lines


def markdown(res: dict, heading_level: int = 2) -> str:
    """The Markdown report of one result (tables + how it was produced)."""
    b = res["benchmark"]
    h = "#" * heading_level
    title = {"monuseg": "MoNuSeg few-shot", "busi": "BUSI semi-supervised (MGCC)",
             "xray": "Chest X-ray lesions (TextDiff)", "speed": "Speed"}[b]
    lines = [f"{h} {title}", ""]
    lines += _run_lines(res) + [""]
    if b == "speed":
        lines += ["| measure | value |", "|---|---|"]
        for name, val in res["measures"].items():
            v = val["value"]
            txt = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
            lines.append(f"| {name} | {txt} {val['unit']} |")
        lines.append("")
        return "\n".join(lines)
    keys = res["metrics"]
    settings = {"monuseg": ["protocol", "k"], "busi": [], "xray": ["k"]}[b]
    lines += _summary_table(res, keys, settings)
    paper = PAPER.get(b, {})
    if paper.get("rows"):
        setting = ", ".join(f"{k.upper() if k == 'k' else k} = {paper[k]}"
                            for k in ("protocol", "k") if k in paper)
        lines += ["", f"Published numbers ({paper['source']}{'; ' + setting if setting else ''}):",
                  "", "| Method | " + " | ".join(METRIC_LABELS.get(k, k) + " %" for k in keys)
                  + " |", "|---|" + "---|" * len(keys)]
        for m, vals in paper["rows"].items():
            lines.append(f"| {_label(m)} | " + " | ".join(
                f"{vals[k]:.2f}" if k in vals else "–" for k in keys) + " |")
    lines += ["", f"Per-image metrics (empty prediction on empty mask = 1), averaged per seed; "
                  f"± is the sample std (n − 1) over seeds (subsets). Paper numbers: {paper.get('source', '')}."]
    if paper.get("reference"):
        lines += ["", "Measured earlier on the withheld MoNuSeg test set "
                      "(`../shared/REFERENCE.md`, paper protocol, 3 subsets of 5 images), Dice %: "
                  + "; ".join(f"{n} {v}" for n, v in paper["reference"]) + "."]
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_metric_vs_k(res: dict, metric: str, path) -> Path | None:
    plt = _plt()
    protos = sorted({s.get("protocol", "") for s in res["summary"]})
    fig, axes = plt.subplots(1, len(protos), figsize=(5.5 * len(protos), 4.6), squeeze=False)
    legend: dict = {}
    for ax, proto in zip(axes[0], protos):
        rows = [s for s in res["summary"] if s.get("protocol", "") == proto]
        ks = sorted({s["k"] for s in rows if isinstance(s.get("k"), int)})
        for i, m in enumerate(dict.fromkeys(s["method"] for s in res["summary"])):
            pts = sorted((s["k"], s[metric], s[f"{metric}_std"]) for s in rows
                         if s["method"] == m and isinstance(s.get("k"), int))
            if not pts:
                continue
            k, v, e = map(np.array, zip(*pts))
            legend[_label(m)] = ax.errorbar(k, 100 * v, yerr=100 * e, marker="o", capsize=3,
                                            color=f"C{i}")
        # K grows geometrically (1, 2, 5, 10): a log axis spaces it evenly, ticks at the K run
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        if ks:
            ax.set_xlim(ks[0] / 1.4, ks[-1] * 1.4)
        ax.set_xlabel("K (training images)")
        ax.set_ylabel(f"{metric} %")
        size = res.get("run", {}).get("config", {}).get("size", 256)
        ax.set_title(PROTOCOL_LABELS.get(proto, proto).format(size=size) or res["benchmark"])
        ax.grid(alpha=0.3)
    # one legend under the panels, so it never hides a point
    fig.legend(list(legend.values()), list(legend), loc="lower center", fontsize=7,
               ncol=min(3, max(1, len(legend))), frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(legend) + 2) // 3), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_learning_curves(res: dict, path) -> Path | None:
    """Training loss per method (first seed; one line per K / setting) and, where the rows
    carry one, the validation IoU of every seed (dashed, right axis): where it flattens is
    what says a budget was enough."""
    plt = _plt()
    rows = [r for r in res["rows"] if r.get("curve") and r["curve"]["loss"]]
    if not rows:
        return None
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), squeeze=False)
    first_seed = rows[0]["seed"]
    for ax, m in zip(axes[0], methods):
        for r in rows:
            if r["method"] != m or r["seed"] != first_seed:
                continue
            lab = " ".join(str(r[k]) if k != "k" else f"K={r[k]}" for k in ("protocol", "k")
                           if k in r) or m
            ax.plot(r["curve"]["x"], r["curve"]["loss"], label=lab)
        ax.set_title(_label(m), fontsize=8)
        ax.set_xlabel(rows[0]["curve"]["unit"] if all(r["curve"]["unit"] ==
                      rows[0]["curve"]["unit"] for r in rows if r["method"] == m) else "step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
        vals = [r for r in res["rows"] if r["method"] == m and r.get("val_curve")]
        if vals:
            ax2 = ax.twinx()
            for r in vals:
                it, v = zip(*r["val_curve"])
                ax2.plot(it, v, "--", lw=1, label=f"val IoU, seed {r['seed']}"
                         + (f" K={r['k']}" if "k" in r else ""))
            ax2.set_ylabel("validation IoU (dashed)")
            ax2.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_bars(res: dict, metric: str, path) -> Path:
    plt = _plt()
    s = res["summary"]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(s), 3.6))
    x = np.arange(len(s))
    ax.bar(x, [100 * r[metric] for r in s], yerr=[100 * r[f"{metric}_std"] for r in s],
           capsize=4, color="tab:blue")
    ax.set_xticks(x, [_label(r["method"]) + (f"\nK={r['k']}" if "k" in r else "") for r in s],
                  fontsize=7)
    ax.set_ylabel(f"{metric} %")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_speed(res: dict, path) -> Path:
    plt = _plt()
    items = [(k, v["value"]) for k, v in res["measures"].items() if v["unit"] == "ms"]
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * max(1, len(items))))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:green")
    ax.set_xlabel("ms")
    ax.set_xscale("log")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_outputs(res: dict, out_dir) -> dict[str, str]:
    """``NAME.json``, ``NAME.md`` and ``NAME_*.png`` in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b = res["benchmark"]
    files = {}
    if b == "speed":
        files["plot_latency"] = str(plot_speed(res, out / f"{b}_latency.png"))
    elif res.get("rows"):
        m0 = res["metrics"][0]
        if b in ("monuseg", "xray"):
            for m in res["metrics"][:2]:
                files[f"plot_{m}_vs_k"] = str(plot_metric_vs_k(res, m, out / f"{b}_{m}_vs_k.png"))
        else:
            files[f"plot_{m0}"] = str(plot_bars(res, m0, out / f"{b}_{m0}.png"))
        lc = plot_learning_curves(res, out / f"{b}_learning_curves.png")
        if lc:
            files["plot_learning_curves"] = str(lc)
    md = out / f"{b}.md"
    from ..core.bundle import atomic_write_bytes

    atomic_write_bytes(md, markdown(res).encode("utf-8"))
    files["markdown"] = str(md)
    files["json"] = str(out / f"{b}.json")
    res = {**res, "files": files}
    write_json(res, out / f"{b}.json")
    return files


# ------------------------------------------------------------------------------- README
def readme_section(results_dir, link_base=None) -> str:
    """The README results block built from the benchmark JSON files in ``results_dir``; plot
    links are relative to ``link_base`` (the README's folder; default: the current one)."""
    import os

    res = load_results(results_dir)
    if not res:
        raise FileNotFoundError(f"{results_dir}: no benchmark JSON files (monuseg.json, "
                                "busi.json, xray.json, speed.json)")
    parts = [START, "",
             "_Generated by `napari-textdiff benchmark report` from the JSON files in "
             f"`{Path(results_dir).as_posix()}`; do not edit by hand._", ""]
    for b in ("monuseg", "busi", "xray", "speed"):
        if b in res:
            parts.append(markdown(res[b], heading_level=3))
            plots = sorted(Path(results_dir).glob(f"{b}_*.png"))
            if plots:
                rel = [Path(os.path.relpath(p.resolve(), Path(link_base or ".").resolve()))
                       for p in plots]
                parts += [" ".join(f"![{p.stem}]({p.as_posix()})" for p in rel), ""]
    parts.append(END)
    return "\n".join(parts)


def update_readme(readme, results_dir, out=None) -> Path:
    """Replace the block between :data:`START` and :data:`END` in ``readme`` (written to
    ``out`` or in place). Missing markers are an error (the README decides where it goes)."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"{readme}: needs exactly one '{START}' followed by one '{END}'")
    block = readme_section(results_dir, link_base=readme.parent)
    new = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _m: block, text,
                 flags=re.S)
    dest = Path(out) if out else readme
    from ..core.bundle import atomic_write_bytes
    atomic_write_bytes(dest, new.encode("utf-8"))
    return dest
