"""Randomness of a run: one rule for every seed, and the random state a checkpoint carries.

    derive_seed(seed, purpose, *parts)   the seed of one random stream, e.g. ("gpu_augment", epoch, rank)
    seed_everything(seed)                Python, numpy and torch global generators
    get_state / set_state                their states (and named torch Generators'), for checkpoints: tensors,
                                         numbers, strings and lists only, so that a checkpoint loads with
                                         torch.load(weights_only=True); set_state also takes the tuples of
                                         random.getstate() and np.random.get_state()
    portable_state(state)                such a state with those tuples turned into lists (the same draws)

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


def _python_state(state):
    """random.getstate()'s (version, 625 ints, gauss_next) as a list: [version, [ints], gauss_next]."""
    version, internal, gauss_next = state
    return [int(version), [int(x) for x in internal], None if gauss_next is None else float(gauss_next)]


def _numpy_state(state):
    """np.random.get_state()'s ("MT19937", uint32 array of 624, pos, has_gauss, cached_gaussian) as a
    dict of a string, a list of ints and numbers (an ndarray needs numpy's globals to unpickle)."""
    if isinstance(state, dict):
        return state
    name, key, pos, has_gauss, cached_gaussian = state
    return {"bit_generator": str(name), "key": [int(x) for x in key], "pos": int(pos), "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian)}


def portable_state(state):
    """A state of get_state with Python's and numpy's parts as lists and numbers (a state written as the
    tuples of random.getstate() and np.random.get_state() is converted; a portable one is unchanged)."""
    return dict(state, python=_python_state(state["python"]), numpy=_numpy_state(state["numpy"]))


def get_state(generators=None):
    """Python, numpy, torch (and CUDA) RNG states, plus those of the named torch Generators: tensors,
    numbers, strings and lists only."""
    return {"python": _python_state(random.getstate()), "numpy": _numpy_state(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generators": {name: g.get_state() for name, g in (generators or {}).items()}}


def set_state(state, generators=None):
    """Restore a state of get_state (or one holding the tuples of random.getstate() and np.random.get_state())."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = _numpy_state(state["numpy"])
    np.random.set_state((numpy_state["bit_generator"], np.array(numpy_state["key"], dtype=np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        g.set_state(state["generators"][name])
