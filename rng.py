"""Randomness of a run: one rule for every seed, and the random state a checkpoint carries.

    derive_seed(seed, purpose, *parts)   the seed of one random stream, e.g. ("gpu_augment", epoch, rank)
    seed_everything(seed)                Python, numpy and torch global generators
    get_state / set_state                their states (and named torch Generators'), for checkpoints

Every random stream of a run (data order, clip sampling, device-side augmentation, classifier jitter,
initial weights) is seeded by derive_seed from the run's --seed and what the stream is for: a hash of
all of them, so two streams never share a seed by accident (with seed * 1000 + epoch + rank * 7919,
seed 1 epoch 0 and seed 0 epoch 1000 would), and a resumed run redraws exactly the same numbers.
"""
import hashlib
import json
import random

import numpy as np
import torch


def derive_seed(seed, purpose, *parts):
    """A 63-bit seed: the first 8 bytes of the SHA-256 of [seed, purpose, *parts] (ints and strings),
    the same on every machine and Python version (unlike hash())."""
    key = json.dumps([int(seed), str(purpose), *parts], separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2 ** 63 - 1)


def seed_everything(seed):
    """Seed Python's, numpy's (which takes 32 bits) and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def get_state(generators=None):
    """Python, numpy, torch (and CUDA) RNG states, plus those of the named torch Generators."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generators": {name: g.get_state() for name, g in (generators or {}).items()}}


def set_state(state, generators=None):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        g.set_state(state["generators"][name])
