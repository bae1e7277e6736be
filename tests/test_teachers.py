"""Tests for teachers.py: output sizes, normalisation, frozen-ness, EfficientNet-Lite0 weight conversion
(real photographs classified correctly), local weight files, offline errors, attention maps."""
import functools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import teachers

import skimage.data  # noqa: E402
import timm  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Published preprocessing constants, written out by hand (not read from the libraries).
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@functools.lru_cache(maxsize=None)
def random_teacher(name):
    """Random-init teachers, built once per session for the ones several tests use (keeps the file fast)."""
    torch.manual_seed(0)
    return teachers.build_teacher(name, weights="random")


@pytest.fixture(scope="module")
def dino_s16():
    return random_teacher("dino_vit_s16")


@pytest.fixture(scope="module")
def lite0():
    return teachers.build_teacher("efficientnet_lite0")  # the package's ImageNet weights, offline


def resize224(x):
    return F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Sizes, names, errors
# ----------------------------------------------------------------------------------------------

EXPECTED_DIMS = {"clip_vit_b16": 512, "dino_vit_s16": 384, "dino_vit_b16": 768, "deit_b16": 768,
                 "swav_r50w2": 4096, "efficientnet_lite0": 1280}


@pytest.mark.parametrize("name", list(EXPECTED_DIMS))
def test_output_dims(name):
    assert name in teachers.TEACHERS
    t = random_teacher(name) if name in ("clip_vit_b16", "swav_r50w2") else teachers.build_teacher(name, "random")
    # ViTs get a non-224 frame (resized inside); CNNs a small frame (any size works)
    frames = torch.rand(1, 3, 96, 128) if t.resize else torch.rand(2, 3, 64, 80)
    out = t(frames)
    assert t.dim == EXPECTED_DIMS[name] and t.name == name
    assert out.shape == (frames.shape[0], EXPECTED_DIMS[name])
    assert torch.isfinite(out).all() and not out.requires_grad
    assert tuple(t.image_size) == (224, 224)
    assert t.resize == (name not in ("swav_r50w2", "efficientnet_lite0"))


def test_parameter_counts():
    # EfficientNet-Lite0: 4.65M (tensorflow/tpu lite README: 4.7M; d-li14 count 4.652M);
    # SwAV RN50w2: 94M (SwAV README: 94M backbone parameters, fc excluded).
    lite = teachers.build_teacher("efficientnet_lite0", weights="random")
    assert sum(p.numel() for p in lite.parameters()) == 4_652_008
    swav = random_teacher("swav_r50w2")
    assert round(sum(p.numel() for p in swav.parameters()) / 1e6) == 94


def test_ensemble_and_generic_names():
    ts = teachers.build_teachers("dino_vit_s16+efficientnet_lite0", weights="random")
    assert [t.name for t in ts] == ["dino_vit_s16", "efficientnet_lite0"]
    assert [t.dim for t in ts] == [384, 1280]
    t = teachers.build_teacher("timm:resnet18", weights="random")
    assert t.dim == 512 and not t.resize and t(torch.rand(1, 3, 64, 64)).shape == (1, 512)
    with pytest.raises(ValueError, match="--teacher_weights"):
        teachers.build_teachers("dino_vit_s16+efficientnet_lite0", weights="a.pth+b.pth+c.pth")


def test_unknown_names_raise_value_error():
    with pytest.raises(ValueError) as e:
        teachers.build_teacher("resnet_imaginary")
    for valid in teachers.TEACHERS:
        assert valid in str(e.value)
    with pytest.raises(ValueError, match="open_clip:MODEL:TAG"):
        teachers.build_teacher("open_clip:ViT-B-16")
    with pytest.raises(ValueError, match="no_such_net"):
        teachers.build_teacher("timm:no_such_net", weights="random")


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError, match="--teacher_weights"):
        teachers.build_teacher("dino_vit_s16", weights="/nonexistent/dino.pth")


