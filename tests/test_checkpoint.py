"""checkpoint.py: atomic files, run fingerprints and resume checks, weight-file formats; loading runs no
code from a file (crafted files are refused naming the global they ask for, --trust_checkpoint loads
them after a warning), safetensors files, and the published layouts the project reads."""
import argparse
import collections
import fractions
import io
import os
import pickle

import numpy as np
import pytest
import torch

import checkpoint
import cli


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    checkpoint.save({"epoch": 1, "w": torch.ones(3)}, str(path))
    assert checkpoint.load(str(path))["epoch"] == 1

    real_save = torch.save

    def crash_half_way(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"epoch": 2}, str(path))
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint.load(str(path))["epoch"] == 1  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["checkpoint.pth"]  # and no temporary file is left behind


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        checkpoint.load(str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        checkpoint.load(str(bad))


def test_files_get_the_permissions_the_umask_gives(tmp_path):
    """Checkpoints are readable by the group like any file the user creates (mkstemp alone gives 0600)."""
    old = os.umask(0o027)
    try:
        checkpoint.save({"a": 1}, str(tmp_path / "c.pth"))
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "c.pth").st_mode & 0o777 == 0o640 == os.stat(tmp_path / "plain.txt").st_mode & 0o777


def test_disk_full_leaves_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    import errno
    import cli
    path = tmp_path / "checkpoint.pth"
    checkpoint.save({"epoch": 1}, str(path))

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:  # torch.save reports a failed write as a RuntimeError
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from e

    monkeypatch.setattr(torch, "save", full_disk)
    message = f"no space left on the device of {tmp_path}.*previous checkpoint is intact"
    with pytest.raises(cli.SetupError, match=message):
        checkpoint.save({"epoch": 2}, str(path))
    monkeypatch.undo()
    assert checkpoint.load(str(path))["epoch"] == 1 and os.listdir(tmp_path) == ["checkpoint.pth"]


def test_fingerprint_ignores_logging_flags_and_names_every_difference(tmp_path):
    import argparse
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"0123")
    a = argparse.Namespace(arch="slow_tiny", seed=0, log_every=10, output_dir="x", pretrained=str(weights))
    b = argparse.Namespace(arch="slow_small", seed=1, log_every=1, output_dir="y", pretrained=str(weights))
    fa = checkpoint.run_fingerprint(a, files=("pretrained",))
    assert fa["pretrained"]["size"] == 4 and len(fa["pretrained"]["sha256"]) == 64
    assert "log_every" not in fa and "output_dir" not in fa
    diff = checkpoint.fingerprint_difference(fa, checkpoint.run_fingerprint(b, files=("pretrained",)))
    assert diff == "--arch slow_tiny -> slow_small; --seed 0 -> 1"
    weights.write_bytes(b"0124")  # same path and size, other content
    diff = checkpoint.fingerprint_difference(fa, checkpoint.run_fingerprint(a, files=("pretrained",)))
    assert diff.startswith("--pretrained ") and "sha256" in diff


def test_resume_refuses_another_run_and_removes_stale_temporaries(tmp_path):
    import argparse
    args = argparse.Namespace(arch="slow_tiny", seed=0)
    fp = checkpoint.run_fingerprint(args)
    checkpoint.save_run(str(tmp_path), dict(epoch=1, fingerprint=fp))
    (tmp_path / ".tmp_abc123.pth").write_bytes(b"half a checkpoint")
    assert checkpoint.resume_run(str(tmp_path), fp)["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth"]
    with pytest.raises(ValueError, match=f"--output_dir {tmp_path} holds a run with other settings: --seed 0 -> 1"):
        checkpoint.resume_run(str(tmp_path), checkpoint.run_fingerprint(argparse.Namespace(arch="slow_tiny", seed=1)))
    assert checkpoint.resume_run(str(tmp_path / "empty"), fp) is None


