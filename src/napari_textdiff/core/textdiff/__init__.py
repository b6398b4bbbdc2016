"""TextDiff: frozen diffusion-UNet decoder features + frozen text tokens, fused by a trained
multi-scale cross-attention head (Feng et al. 2023). Submodules import torch; this package
file does not, so ``import napari_textdiff.core.textdiff`` stays light.

- ``config.TextDiffConfig`` — every setting, stored in the model bundle (presets cpu/paper/light and
  the shipped recipes histology/xray)
- ``features.DiffusionFeatures`` — hooked ``UNet2DModel`` decoder activations at noise steps
- ``text_encoder.TextEncoder`` — frozen BERT-family token states + attention mask, cached
- ``head.TextDiffHead`` — the trainable part
- ``model.TextDiffModel`` — the model object: create, predict, and the entry points below
- ``cache`` — the training tiles' features computed once (fp16, RAM or disk)
- ``train`` — fit / fine-tune loops over the cache
- ``prediction`` — tile-streaming progress generator, Stop inside the backbone
- ``files`` — save / load (backbone and text encoder found again by path and fingerprint)
- ``feature_memo.FeatureMemo`` — per-tile features remembered across jobs (the napari session)
"""
