"""int8 storage of shipped weights: round trip within half a quantisation step, half the bytes
of fp16, predictions kept, and load_bundle hands back float weights."""
import numpy as np
import torch

from napari_textdiff.core.bundle import load_bundle, save_bundle
from napari_textdiff.core.weight_quant import SCALE_SUFFIX, dequantize_state, quantize_state


def test_quantize_round_trip_is_within_half_a_step_per_channel():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, generator=g) * torch.linspace(0.01, 3.0, 16).view(-1, 1, 1, 1)
    state = {"conv.weight": w, "conv.bias": torch.randn(16, generator=g),
             "bn.num_batches_tracked": torch.tensor(7)}
    q = quantize_state(state)
    assert q["conv.weight"].dtype == torch.int8 and q["conv.weight" + SCALE_SUFFIX].shape == (16,)
    assert q["conv.bias"].dtype == torch.float16          # small tensors: fp16
    assert q["bn.num_batches_tracked"].dtype == torch.int64
    back = dequantize_state(q)
    assert set(back) == set(state) and back["conv.weight"].dtype == torch.float32
    step = w.abs().amax(dim=(1, 2, 3)) / 127                # per output channel
    err = (back["conv.weight"] - w).abs().amax(dim=(1, 2, 3))
    assert torch.all(err <= step / 2 + 1e-7)
    assert dequantize_state(quantize_state(back))["conv.weight"].equal(back["conv.weight"])  # idempotent


def test_int8_bundle_halves_fp16_and_keeps_the_model_output(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.BatchNorm2d(64),
                              torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, padding=1)).eval()
    f16, i8 = tmp_path / "m16.safetensors", tmp_path / "m8.safetensors"
    save_bundle(f16, "test", net.state_dict(), {"a": 1}, dtype=torch.float16)
    save_bundle(i8, "test", net.state_dict(), {"a": 1}, dtype="int8")
    assert i8.stat().st_size < 0.6 * f16.stat().st_size
    header, state = load_bundle(i8, expect_kind="test")
    assert header["config"] == {"a": 1} and not any(k.endswith(SCALE_SUFFIX) for k in state)
    net2 = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.BatchNorm2d(64),
                               torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, padding=1)).eval()
    net2.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a, b = net(x), net2(x)
    rel = float((a - b).abs().max() / a.abs().max())
    assert rel < 0.02, rel
    assert np.isfinite(b.numpy()).all()