def test_detect_format_of_each_weights_file():
    conv2d, conv3d = torch.zeros(4, 3, 7, 7), torch.zeros(4, 3, 1, 7, 7)
    assert checkpoint.detect_format({"encoder": {"conv1.weight": conv3d}}) == "iboot"
    assert checkpoint.detect_format({"model_state": {}}) == "pyslowfast"
    assert checkpoint.detect_format({"module.backbone.s1.pathway0_stem.conv.weight": conv3d}) == "pyslowfast"
    assert checkpoint.detect_format({"state_dict": {"module.conv1.weight": conv2d}}) == "torchvision"
    assert checkpoint.detect_format({"conv1.weight": conv3d}) == "raw"
    with pytest.raises(ValueError, match="odd.pth: unknown weights format"):
        checkpoint.detect_format({"foo": conv2d}, "odd.pth")
    assert checkpoint.strip_prefix({"module.a": 1, "b": 2}, "module.") == {"a": 1, "b": 2}


# ----------------------------------------------------------------------------------------------
# Loading never runs code from the file
# ----------------------------------------------------------------------------------------------

class RunsOnLoad:
    """Pickled as a call of `func(*args)`, made by whoever unpickles it: a crafted checkpoint's payload
    (here harmless: it creates a marker under the test's folder)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker):
    """(object, the global its pickle asks for) for each crafted file: a shell command, a folder, an
    open file, and a class that is not plain data (fractions.Fraction)."""
    return {"os.system": (RunsOnLoad(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
            "os.makedirs": (RunsOnLoad(os.makedirs, str(marker)), "os.makedirs"),
            "open": (RunsOnLoad(open, str(marker), "w"), "io.open"),
            "fractions.Fraction": (fractions.Fraction(1, 3), "fractions.Fraction")}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy_pickle"])
def test_a_training_checkpoint_with_argparse_args_loads_safely(zip_format, tmp_path):
    """timm's train.py and DINO store their flags as an argparse.Namespace: read without full unpickling."""
    path = tmp_path / "timm_train.pth.tar"
    torch.save({"state_dict": {"conv1.weight": torch.ones(2)}, "args": argparse.Namespace(model="resnet50", lr=0.1),
                "epoch": 99}, path, _use_new_zipfile_serialization=zip_format)
    obj = checkpoint.load(str(path), flag="--init")
    assert vars(obj["args"]) == dict(model="resnet50", lr=0.1) and torch.equal(obj["state_dict"]["conv1.weight"],
                                                                                torch.ones(2))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy_pickle"])
@pytest.mark.parametrize("payload", ["os.system", "os.makedirs", "open", "fractions.Fraction"])
def test_a_file_that_needs_full_unpickling_is_refused_naming_the_global(payload, zip_format, tmp_path):
    marker = tmp_path / "marker"
    obj, name = payloads(marker)[payload]
    path = tmp_path / "evil.pyth"
    torch.save({"model_state": {"conv1.weight": torch.zeros(1)}, "args": obj}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(checkpoint.UnsafeCheckpoint) as e:
        checkpoint.load(str(path), flag="--pretrained")
    assert str(e.value) == (f"--pretrained {path} loads only with full unpickling, which can run code from the file: "
                            f"it asks for {name}. Pass --trust_checkpoint to load it only if you trust where it "
                            f"comes from")
    assert e.value.names == [name] and not marker.exists()
    assert isinstance(e.value, cli.SetupError)  # cli.run_cli: one line, status 2


def test_trust_checkpoint_loads_the_whole_pickle_after_one_warning(tmp_path, capsys):
    marker = tmp_path / "made_by_the_file"
    path = tmp_path / "trusted.pth"
    torch.save({"w": torch.ones(2), "side_effect": RunsOnLoad(os.makedirs, str(marker))}, path)
    obj = checkpoint.load(str(path), trust=True, flag="--init")
    assert torch.equal(obj["w"], torch.ones(2)) and marker.is_dir()  # what full unpickling means
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: --trust_checkpoint: loading --init {path} with full unpickling (it asks for "
                   f"os.makedirs); a file loaded so can run any code it holds"]
    safe = tmp_path / "safe.pth"
    torch.save({"w": torch.ones(2)}, safe)
    checkpoint.load(str(safe), trust=True)
    assert capsys.readouterr().err == ""  # a file that loads safely is loaded safely, without a warning


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_a_pickle_the_weights_only_unpickler_cannot_read_names_its_instruction(tmp_path):
    """Protocol 4 frames its pickle (opcode 149, FRAME), which torch's weights-only unpickler does not
    read: no global to name, so the message names the instruction; --trust_checkpoint reads it."""
    path = tmp_path / "protocol4.pth"
    torch.save({"w": torch.ones(1), "note": "x"}, path, pickle_protocol=4)
    with pytest.raises(checkpoint.UnsafeCheckpoint, match=rf"^{path} loads only with full unpickling, which can run "
                       r"code from the file: its pickle uses opcode 149 \(FRAME\), which a weights-only load does "
                       r"not read\. Pass --trust_checkpoint") as e:
        checkpoint.load(str(path))
    assert e.value.names == []
    assert checkpoint.load(str(path), trust=True)["note"] == "x"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_resume_names_what_a_run_checkpoint_asks_for_once(tmp_path):
    """A checkpoint.pth that no weights-only load reads and names no global: the resume line says what
    it uses, once, without the load's own message inside it."""
    torch.save({"epoch": 1, "fingerprint": {}}, tmp_path / "checkpoint.pth", pickle_protocol=4)
    with pytest.raises(checkpoint.UnsafeCheckpoint) as e:
        checkpoint.resume_run(str(tmp_path), {})
    assert str(e.value) == (f"--output_dir {tmp_path} holds checkpoint.pth, which loads only with full unpickling, "
                            f"which can run code from the file: its pickle uses opcode 149 (FRAME), which a "
                            f"weights-only load does not read. Pass another --output_dir, or --trust_checkpoint only "
                            f"if you trust where that file comes from")


def test_damaged_and_foreign_files_are_one_line_naming_them(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(1000)}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:600])
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path in (cut, empty, tmp_path / "page.html"):
        if path.name == "page.html":
            path.write_text("<html>404</html>")
        with pytest.raises(ValueError) as e:
            checkpoint.load(str(path), flag="--pretrained")
        assert str(e.value).startswith(f"could not read checkpoint --pretrained {path}: ") and "\n" not in str(e.value)


