"""
Transformers in one file, built from one set of parts.

- Attention: multi-head attention in three modes. 'causal' (a decoder looks only
  at the past), 'bidirectional' (an encoder looks everywhere, except padding) and
  'cross' (decoder queries read the encoder's output).
- MLP, Block: a pre-norm residual block = self-attention (+ cross-attention) + MLP.
- GPT: decoder-only language model, GPT-2 compatible by default (loads its weights).
- Seq2SeqTransformer: the encoder-decoder of "Attention Is All You Need" for translation.
An encoder-only (BERT-style) model is `Block(config, causal=False)` stacked over embeddings.

References: GPT-2 (Radford et al. 2019), "Attention Is All You Need" (Vaswani et al. 2017),
nanoGPT (Karpathy). Modern options (RoPE, RMSNorm, QK-norm, ReLU^2/SwiGLU, GQA) are off
by default so that GPT-2 checkpoints load unchanged.
"""

import inspect
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

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

    def __post_init__(self):
        for name in ('vocab_size', 'n_layer', 'n_head', 'n_embd'):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head < 0 or (self.n_kv_head and self.n_head % self.n_kv_head):
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
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
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


def config_fields(config_class):
    return {f.name for f in fields(config_class)}


# ---------------------------------------------------------------------------
# Positions


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
    cos, sin = cos[:, None], sin[:, None]  # the same angles for every head
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


