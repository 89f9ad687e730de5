"""
Transformers in one file, built from one set of parts: read it top to bottom, from the configuration and the embedding
through attention, MLP, block and stack to the models:
- GPT: decoder-only language model, GPT-2 compatible by default (loads its weights).
- Seq2SeqTransformer: the encoder-decoder of "Attention Is All You Need", for translation.
- Encoder: encoder-only (BERT-style): masked-language-model pretraining, then sentence classification.

Generation (KV cache, sampling, greedy and beam search) lives in generate.py, hardware-specific speed-ups in device.py.
References: GPT-2 (Radford et al. 2019), "Attention Is All You Need" (Vaswani et al. 2017), BERT (Devlin et al. 2019),
nanoGPT (Karpathy). Modern options (RoPE, RMSNorm, QK-norm, ReLU², SwiGLU) are off by default: GPT-2 weights load.
"""

import inspect
import math
from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.nn as nn
import torch.utils.checkpoint
from torch.nn import functional as F

# --- Configuration -----------------------------------------------------------


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
    pos_emb: str = 'learned'  # 'learned' (GPT-2) | 'sinusoidal' (the 2017 paper) | 'rope' (rotary, relative)
    norm: str = 'layernorm'  # 'layernorm' | 'rmsnorm' (no mean subtraction: cheaper, as good)
    qk_norm: bool = False  # normalise queries and keys per head: keeps attention logits bounded at high lr
    mlp: str = 'gelu'  # 'gelu' | 'gelu_tanh' (GPT-2's approximation) | 'relu2' (ReLU squared, cheap and strong) | 'swiglu' (gated)
    fused_attention: bool = True  # PyTorch's fused kernel; False runs the formula as written (same numbers, slower)

    def __post_init__(self):
        for name in ('vocab_size', 'n_layer', 'n_head', 'n_embd', 'block_size', 'src_block_size', 'tgt_block_size'):
            if getattr(self, name, 1) <= 0:  # (the block sizes: the models that have them)
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name in ('dropout', 'label_smoothing'):  # label_smoothing: the models that have it
            if not 0.0 <= getattr(self, name, 0.0) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name, allowed in (('pos_emb', POSITIONS), ('norm', NORMS), ('mlp', ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {tuple(allowed)}, got {getattr(self, name)!r}")
        if self.pos_emb == 'rope' and self.head_dim % 2:
            raise ValueError(f"rope needs an even head size, got n_embd/n_head = {self.head_dim}")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head


@dataclass
class GPTConfig(TransformerConfig):
    block_size: int = 1024  # longest sequence (context) the model reads


@dataclass
class Seq2SeqConfig(TransformerConfig):
    vocab_size: int = 8000  # one joint source+target subword vocabulary: source and target share one embedding
    n_layer: int = 3  # in the encoder and again in the decoder
    n_head: int = 8
    n_embd: int = 512
    dropout: float = 0.1
    pos_emb: str = 'sinusoidal'
    src_block_size: int = 128  # longest source sentence, in tokens
    tgt_block_size: int = 128  # longest target sentence, including <bos>
    label_smoothing: float = 0.1  # the paper's 0.1: hurts perplexity, helps BLEU
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


@dataclass
class EncoderConfig(TransformerConfig):
    vocab_size: int = 8192  # a lowercase subword vocabulary with [PAD] [UNK] [CLS] [SEP] [MASK]
    block_size: int = 128  # longest sequence, [CLS] and [SEP]s included
    n_classes: int = 0  # 0: a masked-language model (pretraining); >0: a classifier of [CLS] (fine-tuning)
    label_smoothing: float = 0.1  # the classifier's only (not the masked-LM's): +0.8 points on SST-2 dev
    pad_id: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.n_classes < 0 or self.n_classes == 1:
            raise ValueError(f"n_classes must be 0 (masked-language model) or at least 2, got {self.n_classes}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} is outside the vocabulary of {self.vocab_size}")


def config_fields(config_class):
    return {f.name for f in fields(config_class)}


# --- Token embedding and positions: attention itself is blind to order, so each token is told where it is ---


class TokenEmbedding(nn.Embedding):
    """Token ids -> vectors, one learned row per vocabulary entry (GPT-2's wte), times `scale`: the 2017 paper
    scales them by sqrt(n_embd) so that its fixed sinusoids do not drown them (scaled_for_sinusoids); GPT-2 does not."""

    def __init__(self, config, scale=1.0):
        super().__init__(config.vocab_size, config.n_embd)
        self.scale = scale

    def forward(self, ids):
        return super().forward(ids) * self.scale


def scaled_for_sinusoids(config):
    return math.sqrt(config.n_embd) if config.pos_emb == 'sinusoidal' else 1.0


def tie_weights(output_layer, embedding):
    """Weight tying (Press & Wolf 2017): the layer that turns vectors into logits over the vocabulary
    reuses the embedding matrix that turns ids into vectors: one matrix, trained by both ends."""
    output_layer.weight = embedding.weight


class Positions(nn.Module):
    """What the three kinds share. forward(x, at, end): the token vectors x (B, T, C) at positions `at` (a slice
    or position ids (B, T)), `end` one past the largest -> (x with positions added, rotary tables or None).
    `limit`: the most positions the model reads, checked here alone (generate.py crops to it); None: any."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit

    def check(self, end):
        if self.limit is not None and end > self.limit:
            raise ValueError(f"{end} positions are more than the {self.limit} this model reads: "
                             f"crop the input to {self.limit} tokens")

    def crop(self, limit):
        self.limit = limit


class LearnedPositions(Positions):
    """GPT-2's wpe and BERT's: a trained vector per position, added to the token's; max_len of them."""

    def __init__(self, config, max_len, limit=None):
        super().__init__(max_len)
        self.weight = nn.Parameter(torch.randn(max_len, config.n_embd) * 0.02)

    def forward(self, x, at, end):
        self.check(end)
        return x + self.weight[at], None

    def crop(self, limit):
        super().crop(limit)
        self.weight = nn.Parameter(self.weight.data[:limit].clone())


def sinusoidal_positions(length, dim):
    """The paper's fixed encoding: sines and cosines of geometrically spaced wavelengths,
    so that any relative offset is a linear function of the encodings."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


class SinusoidalPositions(Positions):
    """The 2017 paper's positions: fixed vectors (sinusoidal_positions), added to the tokens'. Computed,
    not learned, so the table grows for an input longer than any seen in training (up to `limit`)."""

    def __init__(self, config, max_len, limit=None):
        super().__init__(limit)
        self.register_buffer('table', sinusoidal_positions(max_len, config.n_embd), persistent=False)

    def forward(self, x, at, end):
        self.check(end)
        if end > len(self.table):  # the new table takes the old one's device and dtype (bf16 for sampling)
            self.table = sinusoidal_positions(max(end, 2 * len(self.table)), self.table.size(1)).to(self.table)
        return x + self.table[at], None


def rotary_tables(length, head_dim, theta=10000.0):
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


class RotaryPositions(Positions):
    """Rotary positions (Su et al. 2021): nothing is added to x; attention rotates queries and keys by
    these tables instead (apply_rotary), so attention sees relative distances. The tables grow (up to `limit`)."""

    def __init__(self, config, max_len, limit=None):
        super().__init__(limit)
        self.head_dim = config.head_dim
        cos, sin = rotary_tables(max_len, self.head_dim)
        self.register_buffer('cos', cos, persistent=False)
        self.register_buffer('sin', sin, persistent=False)

    def forward(self, x, at, end):
        self.check(end)
        if end > len(self.cos):  # the new tables take the old ones' device and dtype
            self.cos, self.sin = (t.to(self.cos) for t in rotary_tables(max(end, 2 * len(self.cos)), self.head_dim))
        return x, (self.cos[at].to(x.dtype), self.sin[at].to(x.dtype))


POSITIONS = {'learned': LearnedPositions, 'sinusoidal': SinusoidalPositions, 'rope': RotaryPositions}


# --- Attention: masks, heads, the formula, then self- and cross-attention ----


def causal_mask(T, past, device):
    """(T, past + T) bool, True where query i may read key j: itself and everything before it,
    including `past` earlier positions already in the KV cache. The decoder cannot peek ahead."""
    return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)


def causal_attention(T, cache, device):
    """Where a decoder's T new tokens go and what each reads, as (at, end, mask, is_causal) for the stack: positions
    past .. past + T - 1 after the `past` a KV cache holds (none in training), each reading itself and all before it.
    With nothing cached that is the fused kernel's own causal mask; a single new token reads all cached, unmasked."""
    past = 0 if cache is None else cache.reserve(T)
    if torch.is_tensor(past):
        return ragged_causal_attention(past, T, cache.pos, device)
    if past == 0:
        return slice(0, T), T, None, True
    return slice(past, past + T), past + T, causal_mask(T, past, device) if T > 1 else None, False


def ragged_causal_attention(past, T, end, device):
    """causal_attention for rows holding different numbers of positions, past (B,) (speculative decoding: each row
    keeps the draft tokens it accepted): row r's new tokens are at past[r] .. past[r] + T - 1 and read its first past[r]
    positions and the new ones up to themselves, not a rejected draft's leftovers. end: the longest row's length."""
    at = past[:, None] + torch.arange(T, device=device)
    return at, end, (torch.arange(end, device=device) <= at[:, :, None])[:, None], False


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


def bidirectional_mask(tokens, pad_id, position_ids=None):
    """An encoder's attention: each position reads every real position of its sentence, before and after it (a
    decoder's reads only the past: causal_attention). padding_mask, or packed_mask for packed rows (position_ids)."""
    return padding_mask(tokens, pad_id) if position_ids is None else packed_mask(position_ids, tokens != pad_id)


def split_heads(x, n_head):
    """(B, T, n_head * D) -> (B, T, n_head, D): each head attends with its own slice of channels."""
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head)


def merge_heads(y):
    """(B, n_head, T, D) -> (B, T, n_head * D): the heads' outputs side by side, for the output projection."""
    B, H, T, D = y.shape
    return y.transpose(1, 2).reshape(B, T, H * D)


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0):
    """softmax(q k^T / sqrt(d)) v, written out: what F.scaled_dot_product_attention computes in one
    fused kernel. q: (B, H, T, D); k, v: (B, H, S, D); attn_mask: bool, True = may attend."""
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
    """What self- and cross-attention share: heads of queries compared with heads of keys (the formula),
    the values mixed accordingly, the heads merged and projected back into the residual stream.
    `inputs`: the projections that make queries, keys and values, registered first (GPT-2's order)."""

    def __init__(self, config, **inputs):
        super().__init__()
        for name, layer in inputs.items():
            self.add_module(name, layer)
        self.n_head = config.n_head
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.q_norm = make_norm(config, config.head_dim) if config.qk_norm else None
        self.k_norm = make_norm(config, config.head_dim) if config.qk_norm else None
        # the formula for all heads, chosen once: the fused kernel or the one above (not a module: ~4 us less a call)
        self.formula = F.scaled_dot_product_attention if config.fused_attention else scaled_dot_product_attention
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def norm_heads(self, x, norm, rotary=False):
        """QK-norm of heads (B, T, H, D), if configured. Under autocast the heads arrive in bf16: the
        norm and the rotation after it run in float32, as their gains and tables are (angles need the precision)."""
        if (norm is not None or rotary) and torch.is_autocast_enabled(x.device.type):
            x = x.float()
        return x if norm is None else norm(x)

    def mix(self, q, k, v, mask=None, is_causal=False):
        """q (B, H, T, D), k and v (B, H, S, D) -> (B, T, C): each query's mix of the values, heads merged."""
        y = self.formula(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(merge_heads(y)))


