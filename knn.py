"""DINO's weighted k-NN classifier on frozen features (Section 4.2): what eval_knn.py reports and what
pretrain.py watches during training.

    extract_features(encoder, dataset, ...)   L2-normalised pooled features of every video of a test
                                              set (each video once over all ranks), sorted by index
    DecodedSet(dataset, ...).features(enc)    the same, for a set encoded again and again (pretraining's
                                              monitor): decoded once and kept, or decoded at each call
    knn_scores / knn_topk_correct             votes exp(cos / 0.07) of the k nearest training features;
                                              top-1 and top-5 counted as DINO's knn_classifier
    knn_accuracy(...) / top1(train, val)      (top-1 %, top-5 %); the top-1 of two encoded sets
    views_label(k, dataset)                   "k=20, 1 crop of 256 (short side 256), clip at frame 0": printed
                                              beside every k-NN number
"""
import torch
import torch.nn.functional as F

import augment
import data
import distributed
import precision as precisions

K = 20  # the paper's k (Section 4.2; DINO's default)
TEMPERATURE = 0.07
# Similarity chunks hold at most this many (test x train) entries: 2^26 floats = 256 MiB, so the
# K400 sets (240k training videos) need chunks of ~280 validation videos, and no larger matrix.
MAX_CHUNK_ELEMENTS = 2 ** 26


@torch.no_grad()
def encode(encoder, batches, device, precision="fp32"):
    """L2-normalised features of the videos of `batches` (each the mean over its V views of the pooled
    encoder output), gathered over the ranks: (features (N, C), labels (N,), indices (N,)) sorted by
    dataset index, every video exactly once."""
    encoder.eval()
    feats, labels, indices = [], [], []
    for batch in batches:
        clips = batch["clips"]  # uint8 (B, V, 3, T, S, S)
        B, V = clips.shape[:2]
        with precisions.autocast(device, precision):
            f = encoder(augment.student_input(clips.to(device, non_blocking=True).flatten(0, 1)))  # (B*V, C, T)
        feats.append(F.normalize(f.float().mean(dim=2).view(B, V, -1).mean(dim=1), dim=1))
        labels.append(batch["label"].to(device).view(-1).long())
        indices.append(batch["index"].to(device).view(-1).long())
    feats = torch.cat(feats) if feats else torch.zeros(0, encoder.feat_dim, device=device)
    labels, indices = [torch.cat(t) if t else torch.zeros(0, dtype=torch.long, device=device)
                       for t in (labels, indices)]
    feats, labels, indices = [distributed.all_gather_variable(t) for t in (feats, labels, indices)]
    order = indices.argsort()
    return feats[order], labels[order], indices[order]


def extract_features(encoder, dataset, device, batch_size, num_workers, precision="fp32", log_every=10,
                     skipped=None, what="the set"):
    """encode() of every decodable video of a mode="test" dataset. Under torchrun each process decodes
    and encodes its shard once and the shards are gathered, so every process ends with the whole set."""
    batches = data.decoded_batches(dataset, batch_size, num_workers, device, log_every, skipped, what)
    return encode(encoder, batches, device, precision)


class DecodedSet:
    """A test set that a training run encodes more than once. keep=True: decoded once and kept in memory
    (uint8: N x V x 3 x T x S x S bytes), for a k-NN every few epochs; keep=False: decoded again at each
    features() call and never held (a set too large to keep, encoded a few times at the end)."""

    def __init__(self, dataset, batch_size, num_workers, device, skipped=None, what="the set", keep=True):
        self._decode = lambda: data.decoded_batches(dataset, batch_size, num_workers, device, skipped=skipped,
                                                    what=what)
        self.batches = list(self._decode()) if keep else None

    def features(self, encoder, device, precision="fp32"):
        return encode(encoder, self.batches if self.batches is not None else self._decode(), device, precision)


def views_label(k, dataset):
    """How a k-NN number was measured (the views of a mode="test" data.VideoDataset), printed and recorded
    beside it by every script that reports one, e.g. "k=20, 1 crop of 64 (short side 73), centre clip"."""
    crops = f"{dataset.test_crops} crop{'s' * (dataset.test_crops > 1)} of {dataset.test_crop_size}"
    if dataset.sampling == "ssv2":
        clips = "frames of every segment"
    elif dataset.test_clips > 1:
        clips = f"{dataset.test_clips} clips ({dataset.test_spacing} spacing)"
    else:
        clips = "clip at frame 0" if dataset.test_spacing == "uniform" else "centre clip"
    return f"k={k}, {crops} (short side {dataset.test_short_side}), {clips}"


def top1(train, val, k=K, temperature=TEMPERATURE):
    """k-NN top-1 (%) of val on train, each (features, labels, indices) as encode() returns them."""
    (train_f, train_y, _), (val_f, val_y, _) = train, val
    num_classes = int(max(train_y.max().item(), val_y.max().item())) + 1
    return knn_accuracy(train_f, train_y, val_f, val_y, k, num_classes, temperature=temperature)[0]


@torch.no_grad()
def knn_scores(train_features, train_labels, test_features, k, num_classes, temperature=TEMPERATURE,
               chunk_size=None):
    """Class scores (N_test, num_classes): sum over the k most similar training features of
    exp(cos / temperature), per neighbour label. Features must be L2-normalised (cos = dot product).

    The similarity matrix is computed in chunks of test rows, so its size stays bounded; k larger
    than the training set uses every training sample."""
    n_train = train_features.shape[0]
    if n_train == 0:
        raise ValueError("k-NN: the training set has no features")
    k = min(k, n_train)
    if chunk_size is None:
        chunk_size = max(1, MAX_CHUNK_ELEMENTS // n_train)
    scores = torch.zeros(test_features.shape[0], num_classes, device=test_features.device)
    for start in range(0, test_features.shape[0], chunk_size):
        sims = test_features[start:start + chunk_size] @ train_features.T  # (chunk, n_train)
        top_sims, top_idx = sims.topk(k, dim=1)
        weights = (top_sims / temperature).exp()
        scores[start:start + chunk_size].scatter_add_(1, train_labels[top_idx], weights)
    return scores


def knn_topk_correct(scores, labels, k):
    """(top-1 hits, top-5 hits) as DINO's eval_knn.py knn_classifier: the classes sorted by their votes,
    descending (`probs.sort(1, True)`), the label counted among the first 1 and the first min(5, k)
    of them (`correct.narrow(1, 0, min(5, k))`): with k < 5 neighbours top-5 looks at k classes only,
    and classes without votes rank after every class with one. DINO's sort leaves the order of equal
    scores to the device; ours is stable (ties by class index), so every run counts the same."""
    order = scores.sort(dim=1, descending=True, stable=True).indices
    correct = order == labels.view(-1, 1)
    return int(correct[:, :1].sum().item()), int(correct[:, :min(5, k, scores.shape[1])].sum().item())


def knn_accuracy(train_features, train_labels, test_features, test_labels, k, num_classes, **kwargs):
    """(top-1 %, top-5 %) of the weighted k-NN classifier, counted as DINO's (knn_topk_correct). k larger
    than the training set uses all of it (DINO would stop), and top-5 then looks at min(5, that many)."""
    scores = knn_scores(train_features, train_labels, test_features, k, num_classes, **kwargs)
    top1, top5 = knn_topk_correct(scores, test_labels, min(k, train_features.shape[0]))
    n = max(1, test_labels.numel())
    return 100.0 * top1 / n, 100.0 * top5 / n
