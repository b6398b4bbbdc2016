"""MGCC network: published parameter counts, shapes, which path runs, perturbation behaviour."""
import pytest
import torch

from napari_textdiff.core.mgcc.attention_gate import MultiScaleAttentionGate
from napari_textdiff.core.mgcc.network import MGCCConfig, MGCCNet, count_parameters
from napari_textdiff.core.mgcc.perturbations import Dropout, FeatureDropout, FeatureNoise


def test_published_parameter_counts():
    # constructing the full-width model is cheap (no activations); only count
    infer = MGCCNet(MGCCConfig(in_channels=3, aux=False))
    assert count_parameters(infer) == 52_142_145
    full = MGCCNet(MGCCConfig(in_channels=3, aux=True))
    assert round(count_parameters(full) / 1e6, 2) == 122.18
    # the inference state dict holds exactly the inference path
    n = sum(v.numel() for k, v in full.inference_state_dict().items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n == 52_142_145


def test_light_variant_is_much_smaller_and_gray_input():
    light = MGCCNet(MGCCConfig(in_channels=1, width=0.25, aux=False))
    assert light.config.channels == (16, 32, 64, 128, 256)
    assert count_parameters(light) < 52_142_145 / 10


def _tiny(**kw):
    torch.manual_seed(0)
    return MGCCNet(MGCCConfig(width=0.0625, **kw))


def test_shapes_and_paths():
    net = _tiny(in_channels=1).eval()
    x = torch.randn(2, 1, 32, 48)
    assert net(x).shape == (2, 1, 32, 48)
    outs = net.forward_all(x)
    assert len(outs) == 4 and all(o.shape == (2, 1, 32, 48) for o in outs)
    # in eval mode no perturbation is active: the main output of both paths agrees
    torch.testing.assert_close(outs[0], net(x))
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match="aux"):
        _tiny(aux=False).forward_all(torch.randn(1, 3, 32, 32))


def test_inference_runs_only_main_path():
    net = _tiny(in_channels=3).eval()
    called = []
    for i, d in enumerate(net.aux_decoders):
        d.register_forward_hook(lambda *a, i=i: called.append(i))
    net(torch.randn(1, 3, 32, 32))
    assert called == []
    net.forward_all(torch.randn(1, 3, 32, 32))
    assert called == [0, 1, 2]


def test_aux_decoders_have_own_weights_and_gates():
    net = _tiny()
    decs = [net.main_decoder, *net.aux_decoders]
    ids = {id(p) for d in decs for p in d.parameters()}
    assert len(ids) == sum(len(list(d.parameters())) for d in decs)
    assert all(len(d.gates) == 4 for d in decs)


def test_aux_inputs_taken_at_depths_0_3_6_main_at_9():
    net = _tiny(in_channels=1).train()
    for p in net.perturbations:          # switch perturbations off to read the taps
        p.eval()
    taps = {}
    for i, layer in enumerate(net.mixer, start=1):
        layer.register_forward_hook(lambda m, a, out, i=i: taps.__setitem__(i, out))
    seen = {}
    for name, dec in [("main", net.main_decoder), *[(f"aux{i}", d) for i, d in
                                                     enumerate(net.aux_decoders, 1)]]:
        dec.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0][4]))
    bottleneck = {}
    net.encoder.register_forward_hook(lambda m, a, out: bottleneck.__setitem__(0, out[4]))
    net.forward_all(torch.randn(2, 1, 32, 32))
    assert len(net.mixer) == 9
    assert seen["main"] is taps[9]
    assert torch.equal(seen["aux1"], bottleneck[0])
    assert torch.equal(seen["aux2"], taps[3]) and torch.equal(seen["aux3"], taps[6])


def test_attention_gate_formula():
    torch.manual_seed(0)
    g = MultiScaleAttentionGate(4).eval()
    x = torch.randn(2, 4, 8, 8)
    f = torch.cat([g.pointwise(x), g.ordinary(x), g.dilated(x)], 1)
    a = g.vote(torch.relu(f))
    assert ((a >= 0) & (a <= 1)).all()
    torch.testing.assert_close(g(x), x + x * a)
    assert g.dilated[0].dilation == (2, 2) and g.ordinary[0].kernel_size == (3, 3)


# ---------------------------------------------------------------- perturbations
def test_feature_dropout_zeroes_the_most_activated_positions():
    gen = torch.Generator().manual_seed(3)
    fd = FeatureDropout(generator=gen).train()
    x = torch.rand(3, 5, 6, 6) + 0.01
    u = 0.7 + 0.2 * torch.rand((), generator=torch.Generator().manual_seed(3)).item()
    y = fd(x)
    att = x.mean(1, keepdim=True)
    thr = att.amax(dim=(1, 2, 3), keepdim=True) * u
    expect = x * (att < thr)
    torch.testing.assert_close(y, expect)
    dropped = (y == 0).all(1)
    assert dropped.any(dim=(1, 2)).all()            # each sample loses its peak position(s)
    # the argmax of each sample's attention map is always dropped, whatever the draw
    for b in range(3):
        i = att[b, 0].argmax()
        assert dropped[b].flatten()[i]
    # kept positions are not rescaled
    assert torch.equal(y[y != 0], x[y != 0])
    assert torch.equal(fd.eval()(x), x)


def test_feature_dropout_threshold_range():
    x = torch.arange(100, dtype=torch.float32).reshape(1, 1, 10, 10) / 99  # max 1.0
    fd = FeatureDropout().train()
    for _ in range(20):
        kept = fd(x)
        frac_dropped = float((kept == 0).float().mean()) - 0.01  # the zero pixel is always 0
        # threshold in [0.7, 0.9] of the max: between 10 % and 30 % of positions dropped
        assert 0.09 <= frac_dropped <= 0.31


def test_feature_noise_is_multiplicative_and_shared_across_batch():
    fn = FeatureNoise(generator=torch.Generator().manual_seed(0)).train()
    x = torch.rand(4, 3, 5, 5) + 0.5
    y = fn(x)
    ratio = y / x
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))   # same noise for every sample
    assert ((ratio >= 0.7 - 1e-6) & (ratio <= 1.3 + 1e-6)).all()
    assert ratio.std() > 0.05                                       # and it does vary in (C,H,W)
    assert torch.equal(fn(torch.zeros(2, 3, 5, 5)), torch.zeros(2, 3, 5, 5))
    assert torch.equal(fn.eval()(x), x)


def test_dropout_only_in_training():
    d = Dropout(0.3)
    x = torch.ones(1, 8, 64, 64)
    y = d.train()(x)
    frac = float((y == 0).float().mean())
    assert 0.27 < frac < 0.33
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    assert torch.equal(d.eval()(x), x)
    with pytest.raises(ValueError):
        Dropout(1.0)


def test_perturbations_hit_all_five_features_of_aux_decoders():
    net = _tiny(in_channels=1).train()
    got = []
    net.aux_decoders[0].register_forward_pre_hook(lambda m, args: got.append(args[0]))
    clean = []
    net.main_decoder.register_forward_pre_hook(lambda m, args: clean.append(args[0]))
    net.encoder.register_forward_hook(lambda m, a, out: clean.append(out))
    net.forward_all(torch.randn(2, 1, 32, 32))
    enc = clean[0]
    fd_feats = got[0]
    for f_enc, f_aux in zip(enc, fd_feats):       # FeatureDropout zeroed something everywhere
        assert (f_aux == 0).sum() > (f_enc == 0).sum()
