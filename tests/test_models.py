"""models.py against published numbers (PyTorchVideo / PySlowFast model zoo, torchvision), a 2D
ResNet run frame by frame (inflation) and PySlowFast's key naming written out independently here."""
import json
import re

import pytest
import torch
from torch import nn


import torchvision  # noqa: E402

import checkpoint  # noqa: E402
import models  # noqa: E402

# Published figures.
SLOW_R50_PARAMS_WITH_HEAD = 32.45e6  # PyTorchVideo model zoo, Slow R50 8x8, Kinetics-400
SLOW_R50_PARAMS_NO_HEAD = 31.63e6
SLOW_R50_GFLOPS_8x256 = 54.52  # same table ("54.52 x 3 x 10"), multiply-adds of one view
TV_RESNET50_PARAMS = 25_557_032  # torchvision docs, with the 1000-way fc
TV_RESNET101_PARAMS = 44_549_160


def n_params(m):
    return sum(p.numel() for p in m.parameters())


class WithHead(nn.Module):
    """Encoder + temporal average + 400-way linear classifier, the published Kinetics model."""

    def __init__(self, encoder, num_classes=400):
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.feat_dim, num_classes)

    def forward(self, x):
        return self.fc(self.encoder(x).mean(2))


def temporal_extra(depths, temporal_blocks):
    """Extra weights of the 3x1x1 conv1 taps over a 2D ResNet (2 more taps each), by hand."""
    extra = 0
    for stage, (d, n) in enumerate(zip(depths, temporal_blocks)):
        planes = 64 * 2 ** stage
        for i in range(n):
            in_ch = (64 if stage == 0 else 2 * planes) if i == 0 else 4 * planes
            extra += 2 * in_ch * planes
    return extra


def test_slow_r50_params_match_published_figures():
    enc = models.build_encoder("slow_r50")
    assert enc.feat_dim == 2048
    assert round(n_params(enc) / 1e6, 2) == SLOW_R50_PARAMS_NO_HEAD / 1e6
    assert round(n_params(WithHead(enc)) / 1e6, 2) == SLOW_R50_PARAMS_WITH_HEAD / 1e6
    # And exactly: torchvision ResNet-50 without fc + the extra temporal taps of res4/res5.
    assert n_params(enc) == TV_RESNET50_PARAMS - (2048 * 1000 + 1000) + temporal_extra((3, 4, 6, 3), (0, 0, 6, 3))


def test_slow_r50_architecture_facts():
    enc = models.build_encoder("slow_r50")
    assert enc.block_temporal_kernels == [[1] * 3, [1] * 4, [3] * 6, [3] * 3]
    assert enc.conv1.kernel_size == (1, 7, 7) and enc.conv1.stride == (1, 2, 2)
    assert enc.maxpool.kernel_size == (1, 3, 3) and enc.maxpool.stride == (1, 2, 2)
    for m in enc.modules():
        if isinstance(m, nn.Conv3d):
            assert m.stride[0] == 1  # no temporal downsampling anywhere
        if isinstance(m, nn.BatchNorm3d):
            assert m.eps == 1e-5 and m.momentum == 0.1
    block = enc.layer2[0]  # spatial stride in the 3x3 conv (v1.5, STRIDE_1X1=False)
    assert block.conv1.stride == (1, 1, 1) and block.conv2.stride == (1, 2, 2)
    assert enc.layer3[5].conv1.kernel_size == (3, 1, 1) and enc.layer2[3].conv1.kernel_size == (1, 1, 1)


def test_slow_r50_gflops_match_published_figure():
    macs = models.count_flops(WithHead(models.build_encoder("slow_r50")), (1, 3, 8, 256, 256))
    assert abs(macs / 1e9 - SLOW_R50_GFLOPS_8x256) / SLOW_R50_GFLOPS_8x256 < 0.005


def test_count_flops_hand_computed():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=4),
                        nn.Flatten(), nn.Linear(8 * 5 * 5, 10))
    expected = 8 * 25 * 3 * 9 + 8 * 25 * 2 * 9 + 200 * 10
    assert models.count_flops(net, (1, 3, 5, 5)) == expected
    assert models.count_flops(net, (2, 3, 5, 5)) == 2 * expected
    # torchvision's published figure for ResNet-50 at 224x224: 4.09 GFLOPS (multiply-adds).
    assert round(models.count_flops(torchvision.models.resnet50(), (1, 3, 224, 224)) / 1e9, 2) == 4.09


