"""
FSDP2 (train.py's fsdp=True): parameters, gradients and optimizer state sharded over the ranks,
and sharded checkpoints written with torch.distributed.checkpoint (DCP).

    shard_model(model, ...)              each Block, then the root, wrapped with fully_shard on a 1-D mesh
    clip_grad_norm(params, max_norm)     the global norm over all shards, as a plain tensor
    save_sharded(out_dir, model, optimizers, extra)
                                         every rank writes its shard into a new directory; when all are
                                         written, the out_dir/ckpt.dcp link is switched to it (atomic)
    load_sharded(path, model, optimizers)
                                         a sharded model and its optimizers from a DCP directory, saved
                                         on any number of ranks (DCP reshards)
    read_checkpoint(path, weights=True)  a DCP checkpoint on one process, with no process group, as the
                                         plain dict a ckpt.pt holds (for sample.py, export.py, resuming
                                         without FSDP)

A DCP checkpoint holds {'model': the model's state dict, 'optimizer': the optimizers' (keyed by
parameter name), 'extra': everything else a ckpt.pt holds (iteration, config, tokenizer, RNG and
sampler state, scaler...), pickled}.
"""

import glob
import io
import os
import shutil
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

LINK = 'ckpt.dcp'  # out_dir/ckpt.dcp -> .ckpt-dcp-<iter>, the last complete checkpoint


def shard_model(model, device_type, dtype, compile=False):
    """Shard `model` in place over all ranks: each transformer Block is one FSDP unit (its
    parameters gathered just before it runs and freed after), the rest (embeddings, final norm,
    head) the root's. On GPUs with bfloat16, parameters are cast to bf16 for compute and gradients
    reduced in float32. compile: torch.compile each block (before sharding, as torchtitan does)."""
    from model import Block
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if device_type == 'cuda' and dtype == 'bfloat16' else MixedPrecisionPolicy())
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        if compile:
            block.compile()
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def clip_grad_norm(parameters, max_norm):
    """clip_grad_norm_ over DTensor gradients computes the norm over all shards (one all-reduce);
    returned as a plain tensor, the same on every rank."""
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def local_bytes(model, optimizers):
    """Bytes of this rank's parameters, gradients and optimizer state (its shards under FSDP)."""
    def size(t):
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()
    params = sum(size(p) for p in model.parameters())
    grads = sum(size(p.grad) for p in model.parameters() if p.grad is not None)
    state = sum(size(v) for opt in optimizers for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    return {'parameters': params, 'gradients': grads, 'optimizer': state}


def pickled(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def save_sharded(out_dir, model, optimizers, extra, keep_last=0):
    """Write the checkpoint as a DCP directory, each rank its own shard, in parallel. It goes into
    .ckpt-dcp-<iter>; only once every rank has finished is the link out_dir/ckpt.dcp switched to it
    (a rename: atomic), so a kill at any moment leaves the last complete checkpoint loadable. Older
    directories are removed, but for keep_last of them. Every rank calls it."""
    rank0 = dist.get_rank() == 0
    name = f".ckpt-dcp-{extra['iter_num']}"
    path = os.path.join(out_dir, name)
    link = os.path.join(out_dir, LINK)
    current = os.path.realpath(link) if os.path.islink(link) else None
    if rank0 and os.path.exists(path) and path != current:
        shutil.rmtree(path)  # left by a writer that was killed
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizers)
    if path == current:  # the same iteration saved again (a stop right after an eval): write beside it
        path, name = path + '-again', name + '-again'
        if rank0 and os.path.exists(path):
            shutil.rmtree(path)
        dist.barrier()
    dcp.save({'model': model_state, 'optimizer': optim_state, 'extra': pickled(extra)}, checkpoint_id=path)
    dist.barrier()  # every shard and the metadata written
    if rank0:
        tmp = link + f'.tmp{os.getpid()}'
        os.symlink(name, tmp)
        os.replace(tmp, link)
        from checkpoint import fsync_dir
        fsync_dir(out_dir)
        live = os.path.realpath(link)
        older = sorted((d for d in glob.glob(os.path.join(out_dir, '.ckpt-dcp-*')) if os.path.realpath(d) != live),
                       key=os.path.getmtime)
        for stale in older[:len(older) - keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()


def load_sharded(path, model, optimizers):
    """Load a DCP checkpoint into a sharded model and its optimizers: each rank reads the pieces of
    its own shards, whatever the number of ranks that saved it."""
    model_state, optim_state = get_state_dict(model, optimizers)  # templates: the shapes and shards wanted
    state = {'model': model_state, 'optimizer': optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizers, model_state_dict=state['model'], optim_state_dict=state['optimizer'])


def load_keys(keys, path):
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter('ignore', UserWarning)
        return _load_state_dict_from_keys(keys, checkpoint_id=path)


def read_extra(path):
    value = load_keys({'extra'}, path)['extra']
    value.seek(0)
    return torch.load(value, map_location='cpu', weights_only=True)


def read_checkpoint(path, weights=True):
    """A DCP checkpoint read whole on this process, with no process group: the dict a ckpt.pt holds,
    full tensors on the CPU. The optimizer state is turned back into torch's own format (parameters
    numbered in the order of their groups), so that a run without FSDP resumes from it too.
    weights=False: everything but the model and optimizer ('dcp': path, to load them sharded)."""
    checkpoint = {**read_extra(path), 'dcp': path}
    if weights:
        state = load_keys({'model', 'optimizer'}, path)
        checkpoint['model'] = state['model']
        checkpoint['optimizer'] = [numbered(state['optimizer'])]
    return checkpoint


def numbered(optim_state):
    """An optimizer state keyed by parameter names (DCP's) -> torch's, keyed by parameter number."""
    number, groups = {}, []
    for group in optim_state['param_groups']:
        names = group['params']
        for name in names:
            number.setdefault(name, len(number))
        groups.append({**group, 'params': [number[name] for name in names]})
    return {'state': {number[name]: s for name, s in optim_state['state'].items()}, 'param_groups': groups}