def _in_a_fresh_process(code, hf_home):
    """Run `code` where huggingface_hub reads HF_HOME and HF_HUB_OFFLINE=1 at import, as on a cluster node."""
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TORCH_HOME=str(hf_home / "torch"))
    return subprocess.run([sys.executable, "-c", "import teachers, torch\n" + code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_offline_uses_the_library_cache_first(tmp_path):
    """HF_HUB_OFFLINE=1 means "use the cache": weights already in the Hugging Face cache load, with no
    network and no --teacher_weights."""
    from safetensors.torch import save_file
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", num_classes=0)
    weights = {k: v.contiguous() for k, v in vit.state_dict().items()}
    snapshot = tmp_path / "hub" / "models--timm--vit_small_patch16_224.dino" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(weights, str(snapshot / "model.safetensors"))
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    torch.save(weights["pos_embed"], tmp_path / "expected.pt")
    out = _in_a_fresh_process(f"t = teachers.build_teacher('dino_vit_s16')\n"
                              f"assert torch.equal(t.model.pos_embed, torch.load('{tmp_path / 'expected.pt'}'))\n"
                              f"print('loaded from the cache')", tmp_path)
    assert out.returncode == 0 and "loaded from the cache" in out.stdout, out.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clip_vit_b16", "dino_vit_b16", "swav_r50w2"])
def test_weights_neither_cached_nor_downloadable_give_one_line(name, tmp_path):
    out = _in_a_fresh_process(f"import cli\ncli.run_cli(lambda a: teachers.build_teacher('{name}'), "
                              f"__import__('argparse').ArgumentParser())", tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert lines[-1].startswith(f"error: teacher '{name}': its public weights are neither in the local cache "
                                f"nor downloadable here") and "--teacher_weights" in lines[-1]
    assert "Traceback" not in out.stderr


def test_a_wrong_weights_file_is_named_with_what_did_not_match(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match=f"--teacher_weights {text}: not a PyTorch or safetensors checkpoint"):
        teachers.build_teacher("dino_vit_s16", weights=str(text))
    other = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), other)
    with pytest.raises(ValueError, match=rf"--teacher_weights {other}: .*'dino_vit_s16' \((RuntimeError|KeyError)"):
        teachers.build_teacher("dino_vit_s16", weights=str(other))
    with pytest.raises(ValueError, match=rf"--teacher_weights {other}: .*'swav_r50w2'"):
        teachers.build_teacher("swav_r50w2", weights=str(other))


# ----------------------------------------------------------------------------------------------
# Normalisation: each teacher's output equals a manual forward with the published constants
# ----------------------------------------------------------------------------------------------


def test_dino_resizes_and_uses_imagenet_normalisation(dino_s16):
    frames = torch.rand(2, 3, 100, 150)
    manual = dino_s16.model((resize224(frames) - IMAGENET_MEAN) / IMAGENET_STD)
    out = dino_s16(frames)
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5)
    # the check can fail: without normalisation the features differ
    assert not torch.allclose(out, dino_s16.model(resize224(frames)), atol=1e-3)


def test_clip_uses_clip_normalisation():
    t = random_teacher("clip_vit_b16")
    frames = torch.rand(1, 3, 224, 224)
    out = t(frames)
    torch.testing.assert_close(out, t.model((frames - CLIP_MEAN) / CLIP_STD), rtol=1e-5, atol=1e-5)


