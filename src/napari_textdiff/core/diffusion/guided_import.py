"""Convert OpenAI guided-diffusion checkpoints to a diffusers ``UNet2DModel`` directory.

A user who has the TextDiff paper's backbone file (``256x256_diffusion_uncond.pt``: 256 ch,
channel_mult (1,1,2,2,4,4), 2 res blocks, attention at 32/16/8 with 64-ch heads, scale-shift
norm, resblock up/down, learned sigma) gets the paper's backbone as a standard diffusers model.
The architecture is read from the state dict's keys and shapes; only the head layout
(``num_head_channels`` / ``num_heads``) and the QKV order are flags, because weights do not show
them.

Mapping (guided -> diffusers):

- ``time_embed.0/2`` -> ``time_embedding.linear_1/2``; ``label_emb`` -> ``class_embedding``
- ``input_blocks.0.0`` -> ``conv_in``; ``input_blocks[1 + l*(R+1) + j]`` -> ``down_blocks.l``
  ``.resnets.j`` (+ ``.attentions.j``); ``input_blocks[(l+1)*(R+1)]`` -> ``down_blocks.l.downsamplers.0``
- ``middle_block.0/1/2`` -> ``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1``
- ``output_blocks[u*(R+1) + j]`` -> ``up_blocks.u.resnets.j`` (+ ``.attentions.j``), and its
  trailing upsampler -> ``up_blocks.u.upsamplers.0``
- ``out.0/2`` -> ``conv_norm_out`` / ``conv_out`` (6 channels with learned sigma: eps then
  the variance interpolation ``v``; diffusers' ``DDPMScheduler(variance_type="learned_range")``)
- ResBlock: ``in_layers.0/2`` -> ``norm1/conv1``, ``emb_layers.1`` -> ``time_emb_proj``,
  ``out_layers.0/3`` -> ``norm2/conv2``, ``skip_connection`` -> ``conv_shortcut``
- AttentionBlock: ``norm`` -> ``group_norm``, ``qkv`` (per-head interleaved q,k,v in the legacy
  order) -> ``to_q/to_k/to_v``, ``proj_out`` -> ``to_out.0``

Decoder taps. The TextDiff feature extractor hooks guided ``output_blocks[i]``; in diffusers the
same tensor is the output of :func:`guided_output_block_to_tap(i, config)`. For the 256x256
uncond model (R = 2, 18 output blocks, up block ``u`` works at 8·2^u px for a 256 input)::

    i   module                       out (256 input)   i   module                      out
    0   up_blocks.0.attentions.0     1024@8²           9   up_blocks.3.resnets.0       512@64²
    1   up_blocks.0.attentions.1     1024@8²           10  up_blocks.3.resnets.1       512@64²
    2   up_blocks.0.upsamplers.0     1024@16²          11  up_blocks.3.upsamplers.0    512@128²
    3   up_blocks.1.attentions.0     1024@16²          12  up_blocks.4.resnets.0       256@128²
    4   up_blocks.1.attentions.1     1024@16²          13  up_blocks.4.resnets.1       256@128²
    5   up_blocks.1.upsamplers.0     1024@32²          14  up_blocks.4.upsamplers.0    256@256²
    6   up_blocks.2.attentions.0     512@32²           15  up_blocks.5.resnets.0       256@256²
    7   up_blocks.2.attentions.1     512@32²           16  up_blocks.5.resnets.1       256@256²
    8   up_blocks.2.upsamplers.0     512@64²           17  up_blocks.5.resnets.2       256@256²

(TextDiff's MoNuSeg blocks {6, 8, 12, 16} -> 512@32², 512@64², 256@128², 256@256².)

What diffusers cannot express exactly (raised as errors, not silently approximated):
a fixed ``num_heads`` with different channel widths across attention levels (diffusers has one
head *dimension* per model), non-conv non-resblock resampling (``conv_resample=False``), and
``use_scale_shift_norm`` differing between blocks. Everything the uncond/cond 256/512 family
uses is exact (tested against a re-implementation of guided-diffusion's forward to ~1e-5).
"""
from __future__ import annotations