# ---------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values already computed during generation, so that each new token is
    one query against the stored keys instead of a re-run of the whole context.

    Self-attention layers write each new position into buffers of max_len positions made on
    first use (no re-allocation as the text grows). Cross-attention layers store the
    projection of the encoder output once per sentence (it never changes)."""

    def __init__(self, max_len):
        self.max_len = max_len
        self.pos = 0  # positions processed so far; the model advances it after each forward
        self.self_kv = {}  # layer -> (k, v) buffers, (B, kv_heads, max_len, head_dim)
        self.cross_kv = {}  # layer -> (k, v) of the encoder output

    def append(self, layer, k, v):
        """Store k, v (B, kv_heads, T, head_dim) at positions pos..pos+T-1; return the keys and values so far."""
        if layer not in self.self_kv:
            B, H, _, D = k.shape
            self.self_kv[layer] = (k.new_empty(B, H, self.max_len, D), v.new_empty(B, H, self.max_len, D))
        keys, values = self.self_kv[layer]
        end = self.pos + k.size(2)
        keys[:, :, self.pos:end], values[:, :, self.pos:end] = k, v
        return keys[:, :, :end], values[:, :, :end]

    def reorder(self, index):
        """Beam search: keep the histories of the beams that survived (rows `index`).
        Cross-attention entries are the same for every beam of a sentence and stay put."""
        for k, v in self.self_kv.values():  # only the filled positions: the rest of the buffers are unused
            k[:, :, :self.pos] = k[index, :, :self.pos]
            v[:, :, :self.pos] = v[index, :, :self.pos]


# ---------------------------------------------------------------------------
# Parts


def make_norm(config, dim=None):
    dim = dim or config.n_embd
    if config.norm == 'rmsnorm':
        return nn.RMSNorm(dim)
    return nn.LayerNorm(dim, bias=config.bias)


class Attention(nn.Module):
    """Multi-head scaled dot-product attention: softmax(q k^T / sqrt(d)) v, per head.

    mode 'causal': position t sees positions <= t (decoder self-attention).
    mode 'bidirectional': every position sees every non-padding position (encoder).
    mode 'cross': queries from x, keys and values from `memory`, the encoder output.
    """

    def __init__(self, config, mode='causal'):
        super().__init__()
        assert mode in ('causal', 'bidirectional', 'cross')
        self.mode = mode
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        if mode == 'cross':
            self.c_q = nn.Linear(config.n_embd, q_dim, bias=config.bias)
            self.c_kv = nn.Linear(config.n_embd, 2 * kv_dim, bias=config.bias)
        else:  # one matmul for q, k and v together (GPT-2's c_attn)
            self.c_attn = nn.Linear(config.n_embd, q_dim + 2 * kv_dim, bias=config.bias)
        self.c_proj = nn.Linear(q_dim, config.n_embd, bias=config.bias)
        self.q_norm = make_norm(config, self.head_dim) if config.qk_norm else None
        self.k_norm = make_norm(config, self.head_dim) if config.qk_norm else None
        self.rotary = config.pos_emb == 'rope' and mode != 'cross'  # cross-attention has no shared positions
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def split_heads(self, x, n_head, norm=None):
        """(B, T, n_head * D) -> (B, T, n_head, D), then QK-norm if given. Heads move to dim 1
        only for the attention call, so the norms and rotary work on contiguous rows of D channels."""
        B, T, _ = x.shape
        x = x.view(B, T, n_head, self.head_dim)
        if x.device.type == 'cpu' and torch.is_autocast_enabled('cpu'):
            # on a CPU, float32 attention (norms and rotary included) trains several times faster than bf16's
            x = x.float()
        return norm(x) if norm is not None else x

    def project_memory(self, memory):
        k, v = self.c_kv(memory).chunk(2, dim=-1)
        return self.split_heads(k, self.n_kv_head, self.k_norm), self.split_heads(v, self.n_kv_head)

    def forward(self, x, mask=None, memory=None, rope=None, cache=None):
        """x: (B, T, C). mask: bool, True where a key may be attended, broadcastable to
        (B, n_head, T, S): the padding mask. rope: (cos, sin) for x's positions.
        cache: a KVCache during generation."""
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        if self.mode == 'cross':
            q = self.split_heads(self.c_q(x), self.n_head, self.q_norm)
            if cache is None:
                k, v = self.project_memory(memory)
            else:  # once per sentence, not once per generated token
                if self not in cache.cross_kv:
                    cache.cross_kv[self] = self.project_memory(memory)
                k, v = cache.cross_kv[self]
        else:
            q, k, v = self.c_attn(x).split((q_dim, kv_dim, kv_dim), dim=-1)
            q = self.split_heads(q, self.n_head, self.q_norm)
            k, v = self.split_heads(k, self.n_kv_head, self.k_norm), self.split_heads(v, self.n_kv_head)
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
                mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        cpu_autocast = q.device.type == 'cpu' and torch.is_autocast_enabled('cpu')
        with torch.autocast('cpu', enabled=False) if cpu_autocast else nullcontext():  # float32, see split_heads
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv_head != self.n_head)  # GQA: each k/v head serves n_head/n_kv_head query heads
        y = y.transpose(1, 2).contiguous().view(x.size(0), x.size(1), q_dim).type_as(x)
        return self.resid_dropout(self.c_proj(y))


class ReLUSquared(torch.autograd.Function):
    """relu(x)^2 (Primer, So et al. 2021): sparse like ReLU, smooth at zero. Its gradient 2 relu(x)
    is written out: autograd's takes four passes over the MLP's wide activations where two
    suffice, which makes the CPU recipe's steps ~4% faster (memory-bound passes)."""

    @staticmethod
    def forward(ctx, x):
        r = F.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad):
        r, = ctx.saved_tensors
        return grad.mul(r).mul_(2)


class MLP(nn.Module):
    """Position-wise feed-forward network: widen, non-linearity, project back."""

    def __init__(self, config):
        super().__init__()
        self.kind = config.mlp
        if self.kind == 'swiglu':  # two input matrices, so 2/3 of the width keeps the parameter count
            hidden = 64 * math.ceil(8 * config.n_embd / 3 / 64)
            self.c_fc = nn.Linear(config.n_embd, 2 * hidden, bias=config.bias)
        else:
            hidden = 4 * config.n_embd
            self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = self.c_fc(x)
        if self.kind == 'gelu':  # exact (erf); on a CPU several times faster than the tanh form
            x = F.gelu(x)
        elif self.kind == 'gelu_tanh':  # the approximation GPT-2 was trained with: its weights want it
            x = F.gelu(x, approximate='tanh')
        elif self.kind == 'relu2':
            x = ReLUSquared.apply(x)
        else:
            gate, value = x.chunk(2, dim=-1)
            x = F.silu(gate) * value
        return self.dropout(self.c_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), [x + cross-attention(norm(x))], x + mlp(norm(x)).
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


