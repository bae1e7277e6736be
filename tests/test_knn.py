"""knn.py: DINO's weighted k-NN (against a brute-force reference and DINO's own counting by hand) and
feature extraction that sees every video once under torchrun."""
import math
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import knn
from helpers import free_port


def brute_force_knn_scores(train_f, train_y, test_f, k, num_classes, temperature=0.07):
    """Reference: for each test sample, sort all training samples by cosine similarity (Python)."""
    scores = torch.zeros(len(test_f), num_classes, dtype=torch.float64)
    for i, q in enumerate(test_f.tolist()):
        sims = []
        for j, t in enumerate(train_f.tolist()):
            dot = sum(a * b for a, b in zip(q, t))
            norm = math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in t))
            sims.append((dot / norm, int(train_y[j])))
        sims.sort(key=lambda s: -s[0])
        for sim, label in sims[:k]:
            scores[i, label] += math.exp(sim / temperature)
    return scores


@pytest.mark.parametrize("k", [1, 5, 20, 100])
@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_knn_equals_brute_force(k, chunk_size):
    g = torch.Generator().manual_seed(k)
    train_f = F.normalize(torch.randn(40, 8, generator=g), dim=1)
    train_y = torch.randint(0, 6, (40,), generator=g)
    test_f = F.normalize(torch.randn(13, 8, generator=g), dim=1)
    test_y = torch.randint(0, 6, (13,), generator=g)
    scores = knn.knn_scores(train_f, train_y, test_f, k, 6, chunk_size=chunk_size)
    ref = brute_force_knn_scores(train_f, train_y, test_f, k, 6)
    assert torch.allclose(scores.double(), ref, rtol=1e-4)
    top1, top5 = knn.knn_accuracy(train_f, train_y, test_f, test_y, k, 6, chunk_size=chunk_size)
    ref1, ref5 = dino_knn_hits(train_f, train_y, test_f, test_y, min(k, 40), 6)
    assert (top1, top5) == pytest.approx((100.0 * ref1 / 13, 100.0 * ref5 / 13))


def dino_knn_hits(train_f, train_y, test_f, test_y, k, num_classes, temperature=0.07):
    """Reference: DINO's eval_knn.py knn_classifier step by step (one chunk): top-k similarities, one-hot
    labels of the neighbours weighted by exp(sim / T) and summed per class, classes sorted by score
    (descending; stable here, where DINO leaves ties to the device), hits among the first 1 and the
    first min(5, k) classes."""
    n = test_f.shape[0]
    distances, indices = (test_f @ train_f.T).topk(k, largest=True, sorted=True)
    retrieved = train_y.view(1, -1).expand(n, -1).gather(1, indices)
    one_hot = torch.zeros(n * k, num_classes).scatter_(1, retrieved.reshape(-1, 1), 1)
    probs = (one_hot.view(n, k, num_classes) * distances.div(temperature).exp().view(n, k, 1)).sum(1)
    correct = probs.sort(dim=1, descending=True, stable=True).indices.eq(test_y.view(-1, 1))
    return correct.narrow(1, 0, 1).sum().item(), correct.narrow(1, 0, min(5, k)).sum().item()


@pytest.mark.parametrize("k,top1,top5", [
    # Neighbours of the query by cosine: 0.9 class 2, 0.8 and 0.7 class 4, 0.6 class 1, 0.5 class 0,
    # 0.4 class 3, then 16 of class 5 at -1. Class votes (exp(cos / 0.07)): 2 = 3.8e5 > 4 = 9.2e4 + 2.2e4
    # > 1 = 5.3e3 > 0 = 1.3e3 > 3 = 3.0e2 > 5 = 16 x 6e-7. Six queries, one per target class 0..5.
    (1, 1, 1),   # only class 2 votes; DINO's top-5 looks at min(5, k) = 1 class: {2}
    (3, 1, 3),   # classes 2, 4, then the first class without votes (0): {2, 4, 0}
    (5, 1, 5),   # 2, 4, 1, 0, then class 3 without votes: {2, 4, 1, 0, 3}
    (20, 1, 5),  # 2, 4, 1, 0, 3 (class 5's 14 votes are tiny): {2, 4, 1, 0, 3}
])
def test_knn_top5_as_dino_by_hand(k, top1, top5):
    cosines = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4] + [-1.0] * 16
    train_f = torch.tensor([[c, math.sqrt(1 - c * c)] for c in cosines])
    train_y = torch.tensor([2, 4, 4, 1, 0, 3] + [5] * 16)
    test_f, test_y = torch.tensor([[1.0, 0.0]] * 6), torch.arange(6)
    assert knn.knn_accuracy(train_f, train_y, test_f, test_y, k, 6) == pytest.approx(
        (100.0 * top1 / 6, 100.0 * top5 / 6))
    assert dino_knn_hits(train_f, train_y, test_f, test_y, k, 6) == (top1, top5)


