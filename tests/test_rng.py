"""rng.py: the random state a checkpoint carries survives a weights-only load and redraws exactly the
numbers of the moment it was taken, in the portable format and in the tuples of earlier checkpoints."""
import io
import pickle
import random

import numpy as np
import pytest
import torch

import rng


def draws(generator):
    """Numbers from every generator a run uses, Gaussian caches included (Python's random.gauss and
    numpy's legacy standard_normal keep the second value of each pair for the next call)."""
    return dict(python=[random.random(), random.gauss(0, 1), random.getrandbits(64)],
                numpy=np.concatenate([np.random.rand(3), np.random.standard_normal(1)]).tolist(),
                torch=torch.rand(3).tolist(), generator=torch.rand(2, generator=generator).tolist())


def weights_only_round_trip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_survives_a_weights_only_load_and_redraws_the_same_numbers():
    g = torch.Generator().manual_seed(5)
    rng.seed_everything(123)
    random.gauss(0, 1), np.random.standard_normal(1)  # odd draws: both Gaussian caches hold a value
    state = weights_only_round_trip(rng.get_state({"g": g}))
    expected = draws(g)
    rng.seed_everything(999)
    g.manual_seed(0)
    assert draws(g) != expected
    rng.set_state(state, {"g": g})
    assert draws(g) == expected


def test_states_of_earlier_checkpoints_still_restore_and_convert():
    """Checkpoints written before held random.getstate() and np.random.get_state() as they are (a tuple
    and an ndarray, which a weights-only load refuses): set_state takes them, and portable_state turns
    them into the format get_state writes, with the same draws."""
    g = torch.Generator().manual_seed(5)
    rng.seed_everything(7)
    np.random.standard_normal(1)
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
              "cuda": None, "generators": {"g": g.get_state()}}
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        weights_only_round_trip(legacy)
    expected = draws(g)
    rng.set_state(legacy, {"g": g})
    assert draws(g) == expected
    portable = weights_only_round_trip(rng.portable_state(legacy))
    rng.seed_everything(0)
    rng.set_state(portable, {"g": g})
    assert draws(g) == expected
    rng.set_state(legacy, {"g": g})
    assert rng.portable_state(portable)["numpy"] == rng.get_state()["numpy"]
    assert rng.get_state()["python"] == [legacy["python"][0], list(legacy["python"][1]), legacy["python"][2]]