# Objects against torch's own weights-only unpickler: what checkpoint.unsafe_entry accepts is exactly
# what torch.load(weights_only=True) reads back.
PLAIN = [torch.ones(2), torch.nn.Parameter(torch.ones(2)), {"a": [1, 2.5, "x", None, True]}, (1, (2, 3)),
         collections.OrderedDict(a=torch.zeros(1)), torch.Size([2, 3]), torch.float16, torch.device("cpu"),
         2 ** 70, {3: "int key"}, torch.nn.Linear(2, 2).state_dict(), {1, 2}, b"raw", 1 + 2j]
NOT_PLAIN = [np.float64(1.0), np.int64(3), np.zeros(2), argparse.Namespace(a=1), frozenset({1}), range(3),
             {"deep": [{"x": np.float32(1)}]}]


@pytest.mark.parametrize("obj", PLAIN + NOT_PLAIN, ids=[f"plain{i}" for i in range(len(PLAIN))]
                         + [f"not_plain{i}" for i in range(len(NOT_PLAIN))])
def test_unsafe_entry_agrees_with_the_weights_only_unpickler(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
        loads = True
    except pickle.UnpicklingError:
        loads = False
    assert (checkpoint.unsafe_entry(obj) is None) == loads


def test_save_refuses_what_a_weights_only_load_cannot_read(tmp_path):
    path = tmp_path / "c.pth"
    with pytest.raises(TypeError, match=r"checkpoint\['random_state'\]\[0\]\['numpy'\]\[1\] is a numpy.ndarray"):
        checkpoint.save({"random_state": [{"numpy": np.random.get_state()}]}, str(path))
    with pytest.raises(TypeError, match=r"checkpoint\['partial'\]\['loss'\] is a numpy.float64"):
        checkpoint.save({"partial": {"loss": np.float64(0.5)}}, str(path))
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------

def test_safetensors_files_are_recognised_by_their_header_and_round_trip(tmp_path):
    from safetensors.torch import save_file
    tensors = {"conv1.weight": torch.randn(4, 3, 7, 7), "fc.bias": torch.randn(10)}
    misnamed = tmp_path / "weights.pth"  # a safetensors file under another name
    save_file(tensors, str(misnamed))
    assert checkpoint.file_kind(str(misnamed)) == "safetensors"
    loaded = checkpoint.load(str(misnamed))
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert checkpoint.detect_format(loaded) == "torchvision"
    pickled = tmp_path / "pickled.safetensors"  # and a torch.save file named .safetensors
    torch.save(tensors, pickled)
    assert checkpoint.file_kind(str(pickled)) == "torch" and checkpoint.load(str(pickled)).keys() == tensors.keys()
    ckpt = {"encoder": {"conv1.weight": torch.randn(4, 3, 1, 7, 7)}, "encoder_name": "slow_tiny", "epoch": 3,
            "args": {"method": "iboot", "teacher": "clip_vit_b16", "dataset": "kinetics", "epochs": 100}}
    checkpoint.save_safetensors(ckpt, str(tmp_path / "encoder.safetensors"))
    back = checkpoint.load(str(tmp_path / "encoder.safetensors"))
    assert {k: v for k, v in back.items() if k != "encoder"} == {k: v for k, v in ckpt.items() if k != "encoder"}
    assert torch.equal(back["encoder"]["conv1.weight"], ckpt["encoder"]["conv1.weight"])
    assert checkpoint.detect_format(back) == "iboot"


# ----------------------------------------------------------------------------------------------
# A crafted file through every script that reads one
# ----------------------------------------------------------------------------------------------

def crafted_file(path, marker):
    """A .pyth file as the PySlowFast checkpoints it imitates, whose pickle would run `touch marker`."""
    torch.save({"model_state": {"s1.pathway0_stem.conv.weight": torch.zeros(1)}, "epoch": 200,
                "cfg": RunsOnLoad(os.system, f"touch {marker}")}, path)
    return path


def entry_point_argv(entry, evil, out, small_root):
    """(script module, argv, the flag the message names) of each way a file reaches checkpoint.load."""
    import eval_knn
    import eval_linear
    import export
    import pretrain
    from helpers import EVAL_TINY, PRETRAIN_TINY
    data = ["--data_root", str(small_root / "data"), "--output_dir", str(out)]
    if entry == "--pretrained":
        return eval_knn, ["--pretrained", str(evil)] + EVAL_TINY + data, "--pretrained"
    if entry == "--init":
        return pretrain, PRETRAIN_TINY + ["--init", str(evil)] + data, "--init"
    if entry == "export.py":
        return export, ["--pretrained", str(evil), "--output_dir", str(out)], "--pretrained"
    out.mkdir()
    os.replace(evil, out / "checkpoint.pth")  # resume: the file sits where the run's checkpoint goes
    return eval_linear, ["--pretrained", str(small_root / "A.pth"), "--epochs", "1"] + EVAL_TINY + data, None


@pytest.mark.parametrize("entry", ["--pretrained", "--init", "export.py", "resume"])
def test_a_crafted_file_runs_nothing_and_stops_in_one_line(entry, small_root, tmp_path):
    from helpers import run_script
    marker, out = tmp_path / "marker", tmp_path / "out"
    evil = crafted_file(tmp_path / "evil.pyth", marker)
    module, argv, flag = entry_point_argv(entry, evil, out, small_root)
    with pytest.raises(checkpoint.UnsafeCheckpoint) as e:
        run_script(module, argv)
    message, system = str(e.value), f"{os.system.__module__}.system"
    if flag:
        assert message == (f"{flag} {evil} loads only with full unpickling, which can run code from the file: it asks "
                           f"for {system}. Pass --trust_checkpoint to load it only if you trust where it comes from")
        assert not out.exists()  # stopped before anything was written
    else:
        assert message == (f"--output_dir {out} holds checkpoint.pth, which loads only with full unpickling, which "
                           f"can run code from the file: it asks for {system}. Pass another --output_dir, or "
                           f"--trust_checkpoint only if you trust where that file comes from")
        assert sorted(os.listdir(out)) == [".lock", "checkpoint.pth"]  # the lock, taken first, and the file
    assert not marker.exists()


@pytest.mark.slow
def test_the_command_line_prints_the_one_line_and_exits_2(small_root, tmp_path):
    import subprocess
    import sys
    marker = tmp_path / "marker"
    evil = crafted_file(tmp_path / "evil.pyth", marker)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "eval_knn.py", "--pretrained", str(evil), "--dataset", "synthetic",
                          "--data_root", str(small_root / "data"), "--output_dir", str(tmp_path / "out")],
                         cwd=root, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.returncode == 2 and not marker.exists() and not (tmp_path / "out").exists()
    assert out.stderr.splitlines() == [f"error: --pretrained {evil} loads only with full unpickling, which can run "
                                       f"code from the file: it asks for {os.system.__module__}.system. Pass "
                                       f"--trust_checkpoint to load it only if you trust where it comes from"]