def test_slow_r101_params():
    enc = models.build_encoder("slow_r101")
    # All 23 res4 blocks and all 3 res5 blocks are temporal (see the models.py docstring).
    assert enc.block_temporal_kernels[2] == [3] * 23 and enc.block_temporal_kernels[3] == [3] * 3
    expected = TV_RESNET101_PARAMS - (2048 * 1000 + 1000) + temporal_extra((3, 4, 23, 3), (0, 0, 23, 3))
    assert n_params(enc) == expected == 59_539_520
    # PySlowFast's default NUM_BLOCK_TEMP_KERNEL (6 in res4) is expressible too.
    six = models.SlowResNet((3, 4, 23, 3), temporal_blocks=(0, 0, 6, 3))
    assert six.block_temporal_kernels[2] == [3] * 6 + [1] * 17
    assert n_params(six) == expected - 17 * 2 * 1024 * 256


@pytest.mark.parametrize("name,feat_dim", [("slow_small", 1024), ("slow_tiny", 512)])
def test_small_variants_keep_time(name, feat_dim):
    enc = models.build_encoder(name).eval()
    assert enc.feat_dim == feat_dim
    for T in (1, 3, 8):
        out = enc(torch.randn(1, 3, T, 32, 32))
        assert out.shape == (1, feat_dim, T) and torch.isfinite(out).all()


def test_slow_r50_output_shape_and_time():
    enc = models.build_encoder("slow_r50").eval()
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 5, 32, 32))
    assert out.shape == (1, 2048, 5)


def test_temporal_receptive_field_is_local():
    """Changing only frame 0 changes slow_tiny's features of frames within its temporal reach (two
    3x1x1 convs: frames 0..2) and leaves frame 5 untouched, since nothing pools over time."""
    torch.manual_seed(0)
    enc = models.build_encoder("slow_tiny").eval()
    x = torch.randn(1, 3, 6, 32, 32)
    y = x.clone()
    y[:, :, 0] += 1.0
    with torch.no_grad():
        a, b = enc(x), enc(y)
    assert not torch.allclose(a[..., 2], b[..., 2])
    assert torch.equal(a[..., 3:], b[..., 3:])


def test_2d_configuration_and_width():
    """Temporal kernel 1 everywhere = a 2D ResNet per frame; width 128 = SwAV RN50-w2 widths."""
    w2 = models.SlowResNet((3, 4, 6, 3), width=128, temporal_kernels=(1, 1, 1, 1))
    assert w2.feat_dim == 4096 and w2.conv1.out_channels == 128
    assert all(m.kernel_size[0] == 1 for m in w2.modules() if isinstance(m, nn.Conv3d))
    assert round(n_params(w2) / 1e6) == 94  # ResNet-50 (2x) of SimCLR / SwAV: 94M parameters
    # All temporal kernels 1 at width 64 is exactly torchvision's ResNet-50 without its fc.
    assert n_params(models.SlowResNet(temporal_kernels=(1, 1, 1, 1))) == TV_RESNET50_PARAMS - 2048 * 1000 - 1000
    tiny2d = models.SlowResNet((1, 1, 1, 1), width=16, temporal_kernels=(1, 1, 1, 1)).eval()
    frames = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        per_frame = tiny2d(frames)  # 4D input: one frame each
        as_clip = tiny2d(frames.permute(1, 0, 2, 3).unsqueeze(0))  # (1, 3, T=3, H, W)
    assert per_frame.shape == (3, 512)
    torch.testing.assert_close(as_clip[0].T, per_frame, atol=1e-5, rtol=1e-5)


