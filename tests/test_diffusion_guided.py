"""guided-diffusion -> diffusers conversion matches a reference forward of the original design."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from guided_reference import UNetModel  # noqa: E402

from napari_textdiff.core.diffusion.guided_import import (  # noqa: E402
    convert_guided_checkpoint, infer_guided_architecture)
from napari_textdiff.core.diffusion.presets import guided_output_block_to_tap  # noqa: E402


def _reference(updown=True, new_order=False, num_classes=None):
    """The 256x256_diffusion_uncond family at toy size: same flags, 32 px, 32 base channels."""
    torch.manual_seed(0)
    ref = UNetModel(32, 3, 32, 6, 2, attention_resolutions=(4, 8), channel_mult=(1, 1, 2, 2),
                    num_head_channels=16, use_scale_shift_norm=True, resblock_updown=updown,
                    use_new_attention_order=new_order, num_classes=num_classes).eval()
    with torch.no_grad():   # perturb everything (incl. norms) so no mapping error hides
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ref


def test_uncond_family_converts_exactly_with_taps(tmp_path):
    ref = _reference()
    path = tmp_path / "tiny_uncond.pt"
    torch.save(ref.state_dict(), path)
    out, unet = convert_guided_checkpoint(path, tmp_path / "conv", image_size=32,
                                          num_head_channels=16)
    arch = infer_guided_architecture(ref.state_dict(), num_head_channels=16)
    assert arch["channel_mult"] == [1, 1, 2, 2] and arch["resblock_updown"]
    assert arch["attention_levels"] == [False, False, True, True] and arch["learn_sigma"]
    assert unet.config.out_channels == 6
    assert unet.config.resnet_time_scale_shift == "scale_shift"

    ref_acts, new_acts = {}, {}
    for i, blk in enumerate(ref.output_blocks):
        blk.register_forward_hook(lambda m, a, o, i=i: ref_acts.__setitem__(i, o))
    mods = dict(unet.named_modules())
    for i in range(len(ref.output_blocks)):
        mods[guided_output_block_to_tap(i, unet.config)].register_forward_hook(
            lambda m, a, o, i=i: new_acts.__setitem__(i, o if torch.is_tensor(o) else o[0]))
    x = torch.randn(2, 3, 32, 32)
    t = torch.tensor([3, 901])
    with torch.no_grad():
        a = ref(x, t)
        b = unet(x, t).sample
    assert a.shape == b.shape == (2, 6, 32, 32)
    assert (a - b).abs().max() < 1e-4 * max(1.0, a.abs().max().item())
    assert len(new_acts) == len(ref_acts) == 12
    for i in ref_acts:
        assert torch.allclose(ref_acts[i], new_acts[i], atol=1e-4), i

    # the written directory reloads, with the tap table and a learned-range scheduler
    from diffusers import DDPMScheduler, UNet2DModel
    again = UNet2DModel.from_pretrained(out)
    with torch.no_grad():
        assert torch.allclose(again(x, t).sample, b, atol=1e-5)
    assert DDPMScheduler.from_pretrained(out).config.variance_type == "learned_range"
    info = json.loads((out / "conversion.json").read_text())
    assert info["output_block_taps"]["8"] == "up_blocks.2.upsamplers.0"


def test_conv_resampling_new_attention_order_and_classes(tmp_path):
    ref = _reference(updown=False, new_order=True, num_classes=5)
    _, unet = convert_guided_checkpoint(ref.state_dict(), tmp_path / "c", image_size=32,
                                        num_head_channels=16, use_new_attention_order=True)
    x, t, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 500]), torch.tensor([1, 4])
    with torch.no_grad():
        assert torch.allclose(ref(x, t, y), unet(x, t, class_labels=y).sample, atol=1e-4)


def test_paper_tap_table_and_errors():
    # the paper's 256x256 uncond layout: TextDiff's MoNuSeg blocks {6, 8, 12, 16}
    assert [guided_output_block_to_tap(i) for i in (6, 8, 12, 16)] == [
        "up_blocks.2.attentions.0", "up_blocks.2.upsamplers.0", "up_blocks.4.resnets.0",
        "up_blocks.5.resnets.1"]
    assert guided_output_block_to_tap(17) == "up_blocks.5.resnets.2"
    with pytest.raises(ValueError, match="out of range"):
        guided_output_block_to_tap(18)
    sd = _reference().state_dict()
    with pytest.raises(NotImplementedError, match="head"):
        # a fixed head count over attention widths 32 and 64: one head dim cannot express it
        ref = UNetModel(32, 3, 32, 6, 1, attention_resolutions=(2, 4), channel_mult=(1, 1, 2),
                        num_heads=4, use_scale_shift_norm=True, resblock_updown=True)
        infer_guided_architecture(ref.state_dict(), num_head_channels=None, num_heads=4)
    with pytest.raises(ValueError, match="divisible"):
        infer_guided_architecture(sd, num_head_channels=24)
    with pytest.raises(ValueError, match="not a guided-diffusion"):
        infer_guided_architecture({"foo": torch.zeros(1)})
