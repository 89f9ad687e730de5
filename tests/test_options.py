"""The modern architecture options of model.py (RoPE, RMSNorm, QK-norm, ReLU^2/SwiGLU, no biases) and
the Muon optimizer, on tiny models."""
import itertools
import math

import pytest
import torch
import torch.nn as nn

from conftest import widen
from generate import KVCache
from model import GPT, Block, GPTConfig, Seq2SeqConfig, Seq2SeqTransformer, SelfAttention, apply_rotary, rotary_tables

VOCAB = 32
BLOCK = 16


def tiny_gpt(**options):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32, dropout=0.0, **options))


def random_tokens(rows, length, seed=1):
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def option_cases():
    """The 18 combinations of position encoding x norm x MLP. The other options take turns across
    them (each with its own period), so that each of their values meets every position encoding."""
    kinds = itertools.product(('learned', 'sinusoidal', 'rope'), ('layernorm', 'rmsnorm'), ('gelu', 'relu2', 'swiglu'))
    for i, (pos_emb, norm, mlp) in enumerate(kinds):
        yield dict(pos_emb=pos_emb, norm=norm, mlp=mlp, qk_norm=i % 2 == 1, bias=i % 5 < 3)


def case_id(options):
    return '-'.join(f"{k}={v}" for k, v in options.items())


def check_structure(model, options):
    """The options really shaped the model."""
    attn = model.transformer.h[0].attn
    assert attn.c_attn.out_features == 3 * 32  # queries, keys and values
    assert (attn.q_norm is not None) == (attn.k_norm is not None) == options['qk_norm']
    norm_class = nn.RMSNorm if options['norm'] == 'rmsnorm' else nn.LayerNorm
    assert isinstance(model.transformer.ln_f, norm_class) and isinstance(model.transformer.h[0].ln_1, norm_class)
    names = [name for name, _ in model.named_parameters()]
    assert ('transformer.wpe.weight' in names) == (options['pos_emb'] == 'learned')
    assert any(name.endswith('.bias') for name in names) == options['bias']
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    mlp_width = model.transformer.h[0].mlp.c_proj.in_features
    assert model.transformer.h[0].mlp.c_fc.out_features == (2 if options['mlp'] == 'swiglu' else 1) * mlp_width