class PositionalEncoding(nn.Module):
    """Where each token is. 'learned': a trained vector per position, added to the input
    (GPT-2's wpe). 'sinusoidal': the paper's fixed vectors, added. 'rope': nothing is added;
    attention rotates queries and keys instead, with the tables returned here."""

    def __init__(self, config, max_len):
        super().__init__()
        self.kind = config.pos_emb
        if self.kind == 'learned':
            self.weight = nn.Parameter(torch.randn(max_len, config.n_embd) * 0.02)
        elif self.kind == 'sinusoidal':
            self.register_buffer('table', sinusoidal_positions(max_len, config.n_embd), persistent=False)
        else:
            cos, sin = rotary_tables(max_len, config.head_dim, config.rope_theta)
            self.register_buffer('cos', cos, persistent=False)
            self.register_buffer('sin', sin, persistent=False)

    def forward(self, x, start=0):
        """x: (B, T, C) token embeddings of positions start..start+T-1 -> (x, rope tables or None)."""
        T = x.size(1)
        if self.kind == 'learned':
            return x + self.weight[start:start + T], None
        if self.kind == 'sinusoidal':
            return x + self.table[start:start + T], None
        return x, (self.cos[start:start + T].to(x.dtype), self.sin[start:start + T].to(x.dtype))

    def crop(self, max_len):
        if self.kind == 'learned':
            self.weight = nn.Parameter(self.weight.data[:max_len].clone())
        for name, table in list(self.named_buffers()):
            setattr(self, name, table[:max_len].clone())


# ---------------------------------------------------------------------------
# What every model here shares: initialisation, optimizers, FLOPs


class TransformerModel(nn.Module):

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

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, optimizer='adamw', muon_momentum=0.95):
        """AdamW, or Muon for the 2-D hidden matrices plus AdamW for the rest. Returns a list.
        Weight decay applies to matrices only: biases and norm gains are not decayed."""
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        embeddings |= {id(p) for m in self.modules() if isinstance(m, PositionalEncoding) for p in m.parameters()}
        embeddings.add(id(self.lm_head.weight))
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
        return [torch.optim.Muon(matrices, lr=learning_rate, weight_decay=weight_decay, momentum=muon_momentum,
                                 adjust_lr_fn='match_rms_adamw'),
                torch.optim.AdamW(adam_groups, lr=learning_rate, betas=betas, fused=fused)]

    def estimate_mfu(self, tokens_per_iter, dt, peak):
        """Model FLOPs utilisation: achieved FLOP/s over the device's peak (PaLM paper, appendix B)."""
        return self.flops_per_token() * tokens_per_iter / dt / peak

    def attention_flops_per_token(self, context):
        return 12 * self.config.n_layer * self.config.n_embd * context


