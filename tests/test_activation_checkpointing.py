"""activation_checkpointing='block' (model.CheckpointedBlock): the same loss and gradients as the plain blocks,
bit for bit in float32 with dropout on, for the three model kinds, through train.py's loop (gradient
accumulation), and under torch.compile; while the activations kept for the backward pass shrink.
Under FSDP on two processes: tests/test_fsdp.py."""
import copy

import pytest
import torch

import train
from model import (ACTIVATION_CHECKPOINTING, GPT, CheckpointedBlock, Encoder, EncoderConfig, GPTConfig, Seq2SeqConfig,
                   Seq2SeqTransformer)
from test_train import tiny_args, training_losses

SIZES = dict(n_layer=3, n_head=2, n_embd=32, vocab_size=50)


def model_and_batch(kind, dropout=0.1):
    """A tiny model of `kind` with dropout, and a training batch for it (its forward's arguments)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50, (4, 16), generator=g)
    if kind == 'gpt':
        return GPT(GPTConfig(block_size=16, dropout=dropout, **SIZES)), (ids, torch.roll(ids, -1, dims=1))
    if kind == 'seq2seq':
        return Seq2SeqTransformer(Seq2SeqConfig(src_block_size=16, tgt_block_size=16, dropout=dropout, **SIZES)), (ids, ids, ids)
    targets = torch.where(torch.rand(ids.shape, generator=g) < 0.3, ids, -1)
    return Encoder(EncoderConfig(block_size=16, dropout=dropout, **SIZES)), (ids, targets)


def loss_gradients_and_saved_bytes(net, batch):
    """(loss, {name: gradient}, bytes of the tensors autograd kept for the backward pass outside checkpoints)."""
    saved = []
    torch.manual_seed(1)  # the same dropout masks for both models
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
        _, loss = net(*batch)
    loss.backward()
    return loss, {name: p.grad for name, p in net.named_parameters()}, sum(saved)


@pytest.mark.parametrize('kind', ['gpt', 'seq2seq', 'encoder'])
def test_checkpointed_blocks_give_the_same_loss_and_gradients_bit_for_bit_and_keep_less(kind):
    torch.manual_seed(0)
    plain, batch = model_and_batch(kind)
    checkpointed = ACTIVATION_CHECKPOINTING['block'](copy.deepcopy(plain))
    assert all(type(b) is CheckpointedBlock for b in checkpointed.modules() if 'Block' in type(b).__name__)
    loss, grads, kept = loss_gradients_and_saved_bytes(plain, batch)
    loss_ckpt, grads_ckpt, kept_ckpt = loss_gradients_and_saved_bytes(checkpointed, batch)
    assert torch.equal(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys()
    for name, grad in grads.items():
        assert torch.equal(grad, grads_ckpt[name]), name
    assert kept_ckpt < kept / 3  # the blocks' inner activations are no longer kept


def test_checkpointed_blocks_under_torch_compile():
    """torch.compile traces the checkpoint (aot_eager: dynamo and AOT autograd, as inductor gets it, without
    its minutes of code generation on a CPU): the eager model's loss and gradients."""
    torch.manual_seed(0)
    plain, batch = model_and_batch('gpt', dropout=0.0)  # compiled random draws differ from eager ones
    compiled = torch.compile(ACTIVATION_CHECKPOINTING['block'](copy.deepcopy(plain)), backend='aot_eager')
    loss, grads, _ = loss_gradients_and_saved_bytes(plain, batch)
    loss_ckpt, grads_ckpt, _ = loss_gradients_and_saved_bytes(compiled, batch)
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt['_orig_mod.' + name], grad, rtol=1e-5, atol=1e-7)


def test_train_py_with_checkpointing_logs_the_same_losses(shakespeare_char_dir, tmp_path):
    """train.py's loop, dropout on, two micro-steps a step: the same losses, bit for bit."""
    for setting in ('none', 'block'):
        train.main(tiny_args(shakespeare_char_dir, tmp_path / setting, max_iters=4, dropout=0.2,
                             gradient_accumulation_steps=2, activation_checkpointing=setting))
    assert training_losses(tmp_path / 'block') == training_losses(tmp_path / 'none')
    assert len(training_losses(tmp_path / 'none')) == 4
