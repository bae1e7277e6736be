"""Online video encoders: the Slow pathway 3D ResNet of SlowFast (PySlowFast's Slow 8x8), its
initialisation from 2D ImageNet weights, and import of PySlowFast checkpoints.

- `SlowResNet(depths, width, temporal_kernels, temporal_blocks)`: 3D ResNet with bottleneck blocks.
  forward (N, 3, T, H, W) -> per-frame features (N, feat_dim, T): global spatial average pool only,
  no temporal pooling and no temporal stride anywhere, so T out == T in. A 4D input (N, 3, H, W) is
  taken as one frame and gives (N, feat_dim); with every temporal kernel 1 the network is a 2D
  ResNet applied frame by frame (e.g. SwAV's ResNet-50-w2: `SlowResNet((3, 4, 6, 3), width=128,
  temporal_kernels=(1, 1, 1, 1))`, feat_dim 4096).
- `build_encoder(name)` for the names in `ENCODERS`:
    slow_r50    PySlowFast SLOW_8x8_R50. 31.63M params (32.45M with a 400-way linear head, the
                published figure), 54.52 GMACs ("GFLOPs" as published: conv + linear multiply-adds)
                for one 8x256x256 clip with the head (measured: 31,634,496 / 32,454,096 params,
                54.518 GMACs). feat_dim 2048.
    slow_r101   depths (3, 4, 23, 3), temporal kernel 3 in conv1 (PySlowFast's branch2.a) of ALL
                23 res4 blocks and all 3 res5 blocks, as in the SlowFast paper's design (non-degenerate
                temporal convolutions in res4 and res5) and PySlowFast's R101 configs that set
                NUM_BLOCK_TEMP_KERNEL to the full depth (configs/Kinetics/c2/
                SLOWFAST_8x8_R101_101_101.yaml: [[3,3],[4,4],[23,23],[3,3]]). Caveat, checked in
                PySlowFast: `_TEMPORAL_KERNEL_BASIS["slow"]` is cut by RESNET.NUM_BLOCK_TEMP_KERNEL,
                whose DEFAULT is [[3],[4],[6],[3]]; an R101 config that keeps the default (e.g.
                configs/Kinetics/SLOWFAST_32x2_R101.yaml) makes only res4 blocks 0-5 temporal. Such
                checkpoints need `SlowResNet((3, 4, 23, 3), temporal_blocks=(0, 0, 6, 3))`.
                59.54M params (60.36M with a 400-way head; 50.63M for the 6-block variant),
                111.56 GMACs at 8x256x256 with the head. feat_dim 2048. No published Slow-only
                R101 parameter count was found (PyTorchVideo / PySlowFast model zoos list R101
                only for SlowFast); the test checks it against torchvision's published ResNet-101
                count plus the hand-computed extra temporal taps.
    slow_small  CPU variant: depths (2, 2, 2, 2), base width 32, Slow temporal kernels.
                4.48M params, 1.63 GMACs at 8x112x112. feat_dim 1024.
    slow_tiny   CPU variant for smoke runs: depths (1, 1, 1, 1), base width 16.
                0.59M params, 0.29 GMACs at 8x112x112. feat_dim 512.
- State dict keys follow torchvision's 2D ResNet (conv1, bn1, layer1.0.conv1 ... layer4.2.bn3,
  layer1.0.downsample.0/1), so 2D weights inflate by name.
- `inflate_2d_state_dict(sd2d, model, mode="mean"|"center")`: 2D ResNet -> 3D (paper Table 9); mean
  (default) is PySlowFast's utils/checkpoint.py inflate_weight. The --inflation flag: `add_inflation_arg`.
- `load_pyslowfast_state_dict(sd)`: PySlowFast names (s1.pathway0_stem.conv, s2.pathway0_res0.
  branch2.a ...) -> ours; accepts full checkpoints ("model_state"), SSL ("backbone.") and DDP
  ("module.") prefixes.
- `pyslowfast_state_dict(sd)`: ours -> PySlowFast names (the export; the inverse of the import).
- `load_encoder_weights(model, path_or_checkpoint, fmt="auto")`: iboot / PySlowFast / torchvision 2D /
  raw encoder weights into a built encoder. Files are read by checkpoint.load: tensors, numbers,
  strings, lists and dicts only (or safetensors), unless `trust` (--trust_checkpoint).
- `load_pretrained(path_or_checkpoint, arch=None)`: the encoder of a pretrain.py checkpoint or of
  export.py's encoder.safetensors, built with the architecture recorded in it (or of a PySlowFast /
  torchvision / raw file, given `arch`).
- `load_backbone(pretrained, arch, fmt, inflation)`: an evaluation's encoder ("scratch" or a weights file)
  and the record fields the file implies (arch, method, teacher, pretraining data and epochs);
  `load_weights_file(...)` the same for a weights file only (export.py).
- `count_flops(model, input_shape)`: multiply-adds (torch's FlopCounterMode, run on meta tensors so even
  slow_r50 at 8x256x256 costs no compute).
"""
import copy
import os
import re

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import checkpoint
import records