def test_knn_votes_are_weighted_by_similarity():
    # Two neighbours of class 1 at cos 0.5 outvoted by one of class 0 at cos 0.9:
    # exp(0.9/0.07) = 3.9e5 > 2 exp(0.5/0.07) = 2.5e3. A plain majority vote would say class 1.
    q = torch.tensor([[1.0, 0.0]])
    train = torch.tensor([[0.9, math.sqrt(1 - 0.81)], [0.5, math.sqrt(0.75)], [0.5, -math.sqrt(0.75)],
                          [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    scores = knn.knn_scores(train, labels, q, k=3, num_classes=2)
    assert scores[0, 0].item() == pytest.approx(math.exp(0.9 / 0.07), rel=1e-4)
    assert scores[0, 1].item() == pytest.approx(2 * math.exp(0.5 / 0.07), rel=1e-4)
    assert scores.argmax(1).item() == 0


class IndexClips(torch.utils.data.Dataset):
    def __len__(self):
        return 7

    def __getitem__(self, i):
        return {"clips": torch.full((1, 3, 1, 2, 2), 20 * i, dtype=torch.uint8), "label": i % 3, "index": i}


class MeanAndOne(nn.Module):
    """Feature (mean pixel, 1): a different direction for every video index."""
    feat_dim = 2

    def forward(self, x):
        m = x.mean(dim=(1, 3, 4))  # (N, T)
        return torch.stack([m, torch.ones_like(m)], dim=1)


def _extract_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    f, y, idx = knn.extract_features(MeanAndOne(), IndexClips(), torch.device("cpu"), batch_size=2,
                                        num_workers=0)
    torch.save(dict(f=f, y=y, idx=idx), os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_distributed_extraction_every_video_once(tmp_path):
    mp.spawn(_extract_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ref_f, ref_y, ref_idx = knn.extract_features(MeanAndOne(), IndexClips(), torch.device("cpu"), 3, 0)
    assert ref_idx.tolist() == list(range(7))
    for rank in range(2):
        out = torch.load(os.path.join(tmp_path, f"rank{rank}.pt"))
        assert out["idx"].tolist() == list(range(7))
        assert out["y"].tolist() == [i % 3 for i in range(7)]
        assert torch.allclose(out["f"], ref_f, atol=1e-6)


def test_a_decoded_set_kept_or_decoded_at_each_call_gives_the_same_features():
    """DecodedSet(keep=True) holds the clips (a k-NN every few epochs); keep=False holds nothing and
    decodes at each call (one k-NN at the end of a run on a set too large to keep): the same features."""
    kept = knn.DecodedSet(IndexClips(), 3, 0, torch.device("cpu"))
    streamed = knn.DecodedSet(IndexClips(), 3, 0, torch.device("cpu"), keep=False)
    assert len(kept.batches) == 3 and streamed.batches is None
    ref = knn.extract_features(MeanAndOne(), IndexClips(), torch.device("cpu"), 3, 0)
    for s in (kept, streamed, streamed):
        f, y, idx = s.features(MeanAndOne(), torch.device("cpu"))
        assert torch.equal(f, ref[0]) and torch.equal(y, ref[1]) and idx.tolist() == list(range(7))