class SelfAttention(Attention):
    """Queries, keys and values all from x: each position gathers from the positions its mask lets it read (a
    decoder's causal_attention, an encoder's bidirectional_mask); in generation earlier keys and values are cached."""

    def __init__(self, config):
        super().__init__(config, c_attn=nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias))  # q, k, v in one matmul
        self.rotary = config.pos_emb == 'rope'

    def forward(self, x, rope=None, mask=None, is_causal=False, cache=None):
        q, k, v = (split_heads(t, self.n_head) for t in self.c_attn(x).chunk(3, dim=-1))
        q, k = self.norm_heads(q, self.q_norm, self.rotary), self.norm_heads(k, self.k_norm, self.rotary)
        if self.rotary:  # after the norms: rotating first would let the per-channel gains undo it
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        if cache is not None:
            k, v = cache.append(self, k, v)
        return self.mix(q, k, v, mask, is_causal)


class CrossAttention(Attention):
    """A decoder's look at the source: queries from x (the target so far), keys and values from `memory`, the encoder's
    output (its padding masked). No rotation: target and source positions are not on one scale."""

    def __init__(self, config):
        super().__init__(config, c_q=nn.Linear(config.n_embd, config.n_embd, bias=config.bias),
                         c_kv=nn.Linear(config.n_embd, 2 * config.n_embd, bias=config.bias))

    def project_memory(self, memory):
        """Keys and values of the encoder output, (B, heads, S, D) each: computed once per sentence in generation."""
        k, v = (split_heads(t, self.n_head) for t in self.c_kv(memory).chunk(2, dim=-1))
        return self.norm_heads(k, self.k_norm).transpose(1, 2), v.transpose(1, 2)

    def forward(self, x, memory, memory_mask=None, cache=None):
        k, v = self.project_memory(memory) if cache is None else cache.cross(self, memory)
        q = self.norm_heads(split_heads(self.c_q(x), self.n_head), self.q_norm).transpose(1, 2)
        return self.mix(q, k, v, memory_mask)