# PySlowFast BN settings (eps 1e-5, momentum 0.1 in PyTorch's convention): also PyTorch's defaults.
BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def _bn(channels):
    return nn.BatchNorm3d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class Bottleneck(nn.Module):
    """kt x 1 x 1 -> 1 x 3 x 3 (spatial stride here: ResNet v1.5, PySlowFast STRIDE_1X1=False) ->
    1 x 1 x 1, expansion 4. Temporal stride is always 1 and temporal padding kt // 2 keeps T."""
    expansion = 4

    def __init__(self, in_channels, planes, stride=1, temporal_kernel=1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv3d(in_channels, planes, (temporal_kernel, 1, 1),
                               padding=(temporal_kernel // 2, 0, 0), bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv3d(planes, planes, (1, 3, 3), stride=(1, stride, stride),
                               padding=(0, 1, 1), bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv3d(planes, out_channels, 1, bias=False)
        self.bn3 = _bn(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=(1, stride, stride), bias=False),
                _bn(out_channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class SlowResNet(nn.Module):
    """Slow pathway 3D ResNet (bottleneck blocks, no temporal downsampling).

    depths: blocks per stage (res2..res5 = layer1..layer4).
    width: channels of the stem; every channel count scales with it (64 = ResNet-50, 128 = SwAV's
        ResNet-50-w2, whose stem, bottleneck and output widths are all doubled). feat_dim = 32 * width.
    temporal_kernels: temporal kernel of conv1 (the first 1x1 conv, PySlowFast's branch2.a) per stage;
        (1, 1, 3, 3) is PySlowFast's "slow" basis, (1, 1, 1, 1) a per-frame 2D ResNet.
    temporal_blocks: per stage, how many leading blocks use the stage's temporal kernel (the rest get
        1), PySlowFast's RESNET.NUM_BLOCK_TEMP_KERNEL; None = every block.
    stem_temporal_kernel: temporal kernel of the 7x7 stem conv (1 for Slow).
    zero_init_residual: zero the last BN gamma of each block (PySlowFast RESNET.ZERO_INIT_FINAL_BN).
    """

    def __init__(self, depths=(3, 4, 6, 3), width=64, temporal_kernels=(1, 1, 3, 3),
                 temporal_blocks=None, stem_temporal_kernel=1, zero_init_residual=False):
        super().__init__()
        depths, temporal_kernels = tuple(depths), tuple(temporal_kernels)
        if len(depths) != 4 or len(temporal_kernels) != 4:
            raise ValueError(f"depths {depths} and temporal_kernels {temporal_kernels} need 4 stages")
        if any(k < 1 or k % 2 == 0 for k in temporal_kernels + (stem_temporal_kernel,)):
            raise ValueError("temporal kernels must be odd (padding k // 2 keeps T out == T in)")
        if temporal_blocks is None:
            temporal_blocks = depths
        temporal_blocks = tuple(temporal_blocks)
        if len(temporal_blocks) != 4 or any(not 0 <= n <= d for n, d in zip(temporal_blocks, depths)):
            raise ValueError(f"temporal_blocks {temporal_blocks} must be 4 counts within depths {depths}")
        self.depths, self.width = depths, width
        # Per block temporal kernel of conv1, e.g. [[1,1,1], [1]*4, [3]*6, [3]*3] for slow_r50.
        self.block_temporal_kernels = [[k if i < n else 1 for i in range(d)]
                                       for d, k, n in zip(depths, temporal_kernels, temporal_blocks)]

        self.conv1 = nn.Conv3d(3, width, (stem_temporal_kernel, 7, 7), stride=(1, 2, 2),
                               padding=(stem_temporal_kernel // 2, 3, 3), bias=False)
        self.bn1 = _bn(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        in_channels = width
        for stage, kernels in enumerate(self.block_temporal_kernels):
            planes = width * 2 ** stage
            blocks = []
            for i, kt in enumerate(kernels):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(Bottleneck(in_channels, planes, stride, kt))
                in_channels = planes * Bottleneck.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.feat_dim = in_channels
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual):
        # PySlowFast init_weights: MSRA (kaiming normal, fan_out) convs, BN gamma 1 and beta 0.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def feature_map(self, x):
        """The last stage's output before any pooling: (N, 3, T, H, W) -> (N, C, T, H/32, W/32)."""
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"SlowResNet expects (N, 3, T, H, W) or (N, 3, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x):
        single_frame = x.dim() == 4
        if single_frame:
            x = x.unsqueeze(2)
        x = self.feature_map(x).mean(dim=(3, 4))  # (N, C, T): spatial average only, frames stay separate
        return x[:, :, 0] if single_frame else x


ENCODERS = {
    "slow_r50": dict(depths=(3, 4, 6, 3), width=64, temporal_kernels=(1, 1, 3, 3)),
    "slow_r101": dict(depths=(3, 4, 23, 3), width=64, temporal_kernels=(1, 1, 3, 3)),
    "slow_small": dict(depths=(2, 2, 2, 2), width=32, temporal_kernels=(1, 1, 3, 3)),
    "slow_tiny": dict(depths=(1, 1, 1, 1), width=16, temporal_kernels=(1, 1, 3, 3)),
}


def build_encoder(name):
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder --arch {name!r}; choose from {sorted(ENCODERS)}")
    return SlowResNet(**ENCODERS[name])


# ----------------------------------------------------------------------------------------------
# Weight import
# ----------------------------------------------------------------------------------------------

def _check_and_complete(sd, model, source):
    """Raise a clear error on missing / unexpected / wrongly shaped keys. BN `num_batches_tracked`
    counters are filled from the model when a checkpoint lacks them (older PyTorch / PySlowFast)."""
    target = model.state_dict()
    sd = dict(sd)
    for k, v in target.items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v.clone()
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match the encoder ({len(missing)} missing, e.g. "
                         f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}); "
                         f"was it saved for another --arch?")
    wrong = [(k, tuple(sd[k].shape), tuple(target[k].shape)) for k in target
             if tuple(sd[k].shape) != tuple(target[k].shape)]
    if wrong:
        k, got, want = wrong[0]
        raise ValueError(f"{source}: {len(wrong)} tensors have the wrong shape, e.g. {k} is {got} but "
                         f"the encoder expects {want}; was it saved for another --arch (depth, width, "
                         f"temporal kernels)?")
    return sd


INFLATIONS = ("mean", "center")


def add_inflation_arg(parser, weights_flag):
    """The --inflation flag of every script that can start from a 2D file given by `weights_flag`."""
    parser.add_argument("--inflation", default="mean", choices=INFLATIONS,
                        help=f"how a 2D {weights_flag} file is inflated: mean = the 2D kernel repeated over the k "
                             "temporal taps / k (PySlowFast utils/checkpoint.py inflate_weight, I3D); center = on "
                             "the centre tap only")


def inflate_2d_state_dict(sd2d, model, mode="mean", ignore_prefixes=("fc.",)):
    """Inflate a torchvision-layout 2D ResNet state dict into `model`'s 3D shapes (paper Table 9).

    mode="mean" (default): I3D-style, the 2D kernel replicated over the k taps and divided by k, as
        PySlowFast's utils/checkpoint.py inflate_weight (`v2d.unsqueeze(2).repeat(1, 1, k, 1, 1) / k`),
        which the paper's code base uses. A static clip then matches the 2D network only away from
        the clip ends: with zero temporal padding the first and last frames see k-1 of the k taps,
        so their response shrinks to (k-1)/k, and the error spreads one frame inwards per temporal
        conv (9 of them in slow_r50).
    mode="center": the 2D kernel goes in the centre temporal tap, zeros elsewhere. Then a static clip
        gives exactly the 2D network's features for EVERY frame.
    Keys under `ignore_prefixes` (the classifier by default) are dropped, and a "module." prefix is
    removed. Returns a state dict ready for `model.load_state_dict`.
    """
    if mode not in INFLATIONS:
        raise ValueError(f"--inflation must be one of {', '.join(INFLATIONS)}, got {mode!r}")
    sd2d = checkpoint.strip_prefix(dict(sd2d), "module.")
    sd2d = {k: v for k, v in sd2d.items() if not k.startswith(tuple(ignore_prefixes))}
    target = model.state_dict()
    out = {}
    for k, v in sd2d.items():
        want = target.get(k)
        if want is not None and v.dim() == 4 and want.dim() == 5:
            o, i, kt, kh, kw = want.shape
            if tuple(v.shape) != (o, i, kh, kw):
                raise ValueError(f"2D weight {k} has shape {tuple(v.shape)}, cannot inflate to "
                                 f"{tuple(want.shape)}")
            v = v.to(want.dtype)
            if mode == "center":
                w = torch.zeros(o, i, kt, kh, kw, dtype=v.dtype)
                w[:, :, kt // 2] = v
            else:
                w = v.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt
            out[k] = w
        else:
            out[k] = v
    return _check_and_complete(out, model, "2D ResNet state dict")


_PYSLOWFAST_STEM = re.compile(r"^s1\.pathway0_stem\.(conv|bn)\.(.+)$")
_PYSLOWFAST_BLOCK = re.compile(r"^s([2-5])\.pathway0_res(\d+)\.(branch1_bn|branch1|branch2\.[abc]_bn|"
                               r"branch2\.[abc])\.(.+)$")
_PYSLOWFAST_PART = {"branch1": "downsample.0", "branch1_bn": "downsample.1",
                    "branch2.a": "conv1", "branch2.a_bn": "bn1", "branch2.b": "conv2",
                    "branch2.b_bn": "bn2", "branch2.c": "conv3", "branch2.c_bn": "bn3"}


def _unwrap_pyslowfast(sd):
    if isinstance(sd, dict) and "model_state" in sd:
        sd = sd["model_state"]
    sd = checkpoint.strip_prefix(dict(sd), "module.")
    if any(k.startswith("backbone.") for k in sd):
        # SSL ContrastiveModel: the online encoder lives under "backbone."; the momentum encoder
        # ("backbone_hist.") and the projection / prediction MLPs are not part of the encoder.
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd


def load_pyslowfast_state_dict(sd):
    """PySlowFast (single pathway: Slow / C2D / I3D ResNet) names -> ours.

    s1.pathway0_stem.conv / .bn            -> conv1 / bn1
    s{k}.pathway0_res{i}.branch1 / _bn     -> layer{k-1}.{i}.downsample.0 / .1
    s{k}.pathway0_res{i}.branch2.a/b/c     -> layer{k-1}.{i}.conv1/2/3, .a_bn/.b_bn/.c_bn -> bn1/2/3
    The classifier head ("head.projection.*") and other non-backbone entries are dropped. Keys that
    look like backbone weights but have no counterpart (e.g. non-local blocks) raise ValueError.
    """
    sd = _unwrap_pyslowfast(sd)
    out = {}
    for k, v in sd.items():
        m = _PYSLOWFAST_STEM.match(k)
        if m:
            out[("conv1." if m.group(1) == "conv" else "bn1.") + m.group(2)] = v
            continue
        m = _PYSLOWFAST_BLOCK.match(k)
        if m:
            stage, block, part, leaf = m.groups()
            out[f"layer{int(stage) - 1}.{block}.{_PYSLOWFAST_PART[part]}.{leaf}"] = v
            continue
        if re.match(r"^s\d", k):
            raise ValueError(f"PySlowFast key {k!r} has no counterpart in SlowResNet (only the "
                             f"single-pathway ResNet without non-local blocks is supported)")
        # head.*, pathway0_pool (no parameters), anything else outside the backbone: dropped.
    return out


_OURS_STEM = re.compile(r"^(conv1|bn1)\.(.+)$")
_OURS_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(downsample\.[01]|conv[123]|bn[123])\.(.+)$")
_OURS_PART = {ours: theirs for theirs, ours in _PYSLOWFAST_PART.items()}


def pyslowfast_state_dict(sd):
    """Ours -> PySlowFast names (s1.pathway0_stem.conv, s2.pathway0_res0.branch2.a, ...): the inverse
    of load_pyslowfast_state_dict, for exporting an encoder to PySlowFast."""
    out = {}
    for k, v in sd.items():
        m = _OURS_STEM.match(k)
        if m:
            out[f"s1.pathway0_stem.{'conv' if m.group(1) == 'conv1' else 'bn'}.{m.group(2)}"] = v
            continue
        m = _OURS_BLOCK.match(k)
        if not m:
            raise ValueError(f"encoder key {k!r} has no PySlowFast name")
        layer, block, part, leaf = m.groups()
        out[f"s{int(layer) + 1}.pathway0_res{block}.{_OURS_PART[part]}.{leaf}"] = v
    return out


def load_encoder_weights(model, path_or_checkpoint, fmt="auto", inflate_mode="mean", trust=False, flag=None):
    """Load encoder weights into `model` (in place). fmt: "auto", "iboot" (a pretrain.py checkpoint,
    weights under "encoder"), "pyslowfast", "torchvision" (2D ResNet, inflated) or "raw" (our own
    state dict). Anything but an exact match of every tensor raises a ValueError naming the source.
    A path is read by checkpoint.load(path, trust=trust, flag=flag) (flag: the flag that named it)."""
    if fmt not in checkpoint.FORMATS:
        raise ValueError(f"unknown weights format {fmt!r}; choose from {checkpoint.FORMATS}")
    if isinstance(path_or_checkpoint, (str, os.PathLike)):
        source = str(path_or_checkpoint)
        obj = checkpoint.load(source, trust=trust, flag=flag)  # FileNotFoundError / ValueError naming the file
    else:
        source, obj = "state dict", path_or_checkpoint
    if fmt == "auto":
        fmt = checkpoint.detect_format(obj, source)
    if fmt == "iboot":
        if not isinstance(obj, dict) or "encoder" not in obj:
            raise ValueError(f"{source}: not an iboot checkpoint (no 'encoder' key)")
        sd = checkpoint.strip_prefix(dict(obj["encoder"]), "module.")
    elif fmt == "pyslowfast":
        sd = load_pyslowfast_state_dict(obj)
        if not sd:
            raise ValueError(f"{source}: no PySlowFast backbone weights (s1.pathway0_stem...) found")
    else:
        sd = checkpoint.plain_state_dict(obj)
        if fmt == "torchvision":
            try:
                sd = inflate_2d_state_dict(sd, model, mode=inflate_mode)
            except ValueError as e:
                raise ValueError(f"{source}: {e}") from e
    model.load_state_dict(_check_and_complete(sd, model, source), strict=True)


def load_pretrained(path_or_checkpoint, arch=None, fmt="auto", inflate_mode="mean", trust=False):
    """The encoder in a weights file, ready to use:

        encoder = models.load_pretrained("runs/iboot_clip/checkpoint.pth")   # arch read from the file
        features = encoder(clips)                                            # (N, 2048, T)

    A pretrain.py checkpoint and export.py's encoder.safetensors record their architecture
    ("encoder_name"); an `arch` that disagrees with it is an error. PySlowFast, torchvision (inflated)
    and raw state dicts need `arch`. trust: see checkpoint.load."""
    obj = path_or_checkpoint
    source = str(obj) if isinstance(obj, (str, os.PathLike)) else "checkpoint"
    if isinstance(obj, (str, os.PathLike)):
        obj = checkpoint.load(source, trust=trust)
    recorded = obj.get("encoder_name") if isinstance(obj, dict) else None
    if recorded and arch and recorded != arch:
        raise ValueError(f"--arch {arch}: {source} holds a {recorded} encoder; drop --arch or pass --arch {recorded}")
    arch = recorded or arch
    if arch is None:
        raise ValueError(f"{source} does not record its architecture: pass --arch ({', '.join(ENCODERS)})")
    encoder = build_encoder(arch)
    load_encoder_weights(encoder, obj, fmt=fmt, inflate_mode=inflate_mode)
    return encoder


def pretraining_record(obj):
    """Record fields implied by a weights file: a pretrain.py checkpoint names its method, teacher and
    data in its "args" and its epochs in "epoch"; other files say nothing of their pretraining."""
    if isinstance(obj, dict) and "encoder" in obj:
        pre = obj.get("args") or {}
        method = pre.get("method", "iboot")
        return dict(method=method, teacher=pre.get("teacher") if method == "iboot" else "-",
                    pretrain_data=pre.get("dataset", "-"), pretrain_epochs=obj.get("epoch", pre.get("epochs", 0)))
    if isinstance(obj, dict) and "model_state" in obj:
        return dict(method="pyslowfast", teacher="-", pretrain_data="-", pretrain_epochs=obj.get("epoch", 0))
    return dict(method="init_from_file", teacher="-", pretrain_data="-", pretrain_epochs=0)


def load_backbone(pretrained, arch=None, fmt="auto", inflation="mean", trust=False):
    """(encoder, record fields) of an evaluation's --pretrained: "scratch" (a new `arch`, slow_r50 by
    default: the supervised rows of Tables 10-11) or a weights file (load_pretrained; trust:
    --trust_checkpoint). The fields: arch, method, teacher, pretrain_data, pretrain_epochs, as far as
    the file tells them."""
    if pretrained == "scratch":
        arch = arch or "slow_r50"
        return build_encoder(arch), dict(arch=arch, method="supervised", teacher="-", pretrain_data="-",
                                         pretrain_epochs=0)
    return load_weights_file(pretrained, arch, fmt, inflation, trust)


def load_weights_file(pretrained, arch=None, fmt="auto", inflation="mean", trust=False):
    """(encoder, record fields) of a weights file (load_backbone's, and export.py's input)."""
    if not os.path.isfile(pretrained):
        raise FileNotFoundError(f"--pretrained: no such file: {pretrained}")
    obj = checkpoint.load(pretrained, trust=trust, flag="--pretrained")
    encoder = load_pretrained(obj, arch=arch, fmt=fmt, inflate_mode=inflation)
    arch = (obj.get("encoder_name") if isinstance(obj, dict) else None) or arch
    records.print_main(f"loaded {pretrained} into {arch}: every tensor matched")
    return encoder, dict(pretraining_record(obj), arch=arch)


# ----------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------

def count_flops(model, input_shape):
    """Multiply-adds of one forward of a float input of `input_shape` (batch included): every matrix
    product and convolution, attention matmuls included, as torch's FlopCounterMode counts them (it
    reports FLOPs = 2 x multiply-adds). Biases, BN, activations and pooling are not counted: the
    convention of the published "GFLOPs" of SlowFast / PyTorchVideo. A copy of the model runs on the
    meta device, so nothing is computed."""
    meta = copy.deepcopy(model).to("meta").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.zeros(input_shape, device="meta"))
    return counter.get_total_flops() // 2
