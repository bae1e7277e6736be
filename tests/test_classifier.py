"""classifier.py: multi-view testing by hand, the linear probe, PySlowFast's windowed test head, its
SGD and fine-tuning jitter, no flip for SSv2."""
import argparse
import math
import os

import pytest
import torch
import torch.nn as nn

import augment
import classifier
import data
import distributed
import finetune
import models
import protocols


def test_aggregate_views_averages_softmax():
    # One confident view for class 0 against two moderate ones for class 1: the mean of the softmaxes
    # picks class 1, the mean of the logits would pick class 0.
    logits = torch.tensor([[[10.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 2.0, 0.0]]])
    probs = classifier.aggregate_views(logits)
    e = math.exp
    soft_a = [e(10) / (e(10) + 2), 1 / (e(10) + 2), 1 / (e(10) + 2)]
    soft_b = [1 / (e(2) + 2), e(2) / (e(2) + 2), 1 / (e(2) + 2)]
    expected = [(soft_a[c] + 2 * soft_b[c]) / 3 for c in range(3)]
    assert probs[0].tolist() == pytest.approx(expected, rel=1e-5)
    assert probs.argmax(1).item() == 1 and logits.mean(1).argmax(1).item() == 0


class ViewCodeDataset(torch.utils.data.Dataset):
    """Video i has V views; every pixel of view v holds the code 10 * i + v (uint8)."""

    def __init__(self, num_videos, views, labels):
        self.num_videos, self.views, self.labels = num_videos, views, labels
        self.views_per_video = views

    def __len__(self):
        return self.num_videos

    def __getitem__(self, i):
        clips = torch.stack([torch.full((3, 1, 2, 2), 10 * i + v, dtype=torch.uint8) for v in range(self.views)])
        return {"clips": clips, "label": self.labels[i], "index": i}


class CodeLookup(nn.Module):
    """Reads the view code back from the normalised input and returns that view's logits."""

    def __init__(self, table):
        super().__init__()
        self.table = table  # {code: logits}

    def forward(self, x):
        pixel = x[:, 0, 0, 0, 0] * augment.STUDENT_STD[0] + augment.STUDENT_MEAN[0]
        codes = (pixel * 255).round().long().tolist()
        return torch.stack([self.table[c] for c in codes])


def test_multiview_test_aggregates_the_views_of_each_video(tmp_path):
    # Per video: view 0 strongly for a wrong class, views 1 and 2 moderately for the label (so the
    # label wins only when exactly this video's three views are softmax-averaged).
    num_videos, views, labels = 5, 3, [1, 0, 2, 1, 0]
    table = {}
    for i, y in enumerate(labels):
        wrong = (y + 1) % 3
        table[10 * i] = torch.zeros(3).index_fill_(0, torch.tensor([wrong]), 10.0)
        for v in (1, 2):
            table[10 * i + v] = torch.zeros(3).index_fill_(0, torch.tensor([y]), 2.0)
    model = CodeLookup(table)
    args = argparse.Namespace(batch_size_per_gpu=2 * views, num_workers=0, precision="fp32", log_every=1,
                              output_dir=str(tmp_path), max_skip_share=0.0)
    metrics = classifier.evaluate_multiview(model, ViewCodeDataset(num_videos, views, labels), torch.device("cpu"), args)
    assert metrics["top1"] == 100.0 and metrics["num_videos"] == num_videos
    # Only view 0 of each video: every answer wrong.
    args.batch_size_per_gpu = 2
    metrics = classifier.evaluate_multiview(model, ViewCodeDataset(num_videos, 1, labels), torch.device("cpu"), args)
    assert metrics["top1"] == 0.0 and metrics["top5"] == 100.0


class OneUndecodable(ViewCodeDataset):
    def __getitem__(self, i):
        return {"undecodable": f"v{i}.mp4", "reason": "no frames"} if i == 3 else super().__getitem__(i)


