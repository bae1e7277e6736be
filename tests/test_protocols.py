"""protocols.py: the paper's settings (Section 4.2), and PySlowFast's where it is silent, are the
defaults of every evaluation script."""
import pytest

import eval_knn
import eval_linear
import finetune
import protocols
import semisup


# The paper's settings, and (second dict) PySlowFast's where the paper is silent (README, "Protocols").
PYSLOWFAST_TEST = dict(test_crop_size=256, test_spacing="uniform", sampling="kinetics")
PYSLOWFAST_UCF = dict(PYSLOWFAST_TEST, dropout=0.8, train_jitter="pyslowfast", weight_decay=0.0, warmup_epochs=0,
                      nesterov=True, bn_weight_decay=0.0, inflation="mean")
PAPER = {
    (eval_linear, "kinetics"): dict(epochs=100, global_batch=64, lr=1.0, warmup_epochs=8, warmup_start_lr=0.0,
                                    test_clips=10, test_crops=3, num_frames=8, stride=8, **PYSLOWFAST_TEST),
    (finetune, "ucf101"): dict(epochs=196, global_batch=128, lr=0.0025, test_clips=10, test_crops=3, num_frames=8,
                               **PYSLOWFAST_UCF),
    (finetune, "hmdb51"): dict(epochs=196, global_batch=128, lr=0.0025, test_clips=10, test_crops=3,
                               **PYSLOWFAST_UCF),
    (finetune, "ssv2"): dict(epochs=40, global_batch=64, lr=0.15, warmup_epochs=3, warmup_start_lr=0.08,
                             weight_decay=1e-4, test_clips=1, test_crops=1,
                             **dict(PYSLOWFAST_TEST, sampling="ssv2", dropout=0.5, train_jitter="none")),
    (semisup, "kinetics"): dict(epochs=100, global_batch=64, lr=0.01, warmup_epochs=8, warmup_start_lr=0.0,
                                test_clips=10, test_crops=3, fraction=1.0, dropout=0.5, train_jitter="none",
                                **PYSLOWFAST_TEST),
    (eval_knn, "kinetics"): dict(nb_knn=[20], temperature=0.07, test_clips=1, test_crops=1, num_frames=8,
                                 **PYSLOWFAST_TEST),
}


@pytest.mark.parametrize("module,dataset", list(PAPER))
def test_paper_defaults(module, dataset):
    args = module.get_args_parser().parse_args(["--pretrained", "scratch", "--dataset", dataset])
    table = protocols.finetune_protocol(dataset) if module is finetune else module.PAPER_DEFAULTS
    synthetic = protocols.FINETUNE_SYNTHETIC if module is finetune else module.SYNTHETIC_DEFAULTS
    flags, _ = protocols.prepare(args, table, synthetic)
    for key, value in PAPER[(module, dataset)].items():
        assert getattr(flags, key) == value, key
