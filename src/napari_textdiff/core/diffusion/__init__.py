"""Diffusion models: backbone pretraining, guided-diffusion import, latent diffusion synthesis.

Submodules import torch/diffusers lazily; importing this package is cheap.
"""
