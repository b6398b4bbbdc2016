"""MGCC: semi-supervised ConvMixer U-Net with auxiliary decoders (Tang et al.).

Import the submodules (``network``, ``trainer``, ``model``...) directly; this package import is
light and does not pull torch in.
"""