def _random_bn_stats(model, seed=0):
    """Non-trivial BN statistics and affine params, so eval-mode equality is a real check."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_center_inflation_reproduces_2d_resnet50_on_static_clip():
    torch.manual_seed(0)
    tv = torchvision.models.resnet50()
    _random_bn_stats(tv)
    sd2d = tv.state_dict()  # includes fc.*, which inflation must ignore
    tv.fc = nn.Identity()
    # float64 so that the check is about the maths, not about conv2d vs conv3d rounding order
    # (in float32 the two differ by ~1e-4 relative after 50 layers).
    tv.eval().double()
    enc = models.build_encoder("slow_r50")
    enc.load_state_dict(models.inflate_2d_state_dict(sd2d, enc, mode="center"))
    enc.eval().double()
    image = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    clip = image.unsqueeze(2).repeat(1, 1, 4, 1, 1)
    with torch.no_grad():
        feats2d = tv(image)  # (1, 2048)
        feats3d = enc(clip)  # (1, 2048, 4)
    for t in range(4):
        torch.testing.assert_close(feats3d[..., t], feats2d, atol=1e-5, rtol=1e-6)


def test_mean_inflation_matches_2d_away_from_clip_ends():
    """Mean inflation (PySlowFast's, the default) reproduces the 2D network on a static clip away from
    the temporal borders only: with zero temporal padding it loses a tap at the first / last frame.
    Centre inflation (--inflation center) reproduces it on every frame."""
    torch.manual_seed(0)
    net2d = models.SlowResNet((1, 1, 1, 1), width=16, temporal_kernels=(1, 1, 1, 1))
    _random_bn_stats(net2d)
    sd2d = {k: (v[:, :, 0] if v.dim() == 5 else v) for k, v in net2d.state_dict().items()}
    image = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    clip = image.unsqueeze(2).repeat(1, 1, 5, 1, 1)
    with torch.no_grad():
        feats2d = net2d.eval().double()(image)
        feats = {}
        for mode in ("center", "mean", None):
            enc = models.build_encoder("slow_tiny")
            kwargs = {} if mode is None else dict(mode=mode)
            enc.load_state_dict(models.inflate_2d_state_dict(sd2d, enc, **kwargs))
            feats[mode] = enc.eval().double()(clip)
    assert torch.equal(feats[None], feats["mean"])  # the default
    for t in range(5):
        torch.testing.assert_close(feats["center"][..., t], feats2d, atol=1e-8, rtol=1e-8)
    # slow_tiny has two 3x1x1 convs, so frames 0-1 and 3-4 feel the padding and frame 2 does not.
    torch.testing.assert_close(feats["mean"][..., 2], feats2d, atol=1e-6, rtol=1e-5)  # w/3 rounding
    assert (feats["mean"][..., 0] - feats2d).abs().max() > 1e-3


def test_inflation_values_and_errors():
    enc = models.build_encoder("slow_tiny")
    sd2d = {k: (v.mean(2) if v.dim() == 5 else v) for k, v in enc.state_dict().items()}
    center = models.inflate_2d_state_dict(sd2d, enc, mode="center")
    mean = models.inflate_2d_state_dict(sd2d, enc)
    w = sd2d["layer3.0.conv1.weight"]
    assert center["layer3.0.conv1.weight"].shape == (64, 128, 3, 1, 1)
    assert torch.equal(center["layer3.0.conv1.weight"][:, :, 1], w)
    assert torch.equal(center["layer3.0.conv1.weight"][:, :, 0], torch.zeros_like(w))
    # PySlowFast utils/checkpoint.py inflate_weight: v2d.unsqueeze(2).repeat(1, 1, k, 1, 1) / k
    for t in range(3):
        torch.testing.assert_close(mean["layer3.0.conv1.weight"][:, :, t], w / 3)
    assert torch.equal(center["conv1.weight"][:, :, 0], sd2d["conv1.weight"])
    assert torch.equal(mean["conv1.weight"][:, :, 0], sd2d["conv1.weight"])  # 1 tap: both the same
    assert torch.equal(mean["layer3.0.bn1.running_var"], sd2d["layer3.0.bn1.running_var"])
    # by hand: the 2D kernel [[1, 2], [3, 4]] over 2 taps -> [[0.5, 1], [1.5, 2]] on each tap
    net = nn.Sequential()
    net.add_module("conv", nn.Conv3d(1, 1, (2, 2, 2), bias=False))
    kernel = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    half = torch.tensor([[0.5, 1.0], [1.5, 2.0]])
    assert torch.equal(models.inflate_2d_state_dict({"conv.weight": kernel}, net)["conv.weight"][0, 0],
                       torch.stack([half, half]))
    with pytest.raises(ValueError, match="--inflation"):
        models.inflate_2d_state_dict(sd2d, enc, mode="centre")
    bad = dict(sd2d)
    del bad["layer2.0.bn2.weight"]
    with pytest.raises(ValueError, match="layer2.0.bn2.weight"):
        models.inflate_2d_state_dict(bad, enc)
    with pytest.raises(ValueError, match="shape"):
        models.inflate_2d_state_dict(torchvision.models.resnet50().state_dict(), enc)


# PySlowFast names, written from resnet_helper.py / stem_helper.py / video_model_builder.py:
# stem s1.pathway0_stem.{conv,bn}; blocks s{2..5}.pathway0_res{i}.{branch1, branch1_bn,
# branch2.{a,a_bn,b,b_bn,c,c_bn}}.
_OURS_TO_PSF = {"conv1": "branch2.a", "bn1": "branch2.a_bn", "conv2": "branch2.b", "bn2": "branch2.b_bn",
                "conv3": "branch2.c", "bn3": "branch2.c_bn", "downsample.0": "branch1",
                "downsample.1": "branch1_bn"}


def to_pyslowfast_name(key):
    m = re.match(r"^(conv1|bn1)\.(\w+)$", key)
    if m:
        return f"s1.pathway0_stem.{'conv' if m.group(1) == 'conv1' else 'bn'}.{m.group(2)}"
    m = re.match(r"^layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.\d)\.(\w+)$", key)
    layer, block, part, leaf = m.groups()
    return f"s{int(layer) + 1}.pathway0_res{block}.{_OURS_TO_PSF[part]}.{leaf}"


def test_pyslowfast_names_by_hand():
    sd = {"s4.pathway0_res0.branch1_bn.running_var": torch.ones(1),
          "s4.pathway0_res0.branch1.weight": torch.ones(1) * 2,
          "s5.pathway0_res2.branch2.c_bn.bias": torch.ones(1) * 3,
          "s2.pathway0_res1.branch2.a.weight": torch.ones(1) * 4,
          "s1.pathway0_stem.bn.num_batches_tracked": torch.tensor(5),
          "head.projection.weight": torch.ones(1)}
    out = models.load_pyslowfast_state_dict({"model_state": sd})
    assert out == {"layer3.0.downsample.1.running_var": sd["s4.pathway0_res0.branch1_bn.running_var"],
                   "layer3.0.downsample.0.weight": sd["s4.pathway0_res0.branch1.weight"],
                   "layer4.2.bn3.bias": sd["s5.pathway0_res2.branch2.c_bn.bias"],
                   "layer1.1.conv1.weight": sd["s2.pathway0_res1.branch2.a.weight"],
                   "bn1.num_batches_tracked": sd["s1.pathway0_stem.bn.num_batches_tracked"]}


@pytest.mark.parametrize("prefix", ["", "backbone.", "module.backbone."])
def test_pyslowfast_checkpoint_loads_into_the_right_tensors(prefix, tmp_path):
    torch.manual_seed(0)
    source = models.build_encoder("slow_small")
    for v in source.state_dict().values():  # distinct values everywhere, BN buffers included
        if v.is_floating_point():
            v.copy_(torch.randn_like(v))
    psf = {prefix + to_pyslowfast_name(k): v.clone() for k, v in source.state_dict().items()}
    psf["head.projection.weight"] = torch.randn(400, 1024)
    if prefix:  # an SSL checkpoint also holds the momentum encoder and MLP heads
        psf[prefix.replace("backbone.", "backbone_hist.") + "s1.pathway0_stem.conv.weight"] = torch.randn(1)
        psf[prefix.replace("backbone.", "") + "head.projection.0.weight"] = torch.randn(1)
    path = tmp_path / "psf.pyth"
    torch.save({"model_state": psf, "cur_epoch": 200}, path)
    target = models.build_encoder("slow_small")
    models.load_encoder_weights(target, str(path))  # raises unless every tensor has its place
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_load_encoder_weights_formats_and_errors(tmp_path):
    source = models.build_encoder("slow_tiny")
    # iboot checkpoint
    path = tmp_path / "ckpt.pth"
    torch.save({"encoder": source.state_dict(), "heads": {}, "epoch": 3}, path)
    target = models.build_encoder("slow_tiny")
    models.load_encoder_weights(target, str(path))
    assert torch.equal(target.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    # raw state dict (object, not a path)
    target = models.build_encoder("slow_tiny")
    models.load_encoder_weights(target, source.state_dict())
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    # torchvision-layout 2D ResNet -> inflated (mean, PySlowFast's, by default; centre on request)
    sd2d = {k: (v.mean(2) if v.dim() == 5 else v) for k, v in source.state_dict().items()}
    sd2d["fc.weight"], sd2d["fc.bias"] = torch.randn(10, 512), torch.randn(10)
    torch.save(sd2d, tmp_path / "r2d.pth")
    target = models.build_encoder("slow_tiny")
    models.load_encoder_weights(target, str(tmp_path / "r2d.pth"))
    torch.testing.assert_close(target.layer3[0].conv1.weight[:, :, 0], sd2d["layer3.0.conv1.weight"] / 3)
    models.load_encoder_weights(target, str(tmp_path / "r2d.pth"), inflate_mode="center")
    assert torch.equal(target.layer3[0].conv1.weight[:, :, 1], sd2d["layer3.0.conv1.weight"])
    # wrong architecture: shapes mismatch, the error names the file
    with pytest.raises(ValueError, match="ckpt.pth"):
        models.load_encoder_weights(models.build_encoder("slow_small"), str(path))
    # unknown format
    torch.save({"foo": torch.ones(1)}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="odd.pth.*unknown weights format"):
        models.load_encoder_weights(target, str(tmp_path / "odd.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        models.load_encoder_weights(target, str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="--arch"):
        models.build_encoder("slow_r18")


def test_count_flops_counts_vit_attention():
    """ViT-B/16 at 224: 12 blocks of 197 tokens x 768; the linear layers give 16.86 GMACs and the
    attention matmuls (q k^T and attn v: 2 x 197^2 x 768 per block) 0.72 GMACs more."""
    import timm
    vit = timm.create_model("vit_base_patch16_224", pretrained=False)
    tokens, dim, blocks = 197, 768, 12
    attention = blocks * 2 * tokens * tokens * dim
    linear = blocks * tokens * (4 * dim * dim + 2 * 4 * dim * dim) + 196 * 3 * 16 * 16 * dim + dim * 1000
    assert models.count_flops(vit, (1, 3, 224, 224)) == linear + attention
    assert round((linear + attention) / 1e9, 2) == 17.56


def test_load_pretrained_reads_the_architecture_from_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = models.build_encoder("slow_tiny")
    path = tmp_path / "checkpoint.pth"
    torch.save({"encoder": source.state_dict(), "encoder_name": "slow_tiny", "epoch": 2}, path)
    encoder = models.load_pretrained(str(path)).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    assert torch.equal(encoder(x), source.eval()(x))
    with pytest.raises(ValueError, match="--arch slow_r50: .* holds a slow_tiny encoder"):
        models.load_pretrained(str(path), arch="slow_r50")
    torch.save(source.state_dict(), tmp_path / "raw.pth")
    with pytest.raises(ValueError, match="does not record its architecture: pass --arch"):
        models.load_pretrained(str(tmp_path / "raw.pth"))
    assert models.load_pretrained(str(tmp_path / "raw.pth"), arch="slow_tiny").conv1.weight.equal(source.conv1.weight)


def test_export_loads_back_through_the_pyslowfast_import(tmp_path):
    """export.py writes the encoder as a plain state dict, as safetensors and under PySlowFast's names;
    all three load back with every tensor in place and give the same features, and the safetensors file
    names its architecture and the source's pretraining without any pickle."""
    import export
    from helpers import run_script
    torch.manual_seed(0)
    source = models.build_encoder("slow_small")
    for v in source.state_dict().values():  # BN statistics too, so that every tensor is checked
        if v.is_floating_point():
            v.copy_(torch.randn_like(v).abs() + 0.1)
    ckpt = {"encoder": source.state_dict(), "encoder_name": "slow_small", "epoch": 7,
            "args": {"method": "iboot", "teacher": "dino_vit_s16", "dataset": "kinetics", "epochs": 100}}
    torch.save(ckpt, tmp_path / "ckpt.pth")
    plain, psf = run_script(export, ["--pretrained", str(tmp_path / "ckpt.pth"), "--output_dir", str(tmp_path / "out")])
    safe = str(tmp_path / "out" / "encoder.safetensors")
    saved = torch.load(psf, weights_only=True)
    assert saved["epoch"] == 7 and "s1.pathway0_stem.conv.weight" in saved["model_state"]
    assert "s5.pathway0_res1.branch2.c_bn.running_var" in saved["model_state"]
    with open(safe, "rb") as f:  # safetensors: an 8-byte little-endian header length, then a JSON header
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert json.loads(header["__metadata__"]["iboot"])["entries"]["encoder_name"] == "slow_small"
    x = torch.randn(2, 3, 4, 32, 32)
    reference = source.eval()(x)
    for path in (plain, psf, safe):
        encoder = models.build_encoder("slow_small")
        models.load_encoder_weights(encoder, path)  # raises on any missing or unexpected key
        assert torch.equal(encoder.eval()(x), reference)
    assert torch.equal(models.load_pretrained(safe).eval()(x), reference)  # no --arch needed
    assert models.pretraining_record(checkpoint.load(safe)) == models.pretraining_record(ckpt) == dict(
        method="iboot", teacher="dino_vit_s16", pretrain_data="kinetics", pretrain_epochs=7)
