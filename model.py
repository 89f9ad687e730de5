"""
Transformers in one file, built from one set of parts. Read it top to bottom:

  configuration -> positions (learned, sinusoidal, rotary) -> attention (masks, heads, the
  formula, causal / bidirectional / cross) -> MLP -> block -> the models.

- GPT: decoder-only language model, GPT-2 compatible by default (loads its weights).
- Seq2SeqTransformer: the encoder-decoder of "Attention Is All You Need", for translation.
- Encoder: encoder-only (BERT-style): masked-language-model pretraining, then sentence classification.

Generation (KV cache, sampling, greedy and beam search) lives in generate.py; device and dtype
choice, peak FLOPs and hardware-specific speed-ups in device.py. This file is plain PyTorch.

References: GPT-2 (Radford et al. 2019), "Attention Is All You Need" (Vaswani et al. 2017),
nanoGPT (Karpathy). Modern options (RoPE, RMSNorm, QK-norm, ReLU^2/SwiGLU, GQA) are off
by default so that GPT-2 checkpoints load unchanged.
"""

import inspect
import math
from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.nn as nn
from torch.nn import functional as F

import generate

# ---------------------------------------------------------------------------
# Configuration


@dataclass
class TransformerConfig:
    """Architecture settings shared by every model in this file."""
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2; False is a bit faster and as good
    # Modern options. The defaults reproduce GPT-2.
    n_kv_head: int = 0  # grouped-query attention: heads of keys/values shared by groups of query heads; 0 = n_head
    pos_emb: str = 'learned'  # 'learned' (GPT-2) | 'sinusoidal' (the 2017 paper) | 'rope' (rotary, relative)
    rope_theta: float = 10000.0
    norm: str = 'layernorm'  # 'layernorm' | 'rmsnorm' (no mean subtraction: cheaper, as good)
    qk_norm: bool = False  # normalise queries and keys per head: keeps attention logits bounded at high lr
    mlp: str = 'gelu'  # 'gelu' | 'gelu_tanh' (GPT-2's approximation) | 'relu2' (ReLU squared, cheap and strong) | 'swiglu' (gated)
    tie_embeddings: bool = True  # the output head reuses the token embedding matrix
    fused_attention: bool = True  # PyTorch's fused kernel; False runs the formula as written (same numbers, slower)

    def __post_init__(self):
        for name in ('vocab_size', 'n_layer', 'n_head', 'n_embd'):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head < 0 or (self.n_kv_head and self.n_head % self.n_kv_head):
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        for name in ('dropout', 'label_smoothing'):  # label_smoothing: the models that have it
            if not 0.0 <= getattr(self, name, 0.0) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        choices = {'pos_emb': ('learned', 'sinusoidal', 'rope'), 'norm': ('layernorm', 'rmsnorm'),
                   'mlp': ('gelu', 'gelu_tanh', 'relu2', 'swiglu')}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.pos_emb == 'rope' and self.head_dim % 2:
            raise ValueError(f"rope needs an even head size, got n_embd/n_head = {self.head_dim}")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def kv_heads(self):
        return self.n_kv_head or self.n_head


@dataclass
class GPTConfig(TransformerConfig):
    block_size: int = 1024  # longest sequence (context) the model reads

    def __post_init__(self):
        super().__post_init__()
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")


@dataclass
class Seq2SeqConfig(TransformerConfig):
    vocab_size: int = 8000  # one joint source+target subword vocabulary
    n_layer: int = 3  # in the encoder and again in the decoder
    n_head: int = 8
    n_embd: int = 512
    dropout: float = 0.1
    pos_emb: str = 'sinusoidal'
    src_block_size: int = 128  # longest source sentence, in tokens
    tgt_block_size: int = 128  # longest target sentence, including <bos>
    share_embeddings: bool = True  # source and target share one embedding (joint vocabulary)
    label_smoothing: float = 0.1  # the paper's 0.1: hurts perplexity, helps BLEU
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self):
        super().__post_init__()
        if self.src_block_size <= 0 or self.tgt_block_size <= 0:
            raise ValueError("src_block_size and tgt_block_size must be positive")


@dataclass
class EncoderConfig(TransformerConfig):
    vocab_size: int = 8192  # a lowercase subword vocabulary with [PAD] [UNK] [CLS] [SEP] [MASK]
    block_size: int = 128  # longest sequence, [CLS] and [SEP]s included
    n_classes: int = 0  # 0: a masked-language model (pretraining); >0: a classifier of [CLS] (fine-tuning)
    label_smoothing: float = 0.1  # the classifier's only (not the masked-LM's): +0.8 points on SST-2 dev, README
    pad_id: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if self.n_classes < 0 or self.n_classes == 1:
            raise ValueError(f"n_classes must be 0 (masked-language model) or at least 2, got {self.n_classes}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} is outside the vocabulary of {self.vocab_size}")


