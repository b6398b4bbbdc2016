"""Reproducible benchmarks (``napari-textdiff benchmark ...``): MoNuSeg few-shot curves, BUSI
semi-supervised MGCC, chest X-ray TextDiff with/without notes, speed; JSON + Markdown + plots,
and the README results section generated from those files (never typed by hand).

- ``common``    run records (command, commit, device, versions), seeding, per-image evaluation,
                the per-tile diffusion feature memo shared by every TextDiff variant
- ``baselines`` supervised U-Net from scratch and MGCC-light supervised (native-tile crops)
- ``fewshot``   MoNuSeg K-shot curves (paper protocol 256² and native-resolution tiles)
- ``busi``, ``xray``, ``speed``
- ``report``    JSON/Markdown/plots and the README block

Submodules import torch lazily or at their top; this file imports nothing heavy.
"""