def test_lite0_uses_tf_lite_normalisation(lite0):
    # TF EfficientNet-Lite preprocessing: (pixel - 127) / 128 on 0..255 pixels
    frames = torch.rand(1, 3, 96, 96)
    x = (frames * 255 - 127) / 128
    m = lite0.model
    manual = m.forward_head(m.forward_features(x), pre_logits=True)
    torch.testing.assert_close(lite0(frames), manual, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# EfficientNet-Lite0 weight conversion, proven on real photographs
# ----------------------------------------------------------------------------------------------


def test_lite0_conversion_copies_every_tensor():
    src = torch.load(teachers.lite0_weights_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    out = teachers.convert_lite0_state_dict(src, model)
    assert len(out) == len(src) == len(model.state_dict())
    # spot checks by hand: block 0 has no expansion conv, block 1 (stage 1, index 0) has one
    assert torch.equal(out["conv_stem.weight"], src["_conv_stem.weight"])
    assert torch.equal(out["blocks.0.0.conv_pw.weight"], src["_blocks.0._project_conv.weight"])
    assert torch.equal(out["blocks.1.0.conv_pw.weight"], src["_blocks.1._expand_conv.weight"])
    assert torch.equal(out["blocks.1.0.conv_pwl.weight"], src["_blocks.1._project_conv.weight"])
    assert torch.equal(out["blocks.6.0.bn3.running_var"], src["_blocks.15._bn2.running_var"])
    assert torch.equal(out["classifier.weight"], src["_fc.weight"])
    bad = dict(src)
    bad["_fc.weight"] = bad["_fc.weight"][:10]
    with pytest.raises(ValueError, match="classifier.weight"):
        teachers.convert_lite0_state_dict(bad, model)


def photo(name):
    """skimage photo -> (1,3,224,224) in [0,1]: centre crop 224/256 of the short side (the TF
    EfficientNet eval crop), bicubic resize to 224."""
    img = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
    h, w = img.shape[-2:]
    c = int(round(min(h, w) * 224 / 256))
    top, left = (h - c) // 2, (w - c) // 2
    return resize224(img[..., top:top + c, left:left + c])


def top5(teacher, name):
    logits = teacher.model.classifier(teacher(photo(name)))  # teacher features are pre-classifier
    probs = logits.softmax(-1)[0]
    p, i = probs.topk(5)
    info = timm.data.ImageNetInfo()
    print(name, [(int(c), info.index_to_description(int(c)), round(float(v), 3)) for v, c in zip(p, i)])
    return [int(c) for c in i]


def test_lite0_classifies_real_photos(lite0):
    cat = top5(lite0, "chelsea")
    assert 281 <= cat[0] <= 285  # tabby / tiger cat / Persian / Siamese / Egyptian cat
    coffee = top5(lite0, "coffee")
    assert {967, 968, 504} & set(coffee)  # espresso, cup, coffee mug
    rocket = top5(lite0, "rocket")
    assert {657, 744, 812} & set(rocket)  # missile, projectile, space shuttle
    top5(lite0, "astronaut")  # printed for the record only: no single right ImageNet class


def test_lite0_features_feed_the_classifier(lite0):
    frames = photo("chelsea")
    full = lite0.model(lite0.preprocess(frames))  # timm's complete forward, classifier included
    torch.testing.assert_close(lite0.model.classifier(lite0(frames)), full, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Frozen: no gradients, eval mode under a training parent, weights bit-identical after training
# ----------------------------------------------------------------------------------------------


def test_teacher_stays_frozen_during_training(lite0):
    torch.manual_seed(0)
    parent = nn.Module()
    parent.teacher = lite0
    parent.head = nn.Linear(lite0.dim, 8)
    before = {k: v.clone() for k, v in lite0.state_dict().items()}
    head_before = parent.head.weight.detach().clone()
    parent.train()
    assert parent.head.training and not any(m.training for m in lite0.modules())
    assert all(not p.requires_grad for p in lite0.parameters())
    opt = torch.optim.SGD(parent.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        frames = torch.rand(4, 3, 64, 64)
        loss = (parent.head(parent.teacher(frames)) - 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(parent.head.weight, head_before)  # the trainable part did train
    after = lite0.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():  # bit-identical, BN running_mean / running_var / counters included
        assert torch.equal(v, after[k]), k
    assert any(k.endswith("running_var") for k in before)


# ----------------------------------------------------------------------------------------------
# Local weight files
# ----------------------------------------------------------------------------------------------


def test_timm_teacher_loads_local_file(dino_s16, tmp_path):
    path = tmp_path / "dino_s16.pth"
    torch.save(dino_s16.model.state_dict(), path)
    loaded = teachers.build_teacher("dino_vit_s16", weights=str(path))
    frames = torch.rand(1, 3, 224, 224)
    torch.testing.assert_close(loaded(frames), dino_s16(frames))


@pytest.mark.slow
def test_open_clip_teacher_loads_a_training_checkpoint(tmp_path):
    """open_clip_train/main.py saves {"epoch", "name", "state_dict", "optimizer", "scaler"}; open_clip's
    loader (weights_only=True) takes the state dict out of it. ViT-S-32: the smallest ViT of open_clip."""
    import compat
    torch.manual_seed(0)
    model = compat.import_open_clip().create_model("ViT-S-32")
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "name": "vit_s32_run", "state_dict": model.state_dict(), "optimizer": sgd.state_dict(),
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                           "_growth_tracker": 0}}, path)
    loaded = teachers.build_teacher("open_clip:ViT-S-32:", weights=str(path))
    frames = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        expected = model.encode_image((frames - CLIP_MEAN) / CLIP_STD)
    torch.testing.assert_close(loaded(frames), expected)


class RunsOnLoad:
    """Pickled as a call of func(*args) that whoever unpickles it makes: a crafted weights file."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("name", ["efficientnet_lite0", "dino_vit_s16"])
def test_a_crafted_teacher_weights_file_runs_nothing(name, tmp_path):
    """Teacher weights load as tensors only (this project's torch.load, timm's loader): the file's
    payload never runs, and the error names the flag and the file."""
    marker = tmp_path / "marker"
    path = tmp_path / "weights.pth"
    torch.save({"conv_stem.weight": torch.zeros(1), "x": RunsOnLoad(os.makedirs, str(marker))}, path)
    with pytest.raises(ValueError, match=f"--teacher_weights {path}: not usable weights for teacher '{name}'"):
        teachers.build_teacher(name, weights=str(path))
    assert not marker.exists()


def torchvision_resnet50_wide(width):
    """Independent 2D reference: torchvision's ResNet-50 code with stem width `width` and every other
    width scaled with it (width=128 is SwAV's resnet50w2)."""
    from torchvision.models.resnet import Bottleneck, ResNet
    net = ResNet(Bottleneck, [3, 4, 6, 3])
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(Bottleneck, width, 3)
    net.layer2 = net._make_layer(Bottleneck, width * 2, 4, stride=2)
    net.layer3 = net._make_layer(Bottleneck, width * 4, 6, stride=2)
    net.layer4 = net._make_layer(Bottleneck, width * 8, 3, stride=2)
    net.fc = nn.Identity()
    return net.eval()


def test_swav_widths_match_torchvision_layout():
    ref = torchvision_resnet50_wide(128).state_dict()
    ours = random_teacher("swav_r50w2").model.state_dict()
    assert ref.keys() == ours.keys()
    for k, v in ref.items():  # 2D (o, i, kh, kw) against our (o, i, 1, kh, kw): temporal kernel 1
        assert ours[k].shape == (v.shape[:2] + (1,) + v.shape[2:] if v.dim() == 4 else v.shape), k


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy_pickle"])
def test_swav_checkpoint_file_loads_like_2d_resnet(zip_format, tmp_path, monkeypatch):
    # Same loading code on an 8x narrower net (SwAV's file is 375 MB): the width is checked above. SwAV's
    # released files predate torch 1.6's zip format: a plain pickle, which the weights-only load reads too.
    narrow = 16
    monkeypatch.setattr(teachers, "_resnet50w2", lambda: teachers.models.SlowResNet(
        (3, 4, 6, 3), width=narrow, temporal_kernels=(1, 1, 1, 1)))
    torch.manual_seed(0)
    ref = torchvision_resnet50_wide(narrow)
    for m in ref.modules():  # non-trivial BN statistics so a mis-mapped tensor shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    # SwAV's released file: DDP "module." prefix plus projection head and prototypes to drop
    sd = {"module." + k: v for k, v in ref.state_dict().items()}
    sd["module.projection_head.0.weight"] = torch.zeros(8, narrow * 32)
    sd["module.prototypes.weight"] = torch.zeros(3000, 8)
    path = tmp_path / "swav_RN50w2_400ep_pretrain.pth.tar"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    t = teachers.build_teacher("swav_r50w2", weights=str(path))
    frames = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref((frames - IMAGENET_MEAN) / IMAGENET_STD)
    torch.testing.assert_close(t(frames), expected, rtol=1e-4, atol=1e-4)
    bad = tmp_path / "not_swav.pth"
    torch.save({"module.conv1.weight": torch.zeros(narrow, 3, 7, 7)}, bad)
    with pytest.raises(ValueError, match="--teacher_weights"):
        teachers.build_teacher("swav_r50w2", weights=str(bad))


# ----------------------------------------------------------------------------------------------
# Attention maps
# ----------------------------------------------------------------------------------------------


def capture_last_block_input(blocks, run):
    store = {}
    h = blocks[-1].register_forward_pre_hook(lambda m, a: store.__setitem__("x", a[0].detach().clone()))
    try:
        run()
    finally:
        h.remove()
    return store["x"]


def test_attention_maps_timm_vit(dino_s16):
    frames = torch.rand(2, 3, 224, 224)
    maps = teachers.attention_maps(dino_s16, frames)
    assert maps.shape == (2, 6, 14, 14)  # ViT-S/16: 6 heads, 224/16 = 14 patches a side
    sums = maps.sum(dim=(-2, -1))
    assert (maps >= 0).all() and (sums <= 1 + 1e-5).all() and (sums > 0.5).all()

    # independent: rebuild the token sequence by hand up to the last block, then softmax(q k^T / sqrt(d))
    m = dino_s16.model
    x = (frames - IMAGENET_MEAN) / IMAGENET_STD
    with torch.no_grad():
        tokens = m.patch_embed(x)
        tokens = torch.cat([m.cls_token.expand(2, -1, -1), tokens], dim=1) + m.pos_embed
        for blk in m.blocks[:-1]:
            tokens = blk(tokens)
        last = m.blocks[-1]
        y = last.norm1(tokens)
        qkv = y @ last.attn.qkv.weight.T + last.attn.qkv.bias  # (2, 197, 3*384)
        q, k = qkv[..., :384], qkv[..., 384:768]
        q = q.reshape(2, 197, 6, 64).transpose(1, 2)
        k = k.reshape(2, 197, 6, 64).transpose(1, 2)
        attn = torch.softmax(q @ k.transpose(-2, -1) / 8.0, dim=-1)  # sqrt(64) = 8
    expected = attn[:, :, 0, 1:].reshape(2, 6, 14, 14)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)


def test_attention_maps_open_clip_vit():
    t = random_teacher("clip_vit_b16")
    frames = torch.rand(1, 3, 224, 224)
    blocks = t.model.transformer.resblocks
    out = {}
    x = capture_last_block_input(blocks, lambda: out.__setitem__("maps", teachers.attention_maps(t, frames)))
    maps = out["maps"]
    assert maps.shape == (1, 12, 14, 14)
    # independent: nn.MultiheadAttention's own per-head weights on the same block input
    blk = blocks[-1]
    y = blk.ln_1(x)
    if not t.model.transformer.batch_first:
        y = y.transpose(0, 1)
    with torch.no_grad():
        _, w = blk.attn(y, y, y, need_weights=True, average_attn_weights=False)  # (N, heads, L, L)
    torch.testing.assert_close(maps, w[:, :, 0, 1:].reshape(1, 12, 14, 14), rtol=1e-4, atol=1e-6)


def test_attention_maps_rejects_cnn(lite0):
    with pytest.raises(ValueError, match="ViT"):
        teachers.attention_maps(lite0, torch.rand(1, 3, 64, 64))