def config_fields(config_class):
    return {f.name for f in fields(config_class)}


# ---------------------------------------------------------------------------
# Positions: attention itself is blind to order, so each token must be told where it is


def sinusoidal_positions(length, dim):
    """The paper's fixed encoding: sines and cosines of geometrically spaced wavelengths,
    so that any relative offset is a linear function of the encodings."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


def rotary_tables(length, head_dim, theta):
    """cos and sin of each position's rotation angles, (length, head_dim // 2) each."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """RoPE: rotate pairs of channels by an angle proportional to the position, so the
    dot product of a query and a key depends only on their distance. x: (B, T, H, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # the same angles for every head
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class PositionalEncoding(nn.Module):
    """Where each token is. 'learned': a trained vector per position, added to the input
    (GPT-2's wpe). 'sinusoidal': the paper's fixed vectors, added. 'rope': nothing is added;
    attention rotates queries and keys instead, with the tables returned here. Computed tables
    (sinusoidal, rope) grow on demand, so such a model reads inputs longer than it was trained on."""

    def __init__(self, config, max_len):
        super().__init__()
        self.kind, self.n_embd, self.head_dim, self.rope_theta = config.pos_emb, config.n_embd, config.head_dim, config.rope_theta
        if self.kind == 'learned':
            self.weight = nn.Parameter(torch.randn(max_len, config.n_embd) * 0.02)
        else:
            self.make_tables(max_len)

    def make_tables(self, length):
        if self.kind == 'sinusoidal':
            self.register_buffer('table', sinusoidal_positions(length, self.n_embd), persistent=False)
        else:
            cos, sin = rotary_tables(length, self.head_dim, self.rope_theta)
            self.register_buffer('cos', cos, persistent=False)
            self.register_buffer('sin', sin, persistent=False)

    def max_len(self):
        """Positions this module can encode now (the learned table's fixed length, or the tables' current one)."""
        return len(self.weight if self.kind == 'learned' else self.table if self.kind == 'sinusoidal' else self.cos)

    def forward(self, x, start=0, position_ids=None):
        """x: (B, T, C) token embeddings of positions start..start+T-1, or of position_ids (B, T) when
        given (packed sentences: each one's positions count from 0) -> (x, rope tables or None)."""
        end = start + x.size(1)  # position_ids count within their row: below x.size(1) too
        at = slice(start, end) if position_ids is None else position_ids
        if self.kind == 'learned':
            if end > self.max_len():
                raise ValueError(f"position {end - 1} is past the {self.max_len()} learned positions of this model")
            return x + self.weight[at], None
        if end > self.max_len():
            old = next(iter(self.buffers()))  # the new tables take its device and dtype (bf16 weights for sampling)
            self.make_tables(max(end, 2 * self.max_len()))
            self.to(old.device, old.dtype)
        if self.kind == 'sinusoidal':
            return x + self.table[at], None
        return x, (self.cos[at].to(x.dtype), self.sin[at].to(x.dtype))

    def crop(self, max_len):
        if self.kind == 'learned':
            self.weight = nn.Parameter(self.weight.data[:max_len].clone())
        for name, table in list(self.named_buffers()):
            setattr(self, name, table[:max_len].clone())


# ---------------------------------------------------------------------------
# Attention


def causal_mask(T, past, device):
    """(T, past + T) bool, True where query i may read key j: itself and everything before it,
    including `past` earlier positions already in the KV cache. The decoder cannot peek ahead."""
    return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)


def padding_mask(tokens, pad_id):
    """(B, 1, 1, S) bool, True at real tokens: attention never reads <pad>. A row of padding only
    (an empty sentence) keeps its first position readable, so its softmax is finite, not 0/0."""
    mask = tokens != pad_id
    mask[:, 0] |= ~mask.any(dim=1)
    return mask[:, None, None, :]


def packed_mask(position_ids, real):
    """(B, 1, T, T) bool for rows that hold several sentences one after another (packed, to spare the
    padding): a token reads only the real tokens of its own sentence, so each sentence is encoded as if
    it were alone. position_ids: (B, T), each token's position in its sentence (0 starts a sentence)."""
    sentence = (position_ids == 0).cumsum(dim=1)  # which sentence of its row each token is in
    return ((sentence[:, :, None] == sentence[:, None, :]) & real[:, None, :])[:, None]