def test_multiview_test_leaves_out_and_counts_undecodable_videos(tmp_path):
    """An undecodable video is not scored, is listed in skipped_videos.txt and counted ("skipped")."""
    labels = [0, 1, 2, 0, 1]
    model = CodeLookup({10 * i: torch.zeros(3).index_fill_(0, torch.tensor([y]), 1.0) for i, y in enumerate(labels)})
    args = argparse.Namespace(batch_size_per_gpu=2, num_workers=0, precision="fp32", log_every=1,
                              output_dir=str(tmp_path), max_skip_share=0.5)
    metrics = classifier.evaluate_multiview(model, OneUndecodable(5, 1, labels), torch.device("cpu"), args)
    assert (metrics["top1"], metrics["num_videos"], metrics["skipped"]) == (100.0, 4, 1)
    assert (tmp_path / "skipped_videos.txt").read_text() == "v3.mp4\tno frames\n"


# ----------------------------------------------------------------------------------------------
# Linear probe
# ----------------------------------------------------------------------------------------------

class SeparableClips(torch.utils.data.Dataset):
    """Class c: channel c bright (200-255), the others dark (0-100): linearly separable channel means."""

    def __init__(self, n, num_classes, views, seed):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, num_classes, (n,), generator=g).tolist()
        self.clips = torch.randint(0, 100, (n, views, 3, 2, 4, 4), generator=g, dtype=torch.uint8)
        for i, y in enumerate(self.labels):
            self.clips[i, :, y] += 155
        self.num_classes = num_classes
        self.views_per_video = views

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"clips": self.clips[i], "label": self.labels[i], "index": i}

    def set_epoch(self, epoch):  # nothing random in these items
        pass


class ChannelMeanEncoder(nn.Module):
    """(N, 3, T, H, W) -> (N, 3, T): spatial means, through a batch norm (to see it stay frozen)."""

    def __init__(self):
        super().__init__()
        self.feat_dim = 3
        self.bn = nn.BatchNorm3d(3)

    def forward(self, x):
        return self.bn(x).mean(dim=(3, 4))


def probe_args(tmp_path, **kw):
    args = dict(epochs=10, batch_size_per_gpu=16, lr=1.0, warmup_epochs=1.0, warmup_start_lr=0.0, weight_decay=0.0,
                num_workers=0, seed=0, max_iters_per_epoch=0, test_clips=1, test_crops=1, precision="fp32",
                log_every=10, eval_freq=0, max_skip_share=0.0, output_dir=str(tmp_path / "probe"))
    args.update(kw)
    return argparse.Namespace(**args)


def test_linear_probe_on_separable_features(tmp_path):
    torch.manual_seed(0)
    encoder = ChannelMeanEncoder()
    bn_before = {k: v.clone() for k, v in encoder.bn.state_dict().items()}
    model = classifier.VideoClassifier(encoder, 3, freeze_backbone=True)
    metrics = classifier.train_classifier(model, SeparableClips(96, 3, 1, seed=0), SeparableClips(60, 3, 1, seed=1),
                                      probe_args(tmp_path), torch.device("cpu"))
    assert metrics["top1"] > 90.0
    # Frozen backbone in eval mode: neither its weights nor its batch-norm statistics moved.
    for k, v in encoder.bn.state_dict().items():
        assert torch.equal(v, bn_before[k]), k
    ckpt = torch.load(os.path.join(tmp_path, "probe", "checkpoint.pth"), weights_only=True)
    assert ckpt["epoch"] == 10


def test_windowed_test_head_by_hand():
    """PySlowFast's ResNetBasicHead at test: softmax per training-size window, averaged."""
    fc = nn.Linear(2, 2, bias=False)
    nn.init.eye_(fc.weight)
    # a 2x2 map, window 1: four windows with logits [0, 0], [1, 0], [0, 1], [2, 0]
    fmap = torch.tensor([[0.0, 1.0], [0.0, 2.0]]).view(1, 1, 1, 2, 2)
    fmap = torch.cat([fmap, torch.tensor([[0.0, 0.0], [1.0, 0.0]]).view(1, 1, 1, 2, 2)], dim=1)
    e = math.e
    class0 = (0.5 + e / (e + 1) + 1 / (1 + e) + e * e / (e * e + 1)) / 4
    probs = classifier.windowed_log_probs(fmap, fc, 1).exp()
    assert probs[0].tolist() == pytest.approx([class0, 1 - class0])
    # window 2 covers the map: one window, the global mean [0.75, 0.25]
    assert classifier.windowed_log_probs(fmap, fc, 2).exp()[0].tolist() == pytest.approx(
        [1 / (1 + math.exp(-0.5)), 1 - 1 / (1 + math.exp(-0.5))])