# ---------------------------------------------------------------------------
# Sampling


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None):
    """Pick one token per row from logits (B, V). temperature 0 is greedy (argmax);
    top_k keeps the k likeliest; top_p keeps the smallest set holding probability top_p."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        outside = probs.cumsum(dim=-1) - probs > top_p  # mass before this token already exceeds top_p
        sorted_logits = sorted_logits.masked_fill(outside, float('-inf'))
        logits = torch.full_like(logits, float('-inf')).scatter(-1, order, sorted_logits)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


# ---------------------------------------------------------------------------
# GPT: decoder-only language model

# Hugging Face's GPT-2 stores these as Conv1D, (in, out): transposed from nn.Linear.
HF_TRANSPOSED = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
HF_ACTIVATIONS = {'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu': 'gelu'}  # transformers' name -> our mlp
GPT2_SIZES = {
    'gpt2': dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    'gpt2-medium': dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    'gpt2-large': dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    'gpt2-xl': dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}


@contextmanager
def one_token_kernels(tokens):
    """Run a step that feeds one token of one sequence with PyTorch's own matrix-vector kernels
    on a CPU: there, with bf16 weights, they stream the weights ~1.7x faster than oneDNN's matmul
    (measured on an AVX512-BF16 CPU), which stays the faster choice for any step with more rows."""
    if tokens.device.type != 'cpu' or tokens.numel() != 1 or not torch.backends.mkldnn.enabled:
        yield
        return
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True


class GPT(TransformerModel):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=PositionalEncoding(config, config.block_size),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:  # weight tying: one matrix maps ids to vectors and vectors to logits
            self.transformer.wte.weight = self.lm_head.weight
        self.init_weights(n_residual_layers=2 * config.n_layer)

    def flops_per_token(self):
        return 6 * self.get_num_params() + self.attention_flops_per_token(self.config.block_size)

    def forward(self, idx, targets=None, cache=None):
        """idx: (B, T) token ids. targets: (B, T) next ids, -1 = ignore. With no targets only
        the last position's logits are computed (all that sampling needs)."""
        T = idx.size(1)
        start = 0 if cache is None else cache.pos
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size "
                             f"{self.config.block_size}: crop it to the last {self.config.block_size} tokens")
        x, rope = self.transformer.wpe(self.transformer.wte(idx), start)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, rope=rope, cache=cache)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.pos += T
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
    def stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True):
        """Yield (B, 1) new tokens one at a time. With the KV cache each step feeds only the
        newest token. Past block_size the context is cropped to the last block_size tokens;
        every position then shifts, the cached keys are stale, and each step re-runs the window."""
        cache = KVCache(self.config.block_size) if use_cache else None
        for _ in range(max_new_tokens):
            if cache is not None and idx.size(1) <= self.config.block_size:
                new = idx[:, cache.pos:]
                with one_token_kernels(new):
                    logits, _ = self(new, cache=cache)
            else:
                logits, _ = self(idx[:, -self.config.block_size:])
            next_token = sample_next_token(logits[:, -1, :], temperature, top_k, top_p)
            idx = torch.cat((idx, next_token), dim=1)
            yield next_token

    @torch.inference_mode()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True):
        """Continue each row of idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens)."""
        new = list(self.stream(idx, max_new_tokens, temperature, top_k, top_p, use_cache))
        return torch.cat([idx, *new], dim=1)


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
        # the paper scales embeddings by sqrt(n_embd) so the fixed sinusoids do not drown them
        self.emb_scale = math.sqrt(config.n_embd) if config.pos_emb == 'sinusoidal' else 1.0
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

    def padding_mask(self, src):
        """(B, 1, 1, S), True at real tokens: attention never reads the <pad> positions."""
        return (src != self.config.pad_id)[:, None, None, :]

    def encode(self, src):
        """src: (B, S) right-padded source ids -> (memory (B, S, C), padding mask)."""
        if src.size(1) > self.config.src_block_size:
            raise ValueError(f"source of {src.size(1)} tokens is longer than src_block_size {self.config.src_block_size}")
        mask = self.padding_mask(src)
        x, rope = self.src_pos(self.src_emb(src) * self.emb_scale)
        x = self.drop(x)
        for block in self.encoder:
            x = block(x, mask=mask, rope=rope)
        return self.encoder_norm(x), mask

    def decode(self, tgt_in, memory, memory_mask, cache=None):
        """tgt_in: (B, T) target ids so far -> logits (B, T, vocab) for the next token at each position."""
        start = 0 if cache is None else cache.pos
        if start + tgt_in.size(1) > self.config.tgt_block_size:
            raise ValueError(f"target of {start + tgt_in.size(1)} tokens is longer than tgt_block_size {self.config.tgt_block_size}")
        x, rope = self.tgt_pos(self.tgt_emb(tgt_in) * self.emb_scale, start)
        x = self.drop(x)
        for block in self.decoder:
            x = block(x, rope=rope, memory=memory, memory_mask=memory_mask, cache=cache)
        if cache is not None:
            cache.pos += tgt_in.size(1)
        return self.lm_head(self.decoder_norm(x))

    def forward(self, src, tgt_in, targets=None):
        """Teacher forcing: the decoder reads the reference shifted right (tgt_in = <bos> y1 .. yn)
        and predicts every next token at once (targets = y1 .. yn <eos>, -1 at padding)."""
        memory, mask = self.encode(src)
        logits = self.decode(tgt_in, memory, mask)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               label_smoothing=self.config.label_smoothing if self.training else 0.0)
        return logits, loss

    def next_token_logits(self, tokens, memory, mask, cache):
        """Logits (B, V) for the token after `tokens`; with a cache only the unseen tail is fed in."""
        if cache is None:
            return self.decode(tokens, memory, mask)[:, -1]
        new = tokens[:, cache.pos:]
        with one_token_kernels(new):
            return self.decode(new, memory, mask, cache)[:, -1]

    def strip(self, tokens):
        """Rows of generated ids -> lists without <bos>, cut before <eos>."""
        out = []
        for row in tokens[:, 1:].tolist():
            out.append(row[:row.index(self.config.eos_id)] if self.config.eos_id in row else row)
        return out

    @torch.inference_mode()
    def generate(self, src, max_new_tokens=None, beam_size=1, length_penalty=0.6, use_cache=True):
        """Translate each row of src (B, S). Returns a list of B token-id lists."""
        max_new_tokens = min(max_new_tokens or self.config.tgt_block_size, self.config.tgt_block_size - 1)  # <bos> takes a position
        if beam_size == 1:
            return self.greedy_decode(src, max_new_tokens, use_cache)
        return self.beam_search(src, max_new_tokens, beam_size, length_penalty, use_cache)

    def greedy_decode(self, src, max_new_tokens, use_cache=True):
        """Take the likeliest token at every step until each sentence has produced <eos>."""
        memory, mask = self.encode(src)  # once per sentence
        cache = KVCache(self.config.tgt_block_size) if use_cache else None
        tokens = torch.full((src.size(0), 1), self.config.bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        for _ in range(max_new_tokens):
            next_token = self.next_token_logits(tokens, memory, mask, cache).argmax(dim=-1)
            next_token = next_token.masked_fill(done, self.config.pad_id)
            tokens = torch.cat((tokens, next_token[:, None]), dim=1)
            done |= next_token == self.config.eos_id
            if done.all():
                break
        return self.strip(tokens)

    def beam_search(self, src, max_new_tokens, beam_size, length_penalty, use_cache=True):
        """Keep the beam_size likeliest partial translations of each sentence; at each step
        extend every one by every token and keep the best beam_size of the results. Finished
        beams stay, extended only by <pad> at no cost. The winner maximises
        log p / ((5 + length) / 6) ** length_penalty (Wu et al. 2016), so long outputs are not unfairly penalised."""
        B, K, V = src.size(0), beam_size, self.config.vocab_size
        memory, mask = self.encode(src)  # once per sentence, then shared by its K beams
        memory, mask = memory.repeat_interleave(K, dim=0), mask.repeat_interleave(K, dim=0)
        cache = KVCache(self.config.tgt_block_size) if use_cache else None
        tokens = torch.full((B * K, 1), self.config.bos_id, dtype=torch.long, device=src.device)
        scores = torch.zeros(B, K, device=src.device)
        scores[:, 1:] = float('-inf')  # all beams start identical: expand only the first
        lengths = torch.zeros(B * K, device=src.device)
        done = torch.zeros(B * K, dtype=torch.bool, device=src.device)
        for _ in range(max_new_tokens):
            logprobs = F.log_softmax(self.next_token_logits(tokens, memory, mask, cache).float(), dim=-1)
            logprobs[done] = float('-inf')
            logprobs[done, self.config.pad_id] = 0.0
            candidates = (scores.view(B * K, 1) + logprobs).view(B, K * V)
            scores, flat = candidates.topk(K, dim=-1)
            beam = (flat // V + torch.arange(B, device=src.device)[:, None] * K).view(-1)
            next_token = (flat % V).view(-1)
            tokens = torch.cat((tokens[beam], next_token[:, None]), dim=1)
            lengths = lengths[beam] + (~done[beam]).float()
            done = done[beam] | (next_token == self.config.eos_id)
            if cache is not None:
                cache.reorder(beam)
            if done.all():
                break
        normalised = scores / (((5.0 + lengths) / 6.0) ** length_penalty).view(B, K)
        best = normalised.argmax(dim=-1) + torch.arange(B, device=src.device) * K
        return self.strip(tokens[best])

    @torch.inference_mode()
    def translate(self, sentences, tokenizer, device='cpu', beam_size=1, length_penalty=0.6, batch_size=64):
        """Source sentences (str) -> translations (str). Sentences of similar length share a batch."""
        ids = [tokenizer.encode(s) for s in sentences]
        too_long = [i for i, x in enumerate(ids) if len(x) > self.config.src_block_size]
        if too_long:
            raise ValueError(f"sentence {too_long[0] + 1} has {len(ids[too_long[0]])} tokens, more than the model's "
                             f"src_block_size of {self.config.src_block_size}: split it")
        out = [''] * len(ids)  # an empty line translates to an empty line
        order = sorted((i for i in range(len(ids)) if ids[i]), key=lambda i: len(ids[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            src = torch.full((len(chunk), max(len(ids[i]) for i in chunk)), self.config.pad_id, dtype=torch.long)
            for row, i in enumerate(chunk):
                src[row, :len(ids[i])] = torch.tensor(ids[i])
            for i, hypothesis in zip(chunk, self.generate(src.to(device), beam_size=beam_size, length_penalty=length_penalty)):
                out[i] = tokenizer.decode(hypothesis)
        return out


# ---------------------------------------------------------------------------
# Peak FLOP/s of the device, for MFU

GPU_PEAK_BF16 = {  # dense bf16/fp16 tensor-core FLOP/s from the vendors' data sheets
    'H200': 989e12, 'H100 PCIe': 756e12, 'H100': 989e12, 'A100': 312e12, 'L40S': 362e12, 'L4': 121e12,
    'A10G': 70e12, 'A10': 125e12, 'RTX 4090': 165e12, 'RTX 3090': 71e12, 'V100': 125e12, 'T4': 65e12,
}


def measured_peak_flops(device, dtype):
    """Best FLOP/s of a large matmul on this device: the practical peak where no data sheet applies."""
    import time
    n = 1024
    # constant, not random: the speed does not depend on the values, and drawing from the global RNG
    # here would shift the random stream that a resumed run has just restored (its dropout masks)
    a = torch.ones(n, n, device=device, dtype=dtype)
    best = float('inf')
    for _ in range(4):
        t0 = time.perf_counter()
        (a @ a).sum().item()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def cpu_has_bf16():
    """Whether this CPU computes in bf16 (AVX512-BF16 or AMX): there bf16 matmuls are ~2x float32's speed."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def peak_flops(device, dtype):
    """Peak FLOP/s of `device` for `dtype`: the data sheet for known GPUs (TF32 = half the
    bf16 rate), a measured matmul in `dtype` otherwise (CPU, MPS, unknown GPUs)."""
    device = torch.device(device)
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_BF16.items():
            if key in name:
                return flops / 2 if dtype == torch.float32 else flops
    return measured_peak_flops(device, dtype)
