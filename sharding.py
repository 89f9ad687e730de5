"""FSDP2 (train.py's fsdp=True): parameters, gradients and optimizer state sharded over the ranks. Their
sharded checkpoints (torch.distributed.checkpoint directories) are written and read by checkpoint.py."""

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor


def shard_model(model, device_type, dtype, compile=False, log=print):
    """Shard `model` in place over all ranks: each transformer Block one FSDP unit (its parameters gathered just before
    it runs, freed after), the rest (embeddings, final norm, head) the root's. On GPUs with bf16: compute in bf16,
    gradients reduced in float32. compile: torch.compile each block (before sharding, as torchtitan does)."""
    from model import Block
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if device_type == 'cuda' and dtype == 'bfloat16' else MixedPrecisionPolicy())
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        if compile:
            block.compile()
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    log(f"fsdp over {dist.get_world_size()} ranks: rank 0 holds {local_bytes(model, [])['parameters']:,} bytes of parameters")
    return model


def clip_grad_norm(parameters, max_norm):
    """The gradients' norm over all shards (clip_grad_norm_ on DTensors: one all-reduce), as a plain tensor."""
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