# --- MLP and block -----------------------------------------------------------


NORMS = {'layernorm': lambda config, dim: nn.LayerNorm(dim, bias=config.bias),
         'rmsnorm': lambda config, dim: nn.RMSNorm(dim)}  # RMSNorm: no mean subtraction, cheaper, as good


def make_norm(config, dim=None):
    return NORMS[config.norm](config, dim or config.n_embd)


def relu_squared(x):
    """relu(x)^2 (Primer, So et al. 2021): sparse like ReLU, smooth at zero."""
    return F.relu(x).square()


def swiglu(x):
    """Swish-gated linear unit (Shazeer 2020): half of the units gates the other half."""
    gate, value = x.chunk(2, dim=-1)
    return F.silu(gate) * value


ACTIVATIONS = {
    'gelu': F.gelu,  # exact (erf); on a CPU several times faster than the tanh form
    'gelu_tanh': partial(F.gelu, approximate='tanh'),  # the approximation GPT-2 was trained with: its weights want it
    'relu2': relu_squared,
    'swiglu': swiglu,
}


class MLP(nn.Module):
    """Position-wise feed-forward network: widen, non-linearity, project back. Attention moves
    information between positions; this is where each position computes on what it gathered."""

    def __init__(self, config):
        super().__init__()
        hidden = 4 * config.n_embd
        if config.mlp == 'swiglu':  # two input halves, so 2/3 of the width keeps the parameter count
            hidden = 64 * math.ceil(8 * config.n_embd / 3 / 64)
        self.c_fc = nn.Linear(config.n_embd, hidden * (2 if config.mlp == 'swiglu' else 1), bias=config.bias)
        self.activation = ACTIVATIONS[config.mlp]  # a function, chosen once
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), [x + cross-attention(norm(x))], x + mlp(norm(x)). Each part
    adds to the residual stream x instead of replacing it, so gradients flow straight through deep stacks; normalising
    each part's input (pre-norm) keeps training stable. cross=True adds cross-attention (a seq2seq model's decoder)."""

    def __init__(self, config, cross=False):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = SelfAttention(config)
        self.cross_attn = None
        if cross:
            self.ln_cross = make_norm(config)
            self.cross_attn = CrossAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, mask=None, is_causal=False, cache=None, memory=None, memory_mask=None):
        x = x + self.attn(self.ln_1(x), rope, mask, is_causal, cache)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.ln_cross(x), memory, memory_mask, cache)
        return x + self.mlp(self.ln_2(x))


class CheckpointedBlock(Block):
    """Activation checkpointing (activation_checkpointing='block'): a Block that keeps only its input for the backward
    pass and runs its forward again there: a deep model's activations shrink to one block's, for one more forward.
    torch's non-reentrant checkpoint replays the RNG state, so dropout draws the same masks: the same numbers."""

    def forward(self, *args, **kwargs):
        return torch.utils.checkpoint.checkpoint(super().forward, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(net):
    """Turn every Block of `net` into a CheckpointedBlock in place (the same weights and names; FSDP2 swaps
    classes the same way, after this). Returns net."""
    for block in net.modules():
        if type(block) is Block:
            block.__class__ = CheckpointedBlock
    return net


ACTIVATION_CHECKPOINTING = {'none': lambda net: net, 'block': checkpoint_blocks}  # train.py's setting: what it does


# --- What every model here shares: the stack, initialisation, optimizers, FLOPs ---


class TransformerModel(nn.Module):
    def run_stack(self, tokens, embedding, positions, blocks, final_norm, at, end, input_norm=None, **block_args):
        """The path every stack takes: token embedding, positions (`at`, up to `end`), [a norm,] dropout,
        the blocks, a final norm. block_args: the attention mask (or is_causal), a cache, the memory."""
        x, rope = positions(embedding(tokens), at, end)
        x = self.drop(x if input_norm is None else input_norm(x))
        for block in blocks:
            x = block(x, rope=rope, **block_args)
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
        """Parameter count; learned position tables are left out by default, as in the GPT-2 papers' counts."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(p.numel() for m in self.modules() if isinstance(m, LearnedPositions) for p in m.parameters())
        return n

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, optimizer='adamw', muon_momentum=0.95,
                             muon_class=torch.optim.Muon):
        """AdamW, or Muon (muon_class: torch's or device.muon_class's) for the 2-D hidden matrices plus AdamW for the
        rest; returns a list. Weight decay applies to matrices only: biases and norm gains are not decayed."""
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, (nn.Embedding, LearnedPositions))}
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
        """Label smoothing (Szegedy et al., 2016): the training target spreads label_smoothing of its probability over
        every class, so the model is not pushed to ever more confident logits. Evaluation reports the plain loss."""
        return self.config.label_smoothing if self.training else 0.0

    def output_heads(self):
        """The layers that turn vectors into predictions: AdamW trains them even under Muon, like the embeddings."""
        return [self.lm_head]

    def estimate_mfu(self, tokens_per_iter, dt, peak, **task):
        """Model FLOPs utilisation: achieved FLOP/s over the device's peak (PaLM paper, appendix B).
        task: what flops_per_token needs to know of the training (a masked-LM's mask_prob)."""
        return self.flops_per_token(**task) * tokens_per_iter / dt / peak

    def attention_flops_per_token(self, context):
        return 12 * self.config.n_layer * self.config.n_embd * context


# --- GPT: decoder-only language model ----------------------------------------

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
            wte=TokenEmbedding(config),
            wpe=POSITIONS[config.pos_emb](config, config.block_size, limit=config.block_size),  # its context
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        self.drop = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        tie_weights(self.lm_head, self.transformer.wte)
        self.init_weights(n_residual_layers=2 * config.n_layer)

    def flops_per_token(self):
        return 6 * self.get_num_params() + self.attention_flops_per_token(self.config.block_size)

    def forward(self, idx, targets=None, cache=None, all_logits=False):
        """idx: (B, T) token ids. targets: (B, T) the next ids (idx shifted by one; -1 = ignore):
        teacher forcing, every position predicts its next token at once. With no targets only the
        last position's logits are computed (all that sampling needs; all_logits: every position's, to verify a draft)."""
        at, end, mask, is_causal = causal_attention(idx.size(1), cache, idx.device)
        t = self.transformer
        x = self.run_stack(idx, t.wte, t.wpe, t.h, t.ln_f, at, end, mask=mask, is_causal=is_causal, cache=cache)
        if targets is None:
            return self.lm_head(x if all_logits else x[:, [-1], :]), None
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
        hf_state = hf_model.state_dict()  # the same names as ours, a few of them transposed
        model.load_state_dict({name: hf_state[name].t() if name.endswith(HF_TRANSPOSED) else hf_state[name]
                               for name in model.state_dict()})
        if block_size < config.block_size:
            model.crop_block_size(block_size)
        return model

    @torch.inference_mode()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True):
        """Continue each row of idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens).
        nanoGPT's signature; the loop itself is generate.sample (imported here: the model does not need it)."""
        from generate import sample
        return sample(self, idx, max_new_tokens, temperature, top_k, top_p, use_cache)


# --- Encoder-decoder Transformer for sequence-to-sequence tasks (translation) ---


class Seq2SeqTransformer(TransformerModel):
    """The encoder reads the whole source sentence (bidirectional self-attention, padding masked out); the decoder
    writes the target one token at a time (causal self-attention), reading the encoder's output by cross-attention."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.src_emb = TokenEmbedding(config, scaled_for_sinusoids(config))
        self.tgt_emb = self.src_emb  # one joint vocabulary: source and target share their embedding
        self.src_pos = POSITIONS[config.pos_emb](config, config.src_block_size)
        self.tgt_pos = POSITIONS[config.pos_emb](config, config.tgt_block_size)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.encoder_norm = make_norm(config)
        self.decoder = nn.ModuleList([Block(config, cross=True) for _ in range(config.n_layer)])
        self.decoder_norm = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        tie_weights(self.lm_head, self.tgt_emb)
        self.init_weights(n_residual_layers=5 * config.n_layer)  # 2 per encoder block, 3 per decoder block

    def flops_per_token(self):
        context = self.config.src_block_size + self.config.tgt_block_size
        return 6 * self.get_num_params() + self.attention_flops_per_token(context)

    def input_limit(self):
        """The longest source the model reads (its positions' limit: None when computed)."""
        return self.src_pos.limit

    def encode(self, src):
        """src: (B, S) right-padded source ids -> (memory (B, S, C), padding mask). Computed positions
        (sinusoidal, rope) read sources longer than src_block_size; learned ones cannot."""
        mask = bidirectional_mask(src, self.config.pad_id)
        S = src.size(1)
        return self.run_stack(src, self.src_emb, self.src_pos, self.encoder, self.encoder_norm, slice(0, S), S,
                              mask=mask), mask

    def decode(self, tgt_in, memory, memory_mask, cache=None):
        """tgt_in: (B, T) target ids so far -> logits (B, T, vocab) for the next token at each position."""
        at, end, mask, is_causal = causal_attention(tgt_in.size(1), cache, tgt_in.device)
        x = self.run_stack(tgt_in, self.tgt_emb, self.tgt_pos, self.decoder, self.decoder_norm, at, end, mask=mask,
                           is_causal=is_causal, cache=cache, memory=memory, memory_mask=memory_mask)
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
        from generate import beam_search, greedy_decode
        limit = self.config.tgt_block_size
        if self.config.pos_emb != 'learned' and src.size(1) > self.config.src_block_size:
            limit = 2 * src.size(1)  # computed positions go on: a source longer than trained may need a longer target
        max_new_tokens = min(max_new_tokens or limit, limit - 1)  # <bos> takes a position
        if beam_size == 1:
            return greedy_decode(self, src, max_new_tokens, use_cache)
        return beam_search(self, src, max_new_tokens, beam_size, length_penalty, use_cache)


# --- Encoder-only Transformer (BERT-style): masked-language-model pretraining, then classification ---


class MaskedLMHead(nn.Module):
    """Vectors -> logits over the vocabulary, to guess the masked tokens: a dense layer, GELU and a
    norm (BERT's and RoBERTa's transform), then the output matrix (tied to the token embedding) and a bias."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.norm = make_norm(config)
        self.out_proj = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size)) if config.bias else None

    def forward(self, x):
        logits = self.out_proj(self.norm(F.gelu(self.dense(x))))
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
    """The flat indices (row * T + column) of a (B, T) mask's True positions, row-major. Indexing by the mask gives the
    same rows but makes a GPU sync with the host each step: the training data finds them on the host, as it batches."""
    return chosen.flatten().nonzero().squeeze(1)


class Encoder(TransformerModel):
    """Reads the whole sequence at once: every position attends to every non-padding one, before and after it (a GPT's
    sees only the past). Pretrained as a masked-language model (hidden tokens guessed from both sides), fine-tuned as a
    classifier of the vector of [CLS], first in every sequence: one head, masked-LM (n_classes=0) or classifier (>0)."""

    HEADS = ('mlm_head.', 'classifier.')  # parameter names of the heads: the rest is the body

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = TokenEmbedding(config, scaled_for_sinusoids(config))
        self.wpe = POSITIONS[config.pos_emb](config, config.block_size)
        self.emb_norm = make_norm(config)  # BERT and RoBERTa normalise the embeddings before the first block
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = make_norm(config)
        if config.n_classes:
            self.classifier = ClassifierHead(config)
        else:
            self.mlm_head = MaskedLMHead(config)
            tie_weights(self.mlm_head.out_proj, self.wte)
        self.init_weights(n_residual_layers=2 * config.n_layer)

    def output_heads(self):
        return [self.classifier.out_proj if self.config.n_classes else self.mlm_head.out_proj]

    def input_limit(self):
        """The longest sequence the model reads, [CLS] and [SEP] included (None with computed positions)."""
        return self.wpe.limit

    def flops_per_token(self, mask_prob=0.15):
        """6 per parameter, as for the GPT, except the vocabulary matrix: at the input a lookup, and a matmul
        only in the masked-LM head, which runs on the chosen positions alone (mask_prob of the tokens). A
        classifier's head runs once a sentence; counted per token, it adds under 1% here."""
        head = 0 if self.config.n_classes else self.wte.weight.numel()
        body = self.get_num_params() - self.wte.weight.numel()
        return 6 * (body + mask_prob * head) + self.attention_flops_per_token(self.config.block_size)

    def encode(self, tokens, position_ids=None):
        """tokens: (B, T) right-padded ids, [CLS] first -> (B, T, C): each position's vector from the whole sequence,
        padding left out. position_ids (B, T): rows of packed sentences, each [CLS] ... [SEP] at positions 0, 1, ...,
        read apart. Computed positions (sinusoidal, rope) read longer sequences than block_size; learned ones cannot."""
        mask = bidirectional_mask(tokens, self.config.pad_id, position_ids)
        T = tokens.size(1)
        return self.run_stack(tokens, self.wte, self.wpe, self.h, self.ln_f, slice(0, T) if position_ids is None
                              else position_ids, T, input_norm=self.emb_norm, mask=mask)

    def forward(self, tokens, targets=None, position_ids=None, predict_at=None):
        """A masked-language model: targets (B, T) hold the original ids at the positions chosen for the loss and -1
        elsewhere -> (logits (N, vocab) of the N chosen positions in row-major order, their mean cross-entropy); without
        targets: (logits (B, T, vocab) of every position, None). A classifier: targets (N,) class numbers of the N
        sentences -> (logits (N, n_classes), cross-entropy, label-smoothed in training); without: (logits, None). A
        sentence is a row, or with position_ids (packed rows, see encode) a [CLS] at position 0, in row-major order.
        predict_at: those N positions as flat indices (row * T + column), when the data found them on the host."""
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
