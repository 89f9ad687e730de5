"""The GPT model: causality, shapes, generation with and without the KV cache,
parity with Hugging Face's GPT-2, optimizer groups, MFU and config validation."""
import math

import pytest
import torch

from conftest import switches, widen
from model import GPT, GPTConfig

VOCAB = 100


def tiny_gpt(seed=0, **overrides):
    """A small random GPT in eval mode (no dropout), the same for a given seed."""
    torch.manual_seed(seed)
    settings = dict(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.0)
    settings.update(overrides)
    return GPT(GPTConfig(**settings)).eval()


def random_tokens(*shape, seed=1):
    return torch.randint(VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def all_logits(model, idx):
    """Logits at every position: forward only computes them all when given targets."""
    logits, _ = model(idx, targets=torch.zeros_like(idx))
    return logits


# ---------------------------------------------------------------------------
# The forward pass


@pytest.mark.parametrize('pos_emb', ['learned', 'rope'])
def test_changing_a_token_leaves_earlier_logits_unchanged(pos_emb):
    model = tiny_gpt(pos_emb=pos_emb)
    idx = random_tokens(2, 16)
    changed = idx.clone()
    t = 9
    changed[:, t] = (changed[:, t] + 1) % VOCAB
    before, after = all_logits(model, idx), all_logits(model, changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, t:], before[:, t:])  # the change is seen from position t on


def test_rows_of_a_batch_do_not_mix():
    model = tiny_gpt()
    idx = random_tokens(3, 16)
    together = all_logits(model, idx)
    for row in range(3):
        torch.testing.assert_close(all_logits(model, idx[row:row + 1])[0], together[row], rtol=0, atol=1e-5)


def test_logits_shape_with_and_without_targets():
    model = tiny_gpt()
    idx = random_tokens(3, 10)
    logits, loss = model(idx, targets=random_tokens(3, 10, seed=2))
    assert logits.shape == (3, 10, VOCAB) and loss.shape == ()
    logits, loss = model(idx)
    assert logits.shape == (3, 1, VOCAB) and loss is None
    torch.testing.assert_close(logits[:, 0], all_logits(model, idx)[:, -1])


def test_initial_loss_is_that_of_a_uniform_guess():
    model = tiny_gpt(n_embd=64)
    _, loss = model(random_tokens(8, 16), targets=random_tokens(8, 16, seed=2))
    assert abs(loss.item() - math.log(VOCAB)) < 0.15


def test_targets_of_minus_one_are_ignored():
    model = tiny_gpt()
    idx, targets = random_tokens(2, 8), random_tokens(2, 8, seed=2)
    masked = targets.clone()
    masked[:, 4:] = -1
    _, loss = model(idx, targets=masked)
    logits = all_logits(model, idx)
    expected = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, VOCAB), targets[:, :4].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_sequence_longer_than_block_size_is_a_clear_error():
    model = tiny_gpt()
    with pytest.raises(ValueError, match='17 positions are more than the 16 this model reads'):
        model(random_tokens(1, 17))


# ---------------------------------------------------------------------------
# Generation


@pytest.mark.parametrize('pos_emb', ['learned', 'sinusoidal', 'rope'])
def test_kv_cache_generation_equals_full_recomputation(pos_emb):
    """Greedy decoding must not depend on the cache, also past block_size, where the
    context window slides and the cache has to be abandoned."""
    model = widen(tiny_gpt(pos_emb=pos_emb))
    prompt = random_tokens(2, 5)
    cached = model.generate(prompt, 40, temperature=0)
    recomputed = model.generate(prompt, 40, temperature=0, use_cache=False)
    assert cached.shape == (2, 45)
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached[:, :5], prompt)
    assert switches(cached[:, 5:]).min() >= 5  # not one token repeated: each step's context counts


def greedy_reference(model, prompt, steps):
    """Greedy decoding written out: argmax of the full forward pass over the last block_size tokens."""
    idx = prompt
    for _ in range(steps):
        next_token = all_logits(model, idx[:, -model.config.block_size:])[:, -1].argmax(dim=-1, keepdim=True)
        idx = torch.cat((idx, next_token), dim=1)
    return idx


def test_temperature_zero_is_argmax():
    model = tiny_gpt()
    prompt = random_tokens(2, 5)
    assert torch.equal(model.generate(prompt, 20, temperature=0), greedy_reference(model, prompt, 20))


@pytest.mark.parametrize('sampling', [dict(temperature=1.0, top_k=1), dict(temperature=1.0, top_p=1e-6)],
                         ids=['top_k=1', 'tiny top_p'])
def test_sampling_that_keeps_one_token_is_greedy(sampling):
    model = tiny_gpt()
    prompt = random_tokens(2, 5)
    torch.manual_seed(3)
    assert torch.equal(model.generate(prompt, 20, **sampling), model.generate(prompt, 20, temperature=0))


