"""TextDiff: frozen diffusion-UNet decoder features + frozen text tokens, fused by a trained
multi-scale cross-attention head (Feng et al. 2023). Submodules import torch; this package
file does not, so ``import napari_textdiff.core.textdiff`` stays light.

- ``config.TextDiffConfig`` — every setting, stored in the model bundle (presets cpu/paper)
- ``features.DiffusionFeatures`` — hooked ``UNet2DModel`` decoder activations at noise steps
- ``text_encoder.TextEncoder`` — frozen BERT-family token states + attention mask, cached
- ``head.TextDiffHead`` — the trainable part
- ``model.TextDiffModel`` — fit / predict / finetune / save / load
"""