def split_heads(x, n_head):
    """(B, T, n_head * D) -> (B, T, n_head, D): each head attends with its own slice of channels."""
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head)


def merge_heads(y):
    """(B, n_head, T, D) -> (B, T, n_head * D): the heads' outputs side by side, for the output projection."""
    B, H, T, D = y.shape
    return y.transpose(1, 2).reshape(B, T, H * D)


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, enable_gqa=False):
    """softmax(q k^T / sqrt(d)) v, written out: what F.scaled_dot_product_attention computes in one
    fused kernel. q: (B, H, T, D); k, v: (B, H_kv, S, D); attn_mask: bool, True = may attend."""
    if enable_gqa:  # grouped-query attention: each k/v head serves H / H_kv query heads
        k, v = k.repeat_interleave(q.size(1) // k.size(1), dim=1), v.repeat_interleave(q.size(1) // v.size(1), dim=1)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, H, T, S): how well each query matches each key
    if is_causal:
        attn_mask = causal_mask(q.size(-2), k.size(-2) - q.size(-2), q.device)
    if attn_mask is not None:
        att = att.masked_fill(~attn_mask, float('-inf'))
    att = F.softmax(att, dim=-1)  # each query's weights over the keys sum to 1
    if dropout_p > 0.0:
        att = F.dropout(att, dropout_p)
    return att @ v  # (B, H, T, D): the values, mixed by those weights


class Attention(nn.Module):
    """Multi-head attention: each head compares queries with keys and mixes the values accordingly.

    mode 'causal': position t sees positions <= t (decoder self-attention).
    mode 'bidirectional': every position sees every non-padding position (encoder).
    mode 'cross': queries from x, keys and values from `memory`, the encoder output.
    """

    def __init__(self, config, mode='causal'):
        super().__init__()
        assert mode in ('causal', 'bidirectional', 'cross')
        self.mode = mode
        self.n_head, self.n_kv_head = config.n_head, config.kv_heads
        q_dim, kv_dim = config.n_head * config.head_dim, config.kv_heads * config.head_dim
        self.qkv_dims = (q_dim, kv_dim, kv_dim)
        if mode == 'cross':
            self.c_q = nn.Linear(config.n_embd, q_dim, bias=config.bias)
            self.c_kv = nn.Linear(config.n_embd, 2 * kv_dim, bias=config.bias)
        else:  # one matmul for q, k and v together (GPT-2's c_attn)
            self.c_attn = nn.Linear(config.n_embd, q_dim + 2 * kv_dim, bias=config.bias)
        self.c_proj = nn.Linear(q_dim, config.n_embd, bias=config.bias)
        self.q_norm = make_norm(config, config.head_dim) if config.qk_norm else None
        self.k_norm = make_norm(config, config.head_dim) if config.qk_norm else None
        self.rotary = config.pos_emb == 'rope' and mode != 'cross'  # cross-attention has no shared positions
        self.attend = F.scaled_dot_product_attention if config.fused_attention else scaled_dot_product_attention
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def norm_heads(self, x, norm):
        """QK-norm of heads (B, T, H, D), if configured. Under autocast the heads arrive in bf16: the
        norm and the rotation after it run in float32, as their gains and tables are (angles need the precision)."""
        if (norm is not None or self.rotary) and torch.is_autocast_enabled(x.device.type):
            x = x.float()
        return x if norm is None else norm(x)

    def project_memory(self, memory):
        """Cross-attention's keys and values: projections of the encoder output, (B, S, heads, D)."""
        k, v = self.c_kv(memory).chunk(2, dim=-1)
        return self.norm_heads(split_heads(k, self.n_kv_head), self.k_norm), split_heads(v, self.n_kv_head)

    def forward(self, x, mask=None, memory=None, rope=None, cache=None):
        """x: (B, T, C). mask: bool, True where a key may be attended, broadcastable to
        (B, n_head, T, S): the padding mask. rope: (cos, sin) for x's positions.
        cache: a generate.KVCache during generation."""
        if self.mode == 'cross':
            q = split_heads(self.c_q(x), self.n_head)
            k, v = self.project_memory(memory) if cache is None else cache.cross(self, memory)
        else:
            q, k, v = self.c_attn(x).split(self.qkv_dims, dim=-1)
            q, k, v = split_heads(q, self.n_head), split_heads(k, self.n_kv_head), split_heads(v, self.n_kv_head)
            k = self.norm_heads(k, self.k_norm)
        q = self.norm_heads(q, self.q_norm)
        if self.rotary:  # after the norms: rotating first would let the per-channel gains undo it
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        is_causal = False
        if self.mode == 'causal':
            past = 0 if cache is None else cache.pos
            if cache is not None:
                k, v = cache.append(self, k, v)
            T = q.size(2)
            if T > 1 and past == 0:
                is_causal = True  # the causal mask: query t sees keys 0..t
            elif T > 1:  # new queries after a cached prefix: query i sees keys 0..past+i
                mask = causal_mask(T, past, x.device)
        y = self.attend(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0,
                        enable_gqa=self.n_kv_head != self.n_head)
        return self.resid_dropout(self.c_proj(merge_heads(y)))


# ---------------------------------------------------------------------------
# MLP and block


def make_norm(config, dim=None):
    """LayerNorm (GPT-2) or RMSNorm (no mean subtraction: cheaper, as good)."""
    dim = dim or config.n_embd
    if config.norm == 'rmsnorm':
        return nn.RMSNorm(dim)
    return nn.LayerNorm(dim, bias=config.bias)


def relu_squared(x):
    """relu(x)^2 (Primer, So et al. 2021): sparse like ReLU, smooth at zero."""
    return F.relu(x).square()


ACTIVATIONS = {
    'gelu': F.gelu,  # exact (erf); on a CPU several times faster than the tanh form
    'gelu_tanh': partial(F.gelu, approximate='tanh'),  # the approximation GPT-2 was trained with: its weights want it
    'relu2': relu_squared,
}


class MLP(nn.Module):
    """Position-wise feed-forward network: widen, non-linearity, project back. Attention moves
    information between positions; this is where each position computes on what it gathered."""

    def __init__(self, config):
        super().__init__()
        self.kind = config.mlp
        if self.kind == 'swiglu':  # two input matrices, so 2/3 of the width keeps the parameter count
            hidden = 64 * math.ceil(8 * config.n_embd / 3 / 64)
            self.c_fc = nn.Linear(config.n_embd, 2 * hidden, bias=config.bias)
        else:
            hidden = 4 * config.n_embd
            self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
            self.activation = ACTIVATIONS[self.kind]
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = self.c_fc(x)
        if self.kind == 'swiglu':  # SwiGLU: one half of the units gates the other
            gate, value = x.chunk(2, dim=-1)
            x = F.silu(gate) * value
        else:
            x = self.activation(x)
        return self.dropout(self.c_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), [x + cross-attention(norm(x))], x + mlp(norm(x)).
    Each part adds to the residual stream x instead of replacing it, so gradients flow straight
    through deep stacks; normalising each part's input (pre-norm) keeps training stable.
    causal=False gives an encoder block; cross=True adds cross-attention (decoder of a seq2seq model)."""

    def __init__(self, config, causal=True, cross=False):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = Attention(config, 'causal' if causal else 'bidirectional')
        self.cross_attn = None
        if cross:
            self.ln_cross = make_norm(config)
            self.cross_attn = Attention(config, 'cross')
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, mask=None, rope=None, memory=None, memory_mask=None, cache=None):
        x = x + self.attn(self.ln_1(x), mask=mask, rope=rope, cache=cache)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.ln_cross(x), mask=memory_mask, memory=memory, cache=cache)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------------
# What every model here shares: the stack, initialisation, optimizers, FLOPs


def embedding_scale(config):
    """The paper scales embeddings by sqrt(n_embd) so that the fixed sinusoids do not drown them."""
    return math.sqrt(config.n_embd) if config.pos_emb == 'sinusoidal' else 1.0


class TransformerModel(nn.Module):

    def run_stack(self, tokens, embedding, positions, blocks, final_norm, cache=None, input_norm=None,
                  position_ids=None, **block_args):
        """The path every stack takes: token embedding, positions, [a norm,] dropout, the blocks, a final norm.
        With a cache the tokens continue at position cache.pos, which then moves past them."""
        start = 0 if cache is None else cache.pos
        x, rope = positions(embedding(tokens) * self.emb_scale, start, position_ids)
        x = self.drop(x if input_norm is None else input_norm(x))
        for block in blocks:
            x = block(x, rope=rope, cache=cache, **block_args)
        if cache is not None:
            cache.pos += tokens.size(1)
        return final_norm(x)

    def init_weights(self, n_residual_layers):
        """GPT-2 initialisation: N(0, 0.02) everywhere, and the projections that write into
        the residual stream scaled by 1/sqrt(n_residual_layers) so its variance stays put."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(n_residual_layers))

    def get_num_params(self, non_embedding=True):
        """Parameter count; position tables are left out by default, as in the GPT-2 papers' counts."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(p.numel() for m in self.modules() if isinstance(m, PositionalEncoding) for p in m.parameters())
        return n

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, optimizer='adamw', muon_momentum=0.95,
                             muon_class=torch.optim.Muon):
        """AdamW, or Muon for the 2-D hidden matrices plus AdamW for the rest. Returns a list.
        muon_class: torch's Muon, or a variant of it for the hardware (device.muon_class).
        Weight decay applies to matrices only: biases and norm gains are not decayed."""
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        embeddings |= {id(p) for m in self.modules() if isinstance(m, PositionalEncoding) for p in m.parameters()}
        embeddings |= {id(head.weight) for head in self.output_heads()}
        matrices = [p for p in params.values() if p.dim() >= 2 and id(p) not in embeddings]
        if optimizer == 'adamw':
            matrices += [p for p in params.values() if id(p) in embeddings]
        elif optimizer != 'muon':
            raise ValueError(f"optimizer must be 'adamw' or 'muon', got {optimizer!r}")
        in_matrices = {id(p) for p in matrices}
        others = [p for p in params.values() if id(p) not in in_matrices]
        fused = device_type in ('cuda', 'cpu') and 'fused' in inspect.signature(torch.optim.AdamW).parameters
        if optimizer == 'adamw':
            groups = [{'params': matrices, 'weight_decay': weight_decay}, {'params': others, 'weight_decay': 0.0}]
            return [torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)]
        # Muon orthogonalises each matrix update (Newton-Schulz), which suits hidden layers only;
        # 'match_rms_adamw' scales its steps like AdamW's, so one learning_rate serves both.
        adam_groups = [{'params': [p for p in others if p.dim() >= 2], 'weight_decay': weight_decay},
                       {'params': [p for p in others if p.dim() < 2], 'weight_decay': 0.0}]
        return [muon_class(matrices, lr=learning_rate, weight_decay=weight_decay, momentum=muon_momentum,
                           adjust_lr_fn='match_rms_adamw'),
                torch.optim.AdamW(adam_groups, lr=learning_rate, betas=betas, fused=fused)]

    def smoothing(self):
        """Label smoothing: the training target puts label_smoothing of its probability evenly on every
        class (Szegedy et al., 2016), so the model is not pushed to ever more confident logits.
        Evaluation reports the plain cross-entropy."""
        return self.config.label_smoothing if self.training else 0.0

    def output_heads(self):
        """The layers that turn vectors into predictions: AdamW trains them even under Muon, like the
        embeddings (Muon's orthogonalised updates suit hidden matrices only)."""
        return [self.lm_head]

    def estimate_mfu(self, tokens_per_iter, dt, peak, **task):
        """Model FLOPs utilisation: achieved FLOP/s over the device's peak (PaLM paper, appendix B).
        task: what flops_per_token needs to know of the training (a masked-LM's mask_prob)."""
        return self.flops_per_token(**task) * tokens_per_iter / dt / peak

    def attention_flops_per_token(self, context):
        return 12 * self.config.n_layer * self.config.n_embd * context


# ---------------------------------------------------------------------------
# GPT: decoder-only language model

# Hugging Face's GPT-2 stores these as Conv1D, (in, out): transposed from nn.Linear.
HF_TRANSPOSED = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
HF_ACTIVATIONS = {'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu': 'gelu'}  # transformers' name -> our mlp


class GPT(TransformerModel):
    """Predicts each next token from the ones before it: token embedding + positions, a stack of
    causal blocks, and a head that maps each position's vector to logits over the vocabulary."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding: one learned vector per token id
            wpe=PositionalEncoding(config, config.block_size),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        self.drop = nn.Dropout(config.dropout)
        self.emb_scale = 1.0
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:  # weight tying: one matrix maps ids to vectors and vectors to logits
            self.transformer.wte.weight = self.lm_head.weight
        self.init_weights(n_residual_layers=2 * config.n_layer)

    def flops_per_token(self):
        return 6 * self.get_num_params() + self.attention_flops_per_token(self.config.block_size)

    def forward(self, idx, targets=None, cache=None):
        """idx: (B, T) token ids. targets: (B, T) the next ids (idx shifted by one; -1 = ignore):
        teacher forcing, every position predicts its next token at once. With no targets only the
        last position's logits are computed (all that sampling needs)."""
        length = idx.size(1) + (0 if cache is None else cache.pos)
        if length > self.config.block_size:
            raise ValueError(f"sequence of length {length} is longer than block_size "
                             f"{self.config.block_size}: crop it to the last {self.config.block_size} tokens")
        t = self.transformer
        x = self.run_stack(idx, t.wte, t.wpe, t.h, t.ln_f, cache=cache)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size):
        """Use a shorter context than the model was built with (e.g. GPT-2's 1024 -> 256)."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.crop(block_size)

    @classmethod
    def from_pretrained(cls, name_or_path, override_args=None):
        """GPT-2 weights from the Hugging Face hub ('gpt2', 'gpt2-medium', 'gpt2-large',
        'gpt2-xl') or from a folder written by transformers' save_pretrained."""
        override_args = dict(override_args or {})
        unknown = set(override_args) - {'dropout', 'block_size'}
        if unknown:
            raise ValueError(f"only dropout and block_size can be overridden in a pretrained model, not {sorted(unknown)}")
        try:
            from transformers import GPT2LMHeadModel
        except ImportError:
            raise ImportError("loading GPT-2 weights needs transformers: pip install transformers") from None
        hf_model = GPT2LMHeadModel.from_pretrained(name_or_path)
        hf = hf_model.config
        if hf.activation_function not in HF_ACTIVATIONS:
            raise ValueError(f"{name_or_path} uses activation {hf.activation_function!r}; supported: {sorted(HF_ACTIVATIONS)}")
        block_size = override_args.get('block_size', hf.n_positions)
        if block_size > hf.n_positions:
            raise ValueError(f"block_size {block_size} is larger than {name_or_path}'s context of {hf.n_positions}")
        config = GPTConfig(n_layer=hf.n_layer, n_head=hf.n_head, n_embd=hf.n_embd, vocab_size=hf.vocab_size,
                           block_size=hf.n_positions, bias=True, dropout=override_args.get('dropout', 0.0),
                           mlp=HF_ACTIVATIONS[hf.activation_function])
        model = cls(config)
        hf_state = hf_model.state_dict()
        state = {}
        for name in model.state_dict():  # the same names as ours, a few of them transposed
            tensor = hf_state[name]
            state[name] = tensor.t() if name.endswith(HF_TRANSPOSED) else tensor
        model.load_state_dict(state)
        if block_size < config.block_size:
            model.crop_block_size(block_size)
        return model

    @torch.inference_mode()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True):
        """Continue each row of idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens).
        nanoGPT's signature; the loop itself is generate.sample."""
        return generate.sample(self, idx, max_new_tokens, temperature, top_k, top_p, use_cache)