def test_sampling_is_reproducible_with_a_seed_and_varies_without():
    model = tiny_gpt()
    prompt = random_tokens(4, 5)
    torch.manual_seed(5)
    first = model.generate(prompt, 20, temperature=1.0)
    torch.manual_seed(5)
    assert torch.equal(model.generate(prompt, 20, temperature=1.0), first)
    assert not torch.equal(model.generate(prompt, 20, temperature=1.0), first)


def test_negative_temperature_raises():
    with pytest.raises(ValueError, match='temperature'):
        tiny_gpt().generate(random_tokens(1, 3), 2, temperature=-0.5)


# ---------------------------------------------------------------------------
# Hugging Face GPT-2 weights and context cropping


@pytest.fixture(scope='module')
def hf_gpt2_dir(tmp_path_factory):
    """A small random GPT-2 written by transformers' save_pretrained."""
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=32, vocab_size=VOCAB,
                                     activation_function='gelu_new', resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)
    path = tmp_path_factory.mktemp('hf_gpt2')
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(path)
    return path


def test_from_pretrained_matches_hugging_face_logits(hf_gpt2_dir):
    from transformers import GPT2LMHeadModel
    reference = GPT2LMHeadModel.from_pretrained(hf_gpt2_dir).eval()
    model = GPT.from_pretrained(str(hf_gpt2_dir)).eval()
    assert model.config.block_size == 32
    idx = random_tokens(2, 32)
    with torch.no_grad():
        expected = reference(idx).logits
        actual = all_logits(model, idx)
    assert (actual - expected).abs().max().item() <= 1e-4


def test_from_pretrained_smaller_block_size_crops(hf_gpt2_dir):
    full = GPT.from_pretrained(str(hf_gpt2_dir)).eval()
    cropped = GPT.from_pretrained(str(hf_gpt2_dir), dict(block_size=8)).eval()
    assert cropped.config.block_size == 8
    assert cropped.transformer.wpe.weight.shape == (8, 64)
    idx = random_tokens(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(all_logits(cropped, idx), all_logits(full, idx))


@pytest.mark.parametrize('override, message', [
    (dict(block_size=64), 'block_size 64 is larger than'),
    (dict(n_layer=3), 'only dropout and block_size can be overridden'),
])
def test_from_pretrained_rejects_bad_overrides(hf_gpt2_dir, override, message):
    with pytest.raises(ValueError, match=message):
        GPT.from_pretrained(str(hf_gpt2_dir), override)


@pytest.mark.parametrize('pos_emb', ['learned', 'rope'])
def test_crop_block_size_keeps_the_first_positions(pos_emb):
    model = tiny_gpt(pos_emb=pos_emb)
    idx = random_tokens(2, 8)
    expected = all_logits(model, idx)
    model.crop_block_size(8)
    assert model.config.block_size == 8
    torch.testing.assert_close(all_logits(model, idx), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match='9 positions are more than the 8 this model reads'):
        model(random_tokens(1, 9))


# ---------------------------------------------------------------------------
# Optimizers, MFU, config validation


@pytest.mark.parametrize('optimizer', ['adamw', 'muon'])
def test_weight_decay_applies_to_matrices_only(optimizer):
    model = tiny_gpt(bias=True)
    optimizers = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu', optimizer)
    assert [type(opt).__name__ for opt in optimizers] == (['AdamW'] if optimizer == 'adamw' else ['Muon', 'AdamW'])
    seen = []
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group['params']:
                assert (group['weight_decay'] > 0) == (p.dim() >= 2), f'decay {group["weight_decay"]} on a {p.dim()}-D tensor'
                seen.append(id(p))
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each parameter exactly once (tied ones once)
    if optimizer == 'muon':  # Muon takes the hidden matrices only, not the embeddings
        muon_params = {id(p) for p in optimizers[0].param_groups[0]['params']}
        assert id(model.transformer.wte.weight) not in muon_params
        assert muon_params == {id(p) for name, p in model.transformer.h.named_parameters() if p.dim() == 2}


def test_estimate_mfu_is_flops_over_peak():
    model = tiny_gpt()
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters()) - cfg.block_size * cfg.n_embd  # without positions
    flops_per_token = 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    tokens, seconds = 1000, 0.5
    peak = 4 * flops_per_token * tokens / seconds
    assert model.estimate_mfu(tokens, seconds, peak) == pytest.approx(0.25)


@pytest.mark.parametrize('settings, message', [
    (dict(n_embd=30, n_head=4), r'n_embd \(30\) must be divisible by n_head \(4\)'),
    (dict(n_layer=-1), 'n_layer must be positive'),
    (dict(vocab_size=0), 'vocab_size must be positive'),
    (dict(block_size=-8), 'block_size must be positive'),
    (dict(dropout=1.0), 'dropout must be in'),
    (dict(pos_emb='alibi'), 'pos_emb must be one of'),
])
def test_gpt_config_rejects_invalid_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**settings)