def test_classifier_scores_a_256_view_in_2x2_windows_of_7():
    torch.manual_seed(0)
    model = classifier.VideoClassifier(models.build_encoder("slow_tiny"), 3, test_window=7).eval()
    x = torch.randn(1, 3, 2, 256, 256)
    with torch.no_grad():
        fmap = model.encoder.feature_map(x)
        assert fmap.shape[-2:] == (8, 8)
        windows = [model.fc(fmap[..., i:i + 7, j:j + 7].mean(dim=(2, 3, 4))).softmax(-1)
                   for i in (0, 1) for j in (0, 1)]
        torch.testing.assert_close(model(x).exp(), sum(windows) / 4)
        model.train()  # training: the global pool (one window at the 224 training crop)
        fmap = model.encoder.feature_map(x)  # batch statistics now
        torch.testing.assert_close(model(x), model.fc(fmap.mean(dim=(2, 3, 4))))


def test_sgd_groups_and_finetune_jitter_as_pyslowfast(tmp_path):
    model = classifier.VideoClassifier(ChannelMeanEncoder(), 3)
    args = argparse.Namespace(lr=0.1, weight_decay=1e-4, bn_weight_decay=0.0, nesterov=True)
    groups = classifier.build_sgd(model, args).param_groups
    # BN.WEIGHT_DECAY 0.0 for the batch-norm weight and bias; SOLVER.WEIGHT_DECAY for the rest; Nesterov
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(2, 0.0), (2, 1e-4)]
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in groups)
    frozen = classifier.VideoClassifier(ChannelMeanEncoder(), 3, freeze_backbone=True)
    assert [len(g["params"]) for g in classifier.build_sgd(frozen, args).param_groups] == [2]  # fc only
    # one Nesterov step by hand: p = 1, grad 0.5, lr 0.1: p - lr (g + 0.9 g) = 1 - 0.095
    p = nn.Parameter(torch.ones(1))
    opt = classifier.build_sgd(nn.ParameterList([p]), argparse.Namespace(lr=0.1, weight_decay=0.0))
    p.grad = torch.full((1,), 0.5)
    opt.step()
    assert p.item() == pytest.approx(0.905)
    # SyncBN needs CUDA and several processes; on the CPU the model stays as it is
    assert distributed.sync_batchnorm(model, torch.device("cpu")) is model
    assert classifier.train_jitter(argparse.Namespace(train_jitter="none"), torch.device("cpu")) is None
    jitter = classifier.train_jitter(argparse.Namespace(train_jitter="pyslowfast"), torch.device("cpu"))
    assert jitter.cfg == dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, jitter_p=1.0, grayscale_p=0.2,
                              blur_p=0.0, blur_sigma=(0.1, 2.0)) and jitter.grayscale_first
    clips = torch.randint(0, 256, (4, 3, 2, 8, 8), dtype=torch.uint8)
    jitter.generator.manual_seed(1)
    a = jitter(clips)
    jitter.generator.manual_seed(1)
    assert torch.equal(a, jitter(clips)) and not torch.equal(a, clips.float() / 255)  # jitter on every clip
    assert not torch.equal(a, jitter(clips))  # new draws every step


@pytest.mark.parametrize("dataset,flip", [("ssv2", False), ("ucf101", True)])
def test_no_horizontal_flip_for_ssv2(monkeypatch, dataset, flip):
    seen = {}

    class Stop(Exception):
        pass

    def fake_build_split(flags, split, mode, official_split=1, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(data, "build_split", fake_build_split)
    args = finetune.get_args_parser().parse_args(["--pretrained", "scratch", "--dataset", dataset])
    flags, _ = protocols.prepare(args, protocols.finetune_protocol(dataset), protocols.FINETUNE_SYNTHETIC)
    with pytest.raises(Stop):
        classifier.finetune(flags, torch.device("cpu"), models.build_encoder("slow_tiny"), 1, "unused")
    assert seen["hflip"] is flip