@pytest.mark.parametrize('options', list(option_cases()), ids=case_id)
def test_every_option_combination_builds_and_trains_a_step(options):
    model = tiny_gpt(**options)
    check_structure(model, options)
    data = random_tokens(4, BLOCK + 1)
    x, y = data[:, :-1], data[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _, loss = model(x, y)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    optimizer.step()
    with torch.no_grad():
        _, loss_after = model(x, y)
    assert loss_after < loss


def test_rope_attention_scores_depend_only_on_relative_positions():
    torch.manual_seed(0)
    T, head_dim, shift = 8, 16, 37
    q, k = torch.randn(2, T, 3, head_dim), torch.randn(2, T, 3, head_dim)  # (B, T, heads, D)
    cos, sin = rotary_tables(T + shift, head_dim, theta=10000.0)

    def dot_products(q, k):  # (B, heads, T, T)
        return q.transpose(1, 2) @ k.transpose(1, 2).transpose(-2, -1)

    def scores(start):  # queries and keys at positions start .. start + T - 1
        c, s = cos[start:start + T], sin[start:start + T]
        return dot_products(apply_rotary(q, c, s), apply_rotary(k, c, s))

    torch.testing.assert_close(scores(shift), scores(0), atol=1e-4, rtol=1e-4)
    # the rotation does something: scores differ from the unrotated q.k except on the diagonal
    unrotated = dot_products(q, k)
    torch.testing.assert_close(scores(0).diagonal(dim1=-2, dim2=-1), unrotated.diagonal(dim1=-2, dim2=-1))
    assert not torch.allclose(scores(0), unrotated, atol=1e-2)


@pytest.mark.parametrize('pos_emb', ['learned', 'sinusoidal', 'rope'])
def test_kv_cache_fed_in_chunks_gives_the_full_forward_logits(pos_emb):
    """Chunks of 5, 4, then 1 token fed through the cache: each chunk starts at an offset
    (the positions, the rotation angles and the causal mask must all follow it)."""
    model = tiny_gpt(pos_emb=pos_emb, qk_norm=True).eval()
    seq = random_tokens(2, 12)
    with torch.no_grad():
        full, _ = model(seq, targets=seq)  # with targets: logits at every position
        cache = KVCache(max_len=12)
        for start, end in ((0, 5), (5, 9), (9, 10), (10, 11), (11, 12)):
            last, _ = model(seq[:, start:end], cache=cache)
            torch.testing.assert_close(last[:, -1], full[:, end - 1], atol=1e-5, rtol=1e-5)
    assert cache.pos == 12


def test_causal_self_attention_is_the_formula_head_by_head():
    """Each head compares its queries with its keys (its own slice of channels), causally masked, and mixes
    its values: written out here with an explicit softmax, then the heads side by side and projected."""
    torch.manual_seed(0)
    B, T, n_head, head_dim = 2, 7, 4, 8
    attn = SelfAttention(GPTConfig(n_head=n_head, n_embd=n_head * head_dim, bias=True)).eval()
    x = torch.randn(B, T, n_head * head_dim)

    def heads(t):  # (B, T, h * D) -> (B, h, T, D)
        return t.view(B, T, -1, head_dim).transpose(1, 2)

    q, k, v = (heads(t) for t in attn.c_attn(x).split(n_head * head_dim, dim=-1))
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float('-inf'))
    y = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, n_head * head_dim)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, is_causal=True), attn.c_proj(y))
        assert not torch.allclose(attn(x), attn.c_proj(y))  # without the mask: the future is read


def test_cached_greedy_generation_equals_full_rerun_with_all_modern_options():
    model = widen(tiny_gpt(pos_emb='rope', norm='rmsnorm', qk_norm=True, mlp='swiglu').eval())
    prompt = random_tokens(2, 3)
    cached = model.generate(prompt, 20, temperature=0.0, use_cache=True)  # 23 > BLOCK: crosses the block too
    rerun = model.generate(prompt, 20, temperature=0.0, use_cache=False)
    assert torch.equal(cached, rerun)
    assert cached[:, 3:].unique().numel() > 4  # not two runs of one repeated token


@pytest.mark.parametrize('optimizer', ['adamw', 'muon'])
def test_optimizer_memorises_a_few_sequences(optimizer):
    model = tiny_gpt(pos_emb='rope', norm='rmsnorm', mlp='swiglu')
    data = random_tokens(4, BLOCK + 1)
    x, y = data[:, :-1], data[:, 1:]
    optimizers = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), 'cpu', optimizer)
    assert len(optimizers) == (2 if optimizer == 'muon' else 1)
    losses = []
    for _ in range(30):
        _, loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def tiny_seq2seq(**options):
    torch.manual_seed(0)
    return Seq2SeqTransformer(Seq2SeqConfig(vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=32, dropout=0.0,
                                            src_block_size=BLOCK, tgt_block_size=BLOCK, **options))


def params_of(optimizer):
    return [p for group in optimizer.param_groups for p in group['params']]


@pytest.mark.parametrize('make_model', [
    lambda: tiny_gpt(),
    lambda: tiny_gpt(bias=True, qk_norm=True, mlp='swiglu'),
    lambda: tiny_seq2seq(),
], ids=['gpt', 'gpt-bias-qknorm-swiglu', 'seq2seq'])
def test_muon_gets_exactly_the_hidden_matrices(make_model):
    model = make_model()
    muon, adamw = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu', 'muon', muon_momentum=0.8)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert muon.defaults['momentum'] == 0.8 and adamw.defaults['betas'] == (0.9, 0.95)
    hidden = {id(m.weight) for block in model.modules() if isinstance(block, Block)
              for m in block.modules() if isinstance(m, nn.Linear)}
    muon_ids, adamw_ids = [id(p) for p in params_of(muon)], [id(p) for p in params_of(adamw)]
    assert len(muon_ids) == len(set(muon_ids)) and set(muon_ids) == hidden
    assert all(p.dim() == 2 for p in params_of(muon))
    # everything else (embeddings, head, norm gains, biases) goes to AdamW, once
    assert sorted(muon_ids + adamw_ids) == sorted(id(p) for p in model.parameters())