# ---------------------------------------------------------------------------
# Encoder-decoder Transformer for sequence-to-sequence tasks (translation)


class Seq2SeqTransformer(TransformerModel):
    """The encoder reads the whole source sentence (bidirectional self-attention, padding
    masked out); the decoder writes the target one token at a time (causal self-attention),
    reading the encoder's output through cross-attention in every block."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.src_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.tgt_emb = self.src_emb if config.share_embeddings else nn.Embedding(config.vocab_size, config.n_embd)
        self.src_pos = PositionalEncoding(config, config.src_block_size)
        self.tgt_pos = PositionalEncoding(config, config.tgt_block_size)
        self.emb_scale = embedding_scale(config)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList([Block(config, causal=False) for _ in range(config.n_layer)])
        self.encoder_norm = make_norm(config)
        self.decoder = nn.ModuleList([Block(config, causal=True, cross=True) for _ in range(config.n_layer)])
        self.decoder_norm = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tgt_emb.weight
        self.init_weights(n_residual_layers=5 * config.n_layer)  # 2 per encoder block, 3 per decoder block

    def flops_per_token(self):
        context = self.config.src_block_size + self.config.tgt_block_size
        return 6 * self.get_num_params() + self.attention_flops_per_token(context)

    def encode(self, src):
        """src: (B, S) right-padded source ids -> (memory (B, S, C), padding mask). Computed positions
        (sinusoidal, rope) read sources longer than src_block_size; learned ones cannot."""
        if self.config.pos_emb == 'learned' and src.size(1) > self.config.src_block_size:
            raise ValueError(f"source of {src.size(1)} tokens is longer than src_block_size {self.config.src_block_size} "
                             f"(learned positions): crop it")
        mask = padding_mask(src, self.config.pad_id)
        memory = self.run_stack(src, self.src_emb, self.src_pos, self.encoder, self.encoder_norm, mask=mask)
        return memory, mask

    def decode(self, tgt_in, memory, memory_mask, cache=None):
        """tgt_in: (B, T) target ids so far -> logits (B, T, vocab) for the next token at each position."""
        length = tgt_in.size(1) + (0 if cache is None else cache.pos)
        if self.config.pos_emb == 'learned' and length > self.config.tgt_block_size:
            raise ValueError(f"target of {length} tokens is longer than tgt_block_size {self.config.tgt_block_size}")
        x = self.run_stack(tgt_in, self.tgt_emb, self.tgt_pos, self.decoder, self.decoder_norm, cache=cache,
                           memory=memory, memory_mask=memory_mask)
        return self.lm_head(x)

    def forward(self, src, tgt_in, targets=None):
        """Teacher forcing: the decoder reads the reference shifted right (tgt_in = <bos> y1 .. yn)
        and predicts every next token at once (targets = y1 .. yn <eos>, -1 at padding)."""
        memory, mask = self.encode(src)
        logits = self.decode(tgt_in, memory, mask)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               label_smoothing=self.smoothing())
        return logits, loss

    @torch.inference_mode()
    def generate(self, src, max_new_tokens=None, beam_size=1, length_penalty=0.6, use_cache=True):
        """Translate each row of src (B, S) (greedy, or beam search). Returns a list of B token-id lists."""
        limit = self.config.tgt_block_size
        if self.config.pos_emb != 'learned' and src.size(1) > self.config.src_block_size:
            limit = 2 * src.size(1)  # computed positions go on: a source longer than trained may need a longer target
        max_new_tokens = min(max_new_tokens or limit, limit - 1)  # <bos> takes a position
        if beam_size == 1:
            return generate.greedy_decode(self, src, max_new_tokens, use_cache)
        return generate.beam_search(self, src, max_new_tokens, beam_size, length_penalty, use_cache)


# ---------------------------------------------------------------------------
# Encoder-only Transformer (BERT-style): masked-language-model pretraining, then classification


class MaskedLMHead(nn.Module):
    """Vectors -> logits over the vocabulary, to guess the masked tokens: a dense layer, GELU and a
    norm (BERT's and RoBERTa's transform), then the output matrix (tied to the token embedding) and a bias."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.norm = make_norm(config)
        self.decoder = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size)) if config.bias else None

    def forward(self, x):
        logits = self.decoder(self.norm(F.gelu(self.dense(x))))
        return logits if self.bias is None else logits + self.bias


