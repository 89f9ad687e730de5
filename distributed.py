"""The processes of one run: torchrun's ranks, their process group, and the decisions they take together."""

import contextlib
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from errors import UserError


@dataclass
class Ranks:
    rank: int = 0
    local_rank: int = 0  # on this node
    world: int = 1
    ddp: bool = False  # started by torchrun: a data-parallel run (DDP or FSDP)

    @property
    def master(self):
        """Rank 0 logs, writes the metrics and (without FSDP) the checkpoint."""
        return self.rank == 0


def setup(device, backend, fsdp):
    """The ranks of this process, its process group started (NCCL on GPUs, Gloo on CPUs unless `backend` says),
    and the device it runs on (cuda:<local rank> under torchrun). FSDP needs a group even of one process."""
    if int(os.environ.get('RANK', -1)) == -1:
        if fsdp:
            dist.init_process_group(backend=group_backend(backend, device), store=dist.HashStore(), rank=0, world_size=1)
        return Ranks(), device
    ranks = Ranks(int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE']), ddp=True)
    if device.startswith('cuda'):
        device = f'cuda:{ranks.local_rank}'
        torch.cuda.set_device(device)
    dist.init_process_group(backend=group_backend(backend, device))
    return ranks, device


def group_backend(backend, device):
    return backend if backend != 'auto' else 'nccl' if device.startswith('cuda') else 'gloo'


def micro_steps(ranks, gradient_accumulation_steps, eval_iters, fsdp):
    """This rank's share of the micro-steps of a step: gradient_accumulation_steps counts them over all ranks
    (the global batch is the same whatever their number). Evaluations are shared out the same way."""
    if fsdp and eval_iters % ranks.world:  # a sharded forward needs every rank: equal shares
        raise UserError(f"fsdp=True needs eval_iters ({eval_iters}) to be a multiple of the number of "
                        f"processes ({ranks.world})")
    if gradient_accumulation_steps % ranks.world:
        raise UserError(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be a multiple of "
                        f"the number of processes ({ranks.world})")
    if eval_iters < ranks.world:  # a rank without an eval batch would leave the others' collectives waiting
        raise UserError(f"eval_iters ({eval_iters}) must be at least the number of processes ({ranks.world}): "
                        f"each evaluates its share of the batches")
    return gradient_accumulation_steps // ranks.world


def data_parallel(model, ranks, device_type):
    """The model wrapped in DDP (all-reduced gradients). Its buffers (position tables) are constants: not broadcast
    in every forward, which would also hang an evaluation whose ranks run different numbers of forwards."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    no_sync = {'forward_sync_buffers' if 'forward_sync_buffers' in inspect.signature(DDP).parameters
               else 'broadcast_buffers': False}  # torch 2.13 renamed it
    return DDP(model, device_ids=[ranks.local_rank] if device_type == 'cuda' else None, **no_sync)


def gradient_sync(model, ranks, last, fsdp):
    """DDP: all-reduce the gradients only in the last micro-step's backward; the others accumulate.
    FSDP reduce-scatters in every micro-step's backward: the gradients stay sharded (1/N of the memory)."""
    return model.no_sync() if ranks.ddp and not last and not fsdp else contextlib.nullcontext()


def agree_to_stop(stop, elapsed, ranks, device):
    """(stop, rank 0's elapsed seconds), the same on every rank: one collective, one host sync."""
    flags = torch.tensor([float(stop), elapsed if ranks.master else 0.0], dtype=torch.float64, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    stop, elapsed = flags.tolist()
    return bool(stop), elapsed


def rank0_decides(decide):
    """decide() run on rank 0 alone, its result (or UserError) given to every rank, so that no two ranks take
    different branches (a shared filesystem may show them different things). Without a process group: decide()."""
    if not dist.is_initialized():
        return decide()
    answer = [None]
    if dist.get_rank() == 0:
        try:
            answer = [(True, decide())]
        except UserError as e:
            answer = [(False, str(e))]
    dist.broadcast_object_list(answer, src=0)
    ok, value = answer[0]
    if not ok:
        raise UserError(value)
    return value


def any_rank(flag, device):
    """Whether `flag` holds on any rank (every rank must call it); `flag` itself without a process group."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_sum(tensor):
    """The sum over the ranks of a data-parallel run (in place); the tensor itself without a process group."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gathered(obj, ranks):
    """Every rank's `obj`, in rank order (every rank must call it): [obj] in one process."""
    if not ranks.ddp:
        return [obj]
    objects = [None] * ranks.world
    dist.all_gather_object(objects, obj)
    return objects


def barrier():
    if dist.is_initialized():
        dist.barrier()