import json
from pathlib import Path

from .presets import guided_output_block_to_tap

__all__ = ["infer_guided_architecture", "guided_to_diffusers_config", "convert_guided_state_dict",
           "convert_guided_checkpoint", "guided_output_block_to_tap", "load_guided_state_dict"]


def load_guided_state_dict(path) -> dict:
    """Read a guided-diffusion ``.pt`` (plain state dict, or wrapped in ``state_dict``/``model``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    for key in ("state_dict", "model", "ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or "input_blocks.0.0.weight" not in sd:
        raise ValueError(f"{path}: not a guided-diffusion UNet checkpoint "
                         "(no input_blocks.0.0.weight)")
    return sd


def _is_resblock(sd, prefix) -> bool:
    return f"{prefix}.in_layers.0.weight" in sd


def infer_guided_architecture(sd: dict, num_head_channels: int | None = 64,
                              num_heads: int | None = None,
                              use_new_attention_order: bool = False) -> dict:
    """Read guided-diffusion's constructor flags from a state dict's keys and shapes."""
    try:
        mc = sd["input_blocks.0.0.weight"].shape[0]
        in_ch = sd["input_blocks.0.0.weight"].shape[1]
        out_ch = sd["out.2.weight"].shape[0]
    except KeyError as e:
        raise ValueError(f"not a guided-diffusion UNet state dict (missing {e})") from None
    n_out = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("output_blocks."))

    def has_up(k):
        return any(f"output_blocks.{k}.{m}.in_layers.0.weight" in sd or
                   f"output_blocks.{k}.{m}.conv.weight" in sd for m in (1, 2))

    ups = [k for k in range(n_out) if has_up(k)]
    R = ups[0] if ups else n_out - 1          # output blocks per level - 1
    L = n_out // (R + 1)
    if L * (R + 1) != n_out:
        raise ValueError("unexpected output_blocks layout")
    mults, attn = [], []
    for level in range(L):
        p = f"input_blocks.{1 + level * (R + 1)}"
        mults.append(sd[f"{p}.0.out_layers.3.weight"].shape[0] // mc)
        attn.append(f"{p}.1.qkv.weight" in sd)
    updown = L > 1 and _is_resblock(sd, f"input_blocks.{R + 1}.0")
    if L > 1 and not updown and f"input_blocks.{R + 1}.0.op.weight" not in sd:
        raise NotImplementedError("conv_resample=False (parameter-free resampling) has no exact "
                                  "diffusers UNet2DModel equivalent")
    ss = [sd[k].shape[0] == 2 * sd[k.replace("emb_layers.1.weight", "out_layers.3.weight")].shape[0]
          for k in sd if k.endswith("emb_layers.1.weight")]
    if len(set(ss)) != 1:
        raise NotImplementedError("mixed use_scale_shift_norm is not expressible in diffusers")
    attn_widths = {mults[i] * mc for i in range(L) if attn[i]} | {mults[-1] * mc}
    if num_heads is not None and num_head_channels in (None, -1):
        if len(attn_widths) != 1:
            raise NotImplementedError(
                f"num_heads={num_heads} with attention at widths {sorted(attn_widths)}: diffusers "
                "uses one head dimension per model; this head layout is not expressible")
        head_dim = next(iter(attn_widths)) // num_heads
    else:
        head_dim = num_head_channels
    for w in attn_widths:
        if w % head_dim:
            raise ValueError(f"attention width {w} is not divisible by head size {head_dim}")
    return dict(model_channels=mc, in_channels=in_ch, out_channels=out_ch, num_res_blocks=R,
                channel_mult=mults, attention_levels=attn, resblock_updown=updown,
                use_scale_shift_norm=ss[0], head_dim=head_dim,
                use_new_attention_order=use_new_attention_order,
                num_classes=sd["label_emb.weight"].shape[0] if "label_emb.weight" in sd else None,
                learn_sigma=out_ch == 2 * in_ch)


def guided_to_diffusers_config(arch: dict, image_size: int | None = 256) -> dict:
    """``UNet2DModel`` kwargs reproducing a guided-diffusion architecture."""
    mc, R = arch["model_channels"], arch["num_res_blocks"]
    updown = arch["resblock_updown"]
    down, up = [], []
    for a in arch["attention_levels"]:
        down.append("AttnDownBlock2D" if a else
                    ("ResnetDownsampleBlock2D" if updown else "DownBlock2D"))
    for a in reversed(arch["attention_levels"]):
        up.append("AttnUpBlock2D" if a else ("ResnetUpsampleBlock2D" if updown else "UpBlock2D"))
    cfg = dict(
        sample_size=image_size, in_channels=arch["in_channels"],
        out_channels=arch["out_channels"],
        block_out_channels=tuple(m * mc for m in arch["channel_mult"]),
        layers_per_block=R, down_block_types=tuple(down), up_block_types=tuple(up),
        downsample_type="resnet" if updown else "conv",
        upsample_type="resnet" if updown else "conv", downsample_padding=1,
        resnet_time_scale_shift="scale_shift" if arch["use_scale_shift_norm"] else "default",
        attention_head_dim=arch["head_dim"], norm_num_groups=32, attn_norm_num_groups=32,
        norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, act_fn="silu",
    )
    if arch.get("num_classes"):
        cfg["num_class_embeds"] = arch["num_classes"]
    return cfg


def _resnet(sd, src, dst, out):
    for a, b in (("in_layers.0", "norm1"), ("in_layers.2", "conv1"),
                 ("emb_layers.1", "time_emb_proj"), ("out_layers.0", "norm2"),
                 ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")):
        for suf in ("weight", "bias"):
            k = f"{src}.{a}.{suf}"
            if k in sd:
                out[f"{dst}.{b}.{suf}"] = sd[k]


def _attention(sd, src, dst, out, head_dim, new_order):
    w = sd[f"{src}.qkv.weight"][..., 0]      # (3C, C)
    bias = sd[f"{src}.qkv.bias"]
    c = w.shape[1]
    heads = c // head_dim
    if new_order:   # q, k, v blocks, each split into heads
        wq, wk, wv = w.chunk(3, 0)
        bq, bk, bv = bias.chunk(3, 0)
    else:           # legacy: per head [q, k, v] interleaved
        w4 = w.reshape(heads, 3, head_dim, c)
        b3 = bias.reshape(heads, 3, head_dim)
        wq, wk, wv = (w4[:, i].reshape(c, c) for i in range(3))
        bq, bk, bv = (b3[:, i].reshape(c) for i in range(3))
    for name, ww, bb in (("to_q", wq, bq), ("to_k", wk, bk), ("to_v", wv, bv)):
        out[f"{dst}.{name}.weight"] = ww.contiguous()
        out[f"{dst}.{name}.bias"] = bb.contiguous()
    out[f"{dst}.to_out.0.weight"] = sd[f"{src}.proj_out.weight"][..., 0].contiguous()
    out[f"{dst}.to_out.0.bias"] = sd[f"{src}.proj_out.bias"]
    out[f"{dst}.group_norm.weight"] = sd[f"{src}.norm.weight"]
    out[f"{dst}.group_norm.bias"] = sd[f"{src}.norm.bias"]


def _resample(sd, src, dst, out):
    if _is_resblock(sd, src):
        _resnet(sd, src, dst, out)
    else:
        for key in ("op", "conv"):
            if f"{src}.{key}.weight" in sd:
                out[f"{dst}.conv.weight"] = sd[f"{src}.{key}.weight"]
                out[f"{dst}.conv.bias"] = sd[f"{src}.{key}.bias"]


def convert_guided_state_dict(sd: dict, arch: dict) -> dict:
    """Rename/reshape a guided-diffusion state dict into ``UNet2DModel`` keys (float32)."""
    import torch

    sd = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
          for k, v in sd.items()}
    out: dict = {}
    R, L = arch["num_res_blocks"], len(arch["channel_mult"])
    hd, new = arch["head_dim"], arch["use_new_attention_order"]
    for a, b in (("time_embed.0", "time_embedding.linear_1"),
                 ("time_embed.2", "time_embedding.linear_2"),
                 ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"),
                 ("out.2", "conv_out")):
        out[f"{b}.weight"], out[f"{b}.bias"] = sd[f"{a}.weight"], sd[f"{a}.bias"]
    if "label_emb.weight" in sd:
        out["class_embedding.weight"] = sd["label_emb.weight"]
    for level in range(L):
        for j in range(R):
            src = f"input_blocks.{1 + level * (R + 1) + j}"
            _resnet(sd, f"{src}.0", f"down_blocks.{level}.resnets.{j}", out)
            if arch["attention_levels"][level]:
                _attention(sd, f"{src}.1", f"down_blocks.{level}.attentions.{j}", out, hd, new)
        if level < L - 1:
            _resample(sd, f"input_blocks.{(level + 1) * (R + 1)}.0",
                      f"down_blocks.{level}.downsamplers.0", out)
    _resnet(sd, "middle_block.0", "mid_block.resnets.0", out)
    _attention(sd, "middle_block.1", "mid_block.attentions.0", out, hd, new)
    _resnet(sd, "middle_block.2", "mid_block.resnets.1", out)
    for u in range(L):
        has_attn = arch["attention_levels"][L - 1 - u]
        for j in range(R + 1):
            src = f"output_blocks.{u * (R + 1) + j}"
            _resnet(sd, f"{src}.0", f"up_blocks.{u}.resnets.{j}", out)
            if has_attn:
                _attention(sd, f"{src}.1", f"up_blocks.{u}.attentions.{j}", out, hd, new)
            if j == R and u < L - 1:
                _resample(sd, f"{src}.{2 if has_attn else 1}", f"up_blocks.{u}.upsamplers.0", out)
    return out


def convert_guided_checkpoint(src, out_dir, image_size: int = 256,
                              num_head_channels: int | None = 64, num_heads: int | None = None,
                              use_new_attention_order: bool = False,
                              num_train_timesteps: int = 1000, beta_schedule: str = "linear"):
    """Convert a guided-diffusion ``.pt`` (or state dict) to a diffusers backbone directory.

    Writes ``UNet2DModel.save_pretrained`` + ``DDPMScheduler`` config (``learned_range``
    variance when sigma is learned) + ``conversion.json`` (flags and the output-block tap table).
    Returns ``(out_dir, UNet2DModel)``.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    sd = src if isinstance(src, dict) else load_guided_state_dict(src)
    arch = infer_guided_architecture(sd, num_head_channels=num_head_channels,
                                     num_heads=num_heads,
                                     use_new_attention_order=use_new_attention_order)
    cfg = guided_to_diffusers_config(arch, image_size)
    unet = UNet2DModel(**cfg)
    new_sd = convert_guided_state_dict(sd, arch)
    missing, unexpected = unet.load_state_dict(new_sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"conversion incomplete: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]} (an architecture this converter does not know)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out, safe_serialization=True)
    DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                  variance_type="learned_range" if arch["learn_sigma"] else "fixed_small",
                  ).save_pretrained(out)
    n = len(arch["channel_mult"]) * (arch["num_res_blocks"] + 1)
    info = {"source": str(src) if not isinstance(src, dict) else "state_dict",
            "guided_architecture": arch,
            "output_block_taps": {str(i): guided_output_block_to_tap(i, unet.config)
                                  for i in range(n)},
            "note": "learned sigma: channels [:C] are eps, [C:] the variance interpolation"}
    (out / "conversion.json").write_text(json.dumps(info, indent=2))
    return out, unet