class ClassifierHead(nn.Module):
    """The [CLS] position's vector -> logits over the classes: a dense layer with tanh (BERT's pooler,
    RoBERTa's classification head), dropout, and a projection to n_classes."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.out_proj = nn.Linear(config.n_embd, config.n_classes, bias=config.bias)

    def forward(self, x):
        """x: (N, C) the encoder's output at the [CLS] of each of N sentences -> (N, n_classes)."""
        x = self.dropout(x)
        return self.out_proj(self.dropout(torch.tanh(self.dense(x))))


def predicted_positions(chosen):
    """The flat indices (row * T + column) of the True positions of a (B, T) mask, in row-major order.
    Indexing by the mask itself gives the same rows, but on a GPU it waits for the device to count them
    (a host sync per step): the training data finds them on the host instead, as it builds the batch."""
    return chosen.flatten().nonzero().squeeze(1)


class Encoder(TransformerModel):
    """Reads the whole sequence at once: every position attends to every other non-padding position,
    before and after it (a GPT position sees only the past). Pretrained as a masked-language model:
    some tokens are hidden and each is guessed from both sides. Fine-tuned as a classifier: the vector
    of [CLS], first in every sequence, gathers the sentence and is mapped to n_classes logits.
    One head at a time: the masked-LM head (n_classes=0) or the classifier (n_classes>0)."""

    HEADS = ('mlm_head.', 'classifier.')  # parameter names of the heads: the rest is the body

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = PositionalEncoding(config, config.block_size)
        self.emb_scale = embedding_scale(config)
        self.emb_norm = make_norm(config)  # BERT and RoBERTa normalise the embeddings before the first block
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config, causal=False) for _ in range(config.n_layer)])
        self.ln_f = make_norm(config)
        if config.n_classes:
            self.classifier = ClassifierHead(config)
        else:
            self.mlm_head = MaskedLMHead(config)
            if config.tie_embeddings:
                self.mlm_head.decoder.weight = self.wte.weight
        self.init_weights(n_residual_layers=2 * config.n_layer)

    def output_heads(self):
        return [self.classifier.out_proj if self.config.n_classes else self.mlm_head.decoder]

    def flops_per_token(self, mask_prob=0.15):
        """6 per parameter, as for the GPT, except the vocabulary matrix: at the input a lookup, and a matmul
        only in the masked-LM head, which runs on the chosen positions alone (mask_prob of the tokens). A
        classifier's head runs once a sentence; counted per token, it adds under 1% here."""
        head = 0 if self.config.n_classes else self.mlm_head.decoder.weight.numel()
        untied = head if head and self.mlm_head.decoder.weight is not self.wte.weight else 0
        body = self.get_num_params() - self.wte.weight.numel() - untied
        return 6 * (body + mask_prob * head) + self.attention_flops_per_token(self.config.block_size)

    def encode(self, tokens, position_ids=None):
        """tokens: (B, T) right-padded ids, [CLS] first -> (B, T, C): each position's vector, computed
        from the whole sequence, padding left out. position_ids (B, T): rows of packed sentences, each
        [CLS] ... [SEP] at positions 0, 1, ..., read apart (packed_mask). Computed positions (sinusoidal,
        rope) read longer sequences than block_size; learned ones cannot."""
        if self.config.pos_emb == 'learned' and tokens.size(1) > self.config.block_size:
            raise ValueError(f"sequence of {tokens.size(1)} tokens is longer than block_size {self.config.block_size} "
                             f"(learned positions): crop it")
        mask = padding_mask(tokens, self.config.pad_id) if position_ids is None else \
            packed_mask(position_ids, tokens != self.config.pad_id)
        return self.run_stack(tokens, self.wte, self.wpe, self.h, self.ln_f, input_norm=self.emb_norm, mask=mask,
                              position_ids=position_ids)

    def forward(self, tokens, targets=None, position_ids=None, predict_at=None):
        """A masked-language model: targets (B, T) hold the original ids at the positions chosen for
        the loss and -1 elsewhere -> (logits (N, vocab) of the N chosen positions, in row-major order,
        their mean cross-entropy). Without targets: (logits (B, T, vocab) of every position, None).
        A classifier: targets (N,) class numbers of the N sentences -> (logits (N, n_classes), cross-entropy,
        label-smoothed in training); without: (logits, None). A sentence is a row, or with position_ids
        (packed rows, see encode) a [CLS] at position 0, in row-major order.
        predict_at: where those N positions are, as flat indices (row * T + column), when the data has
        found them on the host (see predicted_positions)."""
        if self.config.n_classes:
            logits = self.classify(tokens, position_ids, predict_at)
            return logits, None if targets is None else F.cross_entropy(logits, targets, label_smoothing=self.smoothing())
        x = self.encode(tokens, position_ids)
        if targets is None:
            return self.mlm_head(x), None
        if predict_at is None:
            predict_at = predicted_positions(targets != -1)
        # the head only where there is a token to guess: ~15% of its work
        logits = self.mlm_head(x.flatten(0, 1)[predict_at])
        # the mean over the chosen tokens; a batch with none has loss 0, not 0/0
        loss = F.cross_entropy(logits, targets.flatten()[predict_at], reduction='sum') / max(len(predict_at), 1)
        return logits, loss

    def classify(self, tokens, position_ids=None, predict_at=None):
        """The logits (N, n_classes) of the N sentences, from each one's [CLS] vector."""
        x = self.encode(tokens, position_ids)
        if predict_at is None:  # each row's first position, or packed: every position 0
            B, T = tokens.shape
            predict_at = torch.arange(B, device=x.device) * T if position_ids is None \
                else predicted_positions(position_ids == 0)
        return self.classifier(x.flatten(0, 1)[predict_at])

    def count_correct(self, logits, targets):
        """How many of forward's predictions (the argmax of its logits) are right: for the accuracy."""
        if not self.config.n_classes:
            targets = targets[targets != -1]
        return (logits.argmax(dim=-1) == targets).sum()

    def load_body(self, state_dict):
        """Load another encoder's weights but not its head (a masked-language model's into a classifier,
        for fine-tuning): the body's weights must all be there; this model's head keeps its fresh start."""
        body = {name: w for name, w in state_dict.items() if not name.startswith(self.HEADS)}
        missing, unexpected = self.load_state_dict(body, strict=False)
        missing = [name for name in missing if not name.startswith(self.HEADS)]
        if missing or unexpected:
            raise ValueError(f"not the body of an encoder like this one: missing {missing}, unexpected {unexpected}")