def test_seq2seq_trains_and_decodes_with_modern_options():
    # no label smoothing, so that the memorised targets become the clear argmax
    model = tiny_seq2seq(pos_emb='rope', norm='rmsnorm', mlp='swiglu', qk_norm=True, label_smoothing=0.0)
    pad, bos, eos = model.config.pad_id, model.config.bos_id, model.config.eos_id
    src = torch.randint(3, VOCAB, (4, 10), generator=torch.Generator().manual_seed(1))
    src[0, 6:] = pad  # one padded sentence: the encoder must ignore the padding
    tgt = torch.randint(3, VOCAB, (4, 8), generator=torch.Generator().manual_seed(2))
    tgt_in = torch.cat((torch.full((4, 1), bos), tgt), dim=1)
    targets = torch.cat((tgt, torch.full((4, 1), eos)), dim=1)
    optimizer, = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), 'cpu', 'adamw')
    losses = []
    for _ in range(40):
        _, loss = model(src, tgt_in, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    # every first target token differs from row to row: only the encoder, through cross-attention, can tell
    assert model.generate(src, use_cache=True) == model.generate(src, use_cache=False) == tgt.tolist()
    assert model.generate(src, beam_size=2, use_cache=True) == model.generate(src, beam_size=2, use_cache=False)


@pytest.mark.parametrize('options', [dict(), dict(pos_emb='rope', qk_norm=True), dict(pos_emb='sinusoidal', norm='rmsnorm')],
                         ids=['gpt2', 'rope-qknorm', 'sinusoidal-rmsnorm'])
def test_attention_written_out_equals_the_fused_kernel(options):
    """fused_attention=False runs q k^T / sqrt(d), mask, softmax, @ v as plain tensor code: same
    numbers as F.scaled_dot_product_attention, for the causal mask, through the KV cache, and
    for the encoder-decoder's padding mask and cross-attention."""
    fused, written = tiny_gpt(**options), tiny_gpt(fused_attention=False, **options)
    written.load_state_dict(fused.state_dict())
    seq = random_tokens(2, BLOCK)
    with torch.no_grad():
        torch.testing.assert_close(written(seq, seq)[0], fused(seq, seq)[0], atol=1e-5, rtol=1e-5)
        cache = KVCache(max_len=BLOCK)
        written(seq[:, :5], cache=cache)
        torch.testing.assert_close(written(seq[:, 5:9], cache=cache)[0], fused(seq[:, :9])[0], atol=1e-5, rtol=1e-5)
    settings = dict(vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=32, src_block_size=BLOCK, tgt_block_size=BLOCK, **options)
    torch.manual_seed(0)
    fused = Seq2SeqTransformer(Seq2SeqConfig(**settings)).eval()
    written = Seq2SeqTransformer(Seq2SeqConfig(fused_attention=False, **settings)).eval()
    written.load_state_dict(fused.state_dict())
    src = random_tokens(2, 7)
    src[0, 4:] = 0  # padding
    tgt = random_tokens(2, 6, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(written(src, tgt)[0], fused(src, tgt)[0], atol=1e-5, rtol=1e-5)


def test_attention_written_out_trains_like_the_fused_kernel_with_dropout_off():
    fused, written = tiny_gpt(), tiny_gpt(fused_attention=False)
    seq = random_tokens(4, BLOCK + 1)
    for model in (fused, written):
        _, loss = model(seq[:, :-1], seq[:, 1:])
        loss.backward()
    for (name, p), q in zip(fused.named_parameters(), written.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)