# ----------------------------------------------------------------------------------------------
# The published layouts the project reads load without full unpickling
# ----------------------------------------------------------------------------------------------

def randomised(module):
    """A module's state dict with distinct values everywhere (BN statistics too), so that a tensor in
    the wrong place shows."""
    torch.manual_seed(0)
    for v in module.state_dict().values():
        if v.is_floating_point():
            v.copy_(torch.rand_like(v) + 0.5)
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_pyslowfast_checkpoint_layout_loads(tmp_path):
    """slowfast/utils/checkpoint.py save_checkpoint: {"epoch", "model_state", "optimizer_state",
    "cfg": cfg.dump() (the YAML text of the config), "scaler_state"}, the head beside the backbone."""
    import models
    source = models.build_encoder("slow_small")
    weights = randomised(source)
    model_state = dict(models.pyslowfast_state_dict(weights))
    model_state.update({"head.projection.weight": torch.randn(400, 1024), "head.projection.bias": torch.zeros(400)})
    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(2)]
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sum(p.sum() for p in params).backward()
    sgd.step()  # momentum buffers in its state
    torch.save({"epoch": 200, "model_state": model_state, "optimizer_state": sgd.state_dict(),
                "cfg": "MODEL:\n  ARCH: slow\n  NUM_CLASSES: 400\nRESNET:\n  DEPTH: 50\n",
                "scaler_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                                 "_growth_tracker": 0}}, tmp_path / "checkpoint_epoch_00200.pyth")
    encoder, fields = models.load_backbone(str(tmp_path / "checkpoint_epoch_00200.pyth"), "slow_small")
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in weights.items())
    assert (fields["method"], fields["pretrain_epochs"]) == ("pyslowfast", 200)


@pytest.mark.parametrize("layout", ["torchvision", "dino", "torchvision_legacy_pickle"])
def test_torchvision_and_dino_resnet50_files_load(layout, tmp_path):
    """torchvision's resnet50 file (a state dict with the 1000-way fc), DINO's dino_resnet50_pretrain.pth
    (the same without fc: DINO's backbone has none) and a file of torch < 1.6 (a plain pickle, not a zip)."""
    import models
    import torchvision
    sd = randomised(torchvision.models.resnet50())
    if layout == "dino":
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    path = tmp_path / "resnet50.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=layout != "torchvision_legacy_pickle")
    encoder = models.load_pretrained(str(path), arch="slow_r50", inflate_mode="center")
    assert torch.equal(encoder.layer3[5].conv1.weight[:, :, 1], sd["layer3.5.conv1.weight"])
    assert torch.equal(encoder.layer4[2].bn3.running_var, sd["layer4.2.bn3.running_var"])


@pytest.mark.parametrize("file_name", ["pytorch_model.bin", "model.safetensors"])
def test_timm_resnet50_files_load(file_name, tmp_path):
    """timm's published weights: a state dict as pytorch_model.bin (torch.save) or model.safetensors
    (the hub's files); its ResNet-50 names its tensors as torchvision does, so it inflates like one."""
    import compat
    import models
    from safetensors.torch import save_file
    sd = randomised(compat.import_timm().create_model("resnet50"))
    path = tmp_path / file_name
    save_file(sd, str(path)) if file_name.endswith(".safetensors") else torch.save(sd, path)
    encoder = models.load_pretrained(str(path), arch="slow_r50")
    torch.testing.assert_close(encoder.layer3[0].conv1.weight[:, :, 0], sd["layer3.0.conv1.weight"] / 3)
    assert torch.equal(encoder.bn1.running_mean, sd["bn1.running_mean"])
