"""Processes of a run: torchrun sets RANK, WORLD_SIZE, LOCAL_RANK; plain `python script.py` is one process.

    init(device_flag)                  join the torchrun process group: (rank, world_size, device); each
                                       attempt of a run torchrun restarts in its own store namespace
    rank() / world_size() / is_main()  this process, all of them, rank 0
    barrier / all_reduce_sum / all_gather_variable / gather_objects   what the loops exchange
    ddp(model, device) / sync_batchnorm(model, device)   DDP and synchronised BN under torchrun
    cleanup()                          leave the process group at the end of a script

nccl on GPUs, gloo on CPUs; every function is a no-op (or the identity) without torchrun.
"""
import datetime
import os

import torch
import torch.distributed as dist


def init(device_flag="auto"):
    """Join the torchrun process group if there is one. Returns (rank, world_size, device)."""
    if device_flag == "auto":
        device_flag = "cuda" if torch.cuda.is_available() else "cpu"
    if device_flag == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        rank_, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device_flag == "cuda":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            timeout = datetime.timedelta(minutes=30)
            store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=attempt_store(store),
                                    rank=rank_, world_size=world, timeout=timeout)
        return rank_, world, device
    return 0, 1, torch.device(device_flag)


def attempt_store(store):
    """The key-value store of this attempt of the run: torchrun keeps its store when it restarts the ranks
    (--max-restarts), so that the keys the killed attempt left (e.g. the address of its rank 0) would be
    read by the new one, which then waits on a dead peer until it times out.
    Every attempt gets its own namespace: torchrun's restart count, the same on every node."""
    return dist.PrefixStore(f"iboot/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main():
    return rank() == 0


def barrier():
    if is_distributed():
        dist.barrier()


def all_reduce_sum(value, device):
    """Sum a Python number over ranks (epoch statistics such as losses and skipped videos)."""
    if not is_distributed():
        return value
    t = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def all_reduce_max(value, device):
    """The largest of a Python number over ranks (e.g. whether any rank got a signal)."""
    if not is_distributed():
        return value
    t = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def all_gather_variable(tensor):
    """Gather tensors of different first-dimension sizes from all ranks, concatenated in rank order."""
    if not is_distributed():
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    padded = tensor.new_zeros((max(sizes),) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)])


def gather_objects(obj):
    """A list with every rank's picklable object (rank order); [obj] without torchrun."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def ddp(model, device):
    """The model wrapped in DistributedDataParallel under torchrun; the model itself otherwise."""
    if world_size() == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def wants_sync_batchnorm(device):
    """Batch norm synchronised across processes (the paper; PySlowFast BN.NORM_TYPE sync_batchnorm) is
    PyTorch's SyncBatchNorm, which runs on CUDA only: a CPU (gloo) run or a single process keeps
    per-process batch norm, which is the same thing on one process."""
    return device.type == "cuda" and world_size() > 1


def sync_batchnorm(model, device):
    """Every batch norm of `model` synchronised across the processes when wants_sync_batchnorm."""
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if wants_sync_batchnorm(device) else model


def cleanup():
    if is_distributed():
        dist.destroy_process_group()
