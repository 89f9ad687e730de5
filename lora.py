"""
LoRA (Hu et al. 2021, "Low-Rank Adaptation"): fine-tune a trained model by learning, beside each chosen
weight matrix W, a low-rank update B·A (rank r, far fewer numbers than W) while W stays frozen. The gradients
and AdamW's state are those of the adapters alone; a checkpoint holds them and the name and hash of the base.

    add_lora(net, rank, alpha, targets)   freeze net's weights, adapt the Linear layers of `targets`
    merge_lora(net)                       W + B·A·alpha/r as plain Linear layers: a model like any other
    frozen_hash(net)                      what identifies the base: a hash of the frozen weights
    changed_weights(net)                  what a checkpoint stores: every weight but the frozen ones
"""

import hashlib
import math

import torch
import torch.nn as nn
from torch.nn import functional as F

import model
from device import swap_modules

TARGETS = {'attn': model.Attention, 'mlp': model.MLP}  # lora_targets' parts: the modules whose Linear layers adapt


class LoRALinear(nn.Linear):
    """A frozen Linear (the same weight and bias, under the same names) plus a trained low-rank update:
    y = W x + b + (alpha / r) B A x. B starts at zero, so the first step is the base model's; A starts
    random (Kaiming uniform, as nn.Linear's weights), so B's first gradient is not zero."""

    def __init__(self, linear, rank, alpha):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device='meta')
        self.weight, self.bias = linear.weight, linear.bias
        like = dict(dtype=self.weight.dtype, device=self.weight.device)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x):
        return super().forward(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def merged(self):
        """A plain Linear computing the same: W + (alpha / r) B A."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device='meta')
        linear.weight = nn.Parameter((self.weight + self.lora_B @ self.lora_A * self.scale).detach())
        linear.bias = self.bias
        return linear


def target_parts(targets):
    """'attn+mlp' -> ('attn', 'mlp'); None for a part that is not one of TARGETS'."""
    parts = tuple(targets.split('+'))
    return parts if parts and all(part in TARGETS for part in parts) else None


def add_lora(net, rank, alpha, targets, trained=()):
    """Freeze every weight of `net` but those whose names start with `trained` (a head that starts fresh), and
    give each Linear layer of the modules `targets` names ('attn', 'mlp', 'attn+mlp') an adapter. In place."""
    kinds = tuple(TARGETS[part] for part in target_parts(targets))
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith(trained))
    for module in [m for m in net.modules() if isinstance(m, kinds)]:
        swap_modules(module, lambda child: LoRALinear(child, rank, alpha) if type(child) is nn.Linear else None)
    return net


def merge_lora(net):
    """Each LoRALinear of `net` replaced by the plain Linear it computes (LoRALinear.merged), every weight
    trainable again: a model like any other, to sample, export or fine-tune whole (its checkpoints whole). In place."""
    net.lora = None  # the record of the adapters (checkpoint.adapted): none are left
    return swap_modules(net, lambda module: module.merged() if isinstance(module, LoRALinear) else None).requires_grad_()


def frozen_hash(net):
    """SHA-256 of the names and bytes of `net`'s frozen weights: the base a LoRA checkpoint was trained on,
    recorded with it and checked when it is loaded again (the adapters mean nothing on other weights)."""
    digest = hashlib.sha256()
    for name, p in sorted(net.named_parameters(remove_duplicate=False), key=lambda item: item[0]):
        if not p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def frozen_names(net):
    """The names of `net`'s frozen weights, each name of a tied one."""
    return {name for name, p in net.named_parameters(remove_duplicate=False) if not p.requires_grad}


def changed_weights(net, state=None):
    """`net`'s state dict (or `state`, one of it) without its frozen weights: all of it for a model trained whole."""
    frozen = frozen_names(net)
    return {name: tensor for name, tensor in (net.state_dict() if state is None else state).items() if name not in frozen}
