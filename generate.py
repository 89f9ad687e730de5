"""
Generation: everything that turns a trained model into new tokens, for GPT and the
encoder-decoder alike.

- KVCache: keys and values of the tokens already read, so each new token costs one position.
- sample_next_token: temperature, top-k, top-p; temperature 0 is greedy.
- sample / stream: a GPT continues a prompt, token by token (nanoGPT's generate).
- sample_rows: many continuations of one prompt in one batch, each stopping on its own.
- find_stop: where a stop string ends a text.
- greedy_decode, beam_search: an encoder-decoder writes a translation.
- translate: sentences in, sentences out, batched by length.
- fill_masks, label_sentences: an encoder's guesses for [MASK] tokens, and its labels of sentences.

It imports no other module of the project (but errors.py): it calls the models' forward (GPT, encoder)
or encode/decode (encoder-decoder), and the models call it (GPT.generate, Seq2SeqTransformer.generate).
"""

import sys

import torch
from torch.nn import functional as F

from errors import UserError

# ---------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values already computed during generation, so that each new token is
    one query against the stored keys instead of a re-run of the whole context.

    Self-attention layers write each new position into buffers of max_len positions made on
    first use (no re-allocation as the text grows). Cross-attention layers store the
    projection of the encoder output once per source batch (it never changes while decoding it)."""

    def __init__(self, max_len):
        self.max_len = max_len
        self.pos = 0  # positions held so far
        self.self_kv = {}  # layer -> (k, v) buffers, (B, heads, max_len, head_dim)
        self.cross_kv = {}  # layer -> (memory, (k, v) of that memory)

    def reserve(self, T):
        """A forward of T new tokens begins: they take positions pos..pos+T-1 (model.causal_attention
        masks them). Returns pos, the positions already held."""
        start, self.pos = self.pos, self.pos + T
        return start

    def append(self, layer, k, v):
        """Store the new tokens' k, v (B, heads, T, head_dim) where reserve put them; return the keys and values so far."""
        if layer not in self.self_kv:
            B, H, _, D = k.shape
            self.self_kv[layer] = (k.new_empty(B, H, self.max_len, D), v.new_empty(B, H, self.max_len, D))
        keys, values = self.self_kv[layer]
        start = self.pos - k.size(2)
        keys[:, :, start:self.pos], values[:, :, start:self.pos] = k, v
        return keys[:, :, :self.pos], values[:, :, :self.pos]

    def cross(self, layer, memory):
        """Cross-attention keys and values of `memory` for `layer`, projected once. Kept with the
        memory they came from: a cache reused on another source batch projects that one anew."""
        saved = self.cross_kv.get(layer)
        if saved is None or saved[0] is not memory:
            saved = self.cross_kv[layer] = (memory, layer.project_memory(memory))
        return saved[1]

    def select(self, rows):
        """Keep the self-attention histories of rows `rows` (a 1-D index; repeats allowed): beam
        search's surviving beams, the samples still running, or copies of a prompt read once.
        Cross-attention entries are the same for every beam of a sentence and stay put."""
        for layer, (k, v) in self.self_kv.items():
            self.self_kv[layer] = (k[rows], v[rows])


def next_token_logits(forward, tokens, cache):
    """Logits (B, V) of the token after `tokens` (B, T); forward(tokens, cache) -> logits (B, T', V).
    With a cache only the tokens it has not seen yet are fed in: after the prompt, one per step."""
    if cache is None:
        return forward(tokens, None)[:, -1]
    return forward(tokens[:, cache.pos:], cache)[:, -1]


# ---------------------------------------------------------------------------
# Sampling


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generators=None):
    """Pick one token per row from logits (B, V). temperature 0 is greedy (argmax);
    top_k keeps the k likeliest; top_p keeps the smallest set holding probability top_p.
    generators: one torch.Generator per row, so that a row's draws do not depend on the others."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        outside = probs.cumsum(dim=-1) - probs > top_p  # mass before this token already exceeds top_p
        sorted_logits = sorted_logits.masked_fill(outside, float('-inf'))
        logits = torch.full_like(logits, float('-inf')).scatter(-1, order, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    # One draw per row from probs, as torch.multinomial(probs, 1) makes it (same noise, same token)
    # but in one batched op: with Exp(1) noise, argmax(p / noise) picks token i with probability p_i.
    noise = torch.empty_like(probs)
    if generators is None:
        noise.exponential_()
    else:
        for row_noise, generator in zip(noise, generators):
            row_noise.exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1, keepdim=True)


@torch.inference_mode()
def stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True):
    """Yield (B, 1) new tokens of a GPT one at a time. With the KV cache each step feeds only the
    newest token. Past block_size the context is cropped to the last block_size tokens;
    every position then shifts, the cached keys are stale, and each step re-runs the window."""
    block_size = model.config.block_size
    cache = KVCache(block_size) if use_cache else None
    forward = lambda tokens, kv: model(tokens, cache=kv)[0]  # noqa: E731 (last-position logits)
    for _ in range(max_new_tokens):
        fits = idx.size(1) <= block_size
        logits = next_token_logits(forward, idx if fits else idx[:, -block_size:], cache if fits else None)
        next_token = sample_next_token(logits, temperature, top_k, top_p)
        idx = torch.cat((idx, next_token), dim=1)
        yield next_token


@torch.inference_mode()
def sample(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True):
    """Continue each row of idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens)."""
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, use_cache))
    return torch.cat([idx, *new], dim=1)


@torch.inference_mode()
def sample_rows(model, prompt, n_rows, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                generators=None, is_finished=None, use_cache=True):
    """n_rows continuations of one prompt (1, T), generated as one batch. The prompt is read once
    and its cache copied to every row. A row ends when is_finished(row, its new ids) says so, or
    after max_new_tokens; it then leaves the batch and costs nothing more.
    Yields (row, token id) for each new token, the rows of a step in order."""
    block_size = model.config.block_size
    cache = KVCache(block_size) if use_cache else None
    forward = lambda tokens, kv: model(tokens, cache=kv)[0]  # noqa: E731 (last-position logits)
    running, new_ids = list(range(n_rows)), [[] for _ in range(n_rows)]
    idx = prompt
    for step in range(max_new_tokens):
        fits = idx.size(1) <= block_size
        logits = next_token_logits(forward, idx if fits else idx[:, -block_size:], cache if fits else None)
        if step == 0:  # the prompt's logits and cache, shared by every row
            idx, logits = idx.expand(n_rows, -1), logits.expand(n_rows, -1)
            if cache is not None:
                cache.select(torch.zeros(n_rows, dtype=torch.long, device=idx.device))
        row_generators = [generators[row] for row in running] if generators is not None else None
        tokens = sample_next_token(logits, temperature, top_k, top_p, row_generators)
        idx = torch.cat((idx, tokens), dim=1)
        still = []
        for i, (row, token) in enumerate(zip(running, tokens[:, 0].tolist())):
            new_ids[row].append(token)
            yield row, token
            if is_finished is None or not is_finished(row, new_ids[row]):
                still.append(i)
        if len(still) < len(running):  # finished rows leave the batch
            if not still:
                return
            keep = torch.tensor(still, device=idx.device)
            idx, running = idx[keep], [running[i] for i in still]
            if cache is not None:
                cache.select(keep)


def find_stop(text, stops):
    """Index in `text` where the first stop string begins, or -1 if none occurs."""
    found = [i for i in (text.find(stop) for stop in stops if stop) if i >= 0]
    return min(found) if found else -1


# ---------------------------------------------------------------------------
# Encoder-decoder: greedy and beam search


def cut_at_eos(tokens, eos_id):
    """Rows of generated ids (B, 1 + T), starting with <bos> -> lists without <bos>, cut before <eos>."""
    out = []
    for row in tokens[:, 1:].tolist():
        out.append(row[:row.index(eos_id)] if eos_id in row else row)
    return out


def decoder_step(model, memory, mask):
    """decode() as next_token_logits wants it: the decoder reading `memory` at every step."""
    return lambda tokens, cache: model.decode(tokens, memory, mask, cache)


@torch.inference_mode()
def greedy_decode(model, src, max_new_tokens, use_cache=True):
    """Take the likeliest token at every step until each sentence has produced <eos>."""
    config = model.config
    memory, mask = model.encode(src)  # once per sentence
    step = decoder_step(model, memory, mask)
    cache = KVCache(max_new_tokens + 1) if use_cache else None
    tokens = torch.full((src.size(0), 1), config.bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    for _ in range(max_new_tokens):
        next_token = next_token_logits(step, tokens, cache).argmax(dim=-1)
        next_token = next_token.masked_fill(done, config.pad_id)
        tokens = torch.cat((tokens, next_token[:, None]), dim=1)
        done |= next_token == config.eos_id
        if done.all():
            break
    return cut_at_eos(tokens, config.eos_id)


@torch.inference_mode()
def beam_search(model, src, max_new_tokens, beam_size, length_penalty, use_cache=True):
    """Keep the beam_size likeliest partial translations of each sentence; at each step
    extend every one by every token and keep the best beam_size of the results. Finished
    beams stay, extended only by <pad> at no cost. The winner maximises
    log p / ((5 + length) / 6) ** length_penalty (Wu et al. 2016), so long outputs are not unfairly penalised."""
    config = model.config
    B, K, V = src.size(0), beam_size, config.vocab_size
    memory, mask = model.encode(src)  # once per sentence, then shared by its K beams
    step = decoder_step(model, memory.repeat_interleave(K, dim=0), mask.repeat_interleave(K, dim=0))
    cache = KVCache(max_new_tokens + 1) if use_cache else None
    tokens = torch.full((B * K, 1), config.bos_id, dtype=torch.long, device=src.device)
    scores = torch.zeros(B, K, device=src.device)
    scores[:, 1:] = float('-inf')  # all beams start identical: expand only the first
    lengths = torch.zeros(B * K, device=src.device)
    done = torch.zeros(B * K, dtype=torch.bool, device=src.device)
    for _ in range(max_new_tokens):
        logprobs = F.log_softmax(next_token_logits(step, tokens, cache).float(), dim=-1)
        logprobs[done] = float('-inf')
        logprobs[done, config.pad_id] = 0.0
        candidates = (scores.view(B * K, 1) + logprobs).view(B, K * V)
        scores, flat = candidates.topk(K, dim=-1)
        beam = (flat // V + torch.arange(B, device=src.device)[:, None] * K).view(-1)
        next_token = (flat % V).view(-1)
        tokens = torch.cat((tokens[beam], next_token[:, None]), dim=1)
        lengths = lengths[beam] + (~done[beam]).float()
        done = done[beam] | (next_token == config.eos_id)
        if cache is not None:
            cache.select(beam)
        if done.all():
            break
    normalised = scores / (((5.0 + lengths) / 6.0) ** length_penalty).view(B, K)
    best = normalised.argmax(dim=-1) + torch.arange(B, device=src.device) * K
    return cut_at_eos(tokens[best], config.eos_id)


def right_padded(rows, pad_id, device):
    """Lists of ids -> one (len(rows), longest) tensor on `device`, right-padded with pad_id."""
    out = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    for r, row in enumerate(rows):
        out[r, :len(row)] = torch.tensor(row)
    return out.to(device)


def cropped(ids, limit, what):
    """Lists of token ids cut to `limit` (model.input_limit: a model with learned positions has no
    vector past them), with one warning naming the lines cut; as they are when limit is None."""
    too_long = [i + 1 for i, x in enumerate(ids) if limit is not None and len(x) > limit]
    if too_long:
        print(f"warning: {len(too_long)} sentence(s) longer than the model reads ({limit} tokens) {what} from their "
              f"first {limit} tokens: line(s) {', '.join(map(str, too_long))}", file=sys.stderr)
    return [x[:limit] for x in ids] if too_long else ids


@torch.inference_mode()
def translate(model, sentences, tokenizer, device='cpu', beam_size=1, length_penalty=0.6, batch_size=64):
    """Source sentences (str) -> translations (str), one per sentence. Sentences of similar
    length share a batch, so little of it is padding; one longer than the model was trained on
    is cropped (learned positions, with a warning) or translated alone (computed positions)."""
    config = model.config
    ids = cropped([tokenizer.encode(s) for s in sentences], model.input_limit(), 'translated')
    out = [''] * len(ids)  # an empty line translates to an empty line
    order = sorted((i for i in range(len(ids)) if ids[i]), key=lambda i: len(ids[i]))
    fits = [i for i in order if len(ids[i]) <= config.src_block_size]
    batches = [fits[start:start + batch_size] for start in range(0, len(fits), batch_size)]
    batches += [[i] for i in order if len(ids[i]) > config.src_block_size]  # longer than trained: each alone
    for chunk in batches:
        src = right_padded([ids[i] for i in chunk], config.pad_id, device)
        for i, hypothesis in zip(chunk, model.generate(src, beam_size=beam_size, length_penalty=length_penalty)):
            out[i] = tokenizer.decode(hypothesis)
    return out


def bleu_score(hypotheses, references):
    """sacreBLEU of translations against one reference each (detokenized, its 13a tokenizer): the score
    papers report. Returns sacrebleu's result; .score is the number."""
    try:
        import sacrebleu
    except ImportError:
        raise UserError("BLEU needs sacrebleu: pip install sacrebleu") from None
    return sacrebleu.corpus_bleu(hypotheses, [references])


# ---------------------------------------------------------------------------
# Encoder: fills and labels


def frame_text(tokenizer, ids):
    """[CLS] text [SEP]: how an encoder reads a sentence (its [CLS] vector is the sentence's)."""
    return [tokenizer.cls_id, *ids, tokenizer.sep_id]


@torch.inference_mode()
def fill_masks(model, tokenizer, text, k=5, device='cpu'):
    """For each [MASK] in text, in order: the k likeliest tokens there and their probabilities,
    as a list of (token string, probability) lists. Every [MASK] is guessed from the whole text."""
    ids = torch.tensor([frame_text(tokenizer, tokenizer.encode(text))], device=device)
    logits, _ = model(ids)
    probs = F.softmax(logits[0, ids[0] == tokenizer.mask_id].float(), dim=-1)
    top = probs.topk(min(k, probs.size(-1)), dim=-1)
    return [[(tokenizer.id_to_token(i), p) for i, p in zip(ids_.tolist(), ps.tolist())]
            for ids_, ps in zip(top.indices, top.values)]


@torch.inference_mode()
def label_sentences(model, tokenizer, sentences, device='cpu', batch_size=64):
    """Sentences (str) -> (class number, its probability) for each. Sentences of similar length share
    a batch; the padding is masked, so a sentence gets the same label alone or in any batch. With
    learned positions a sentence longer than block_size is read from its first tokens."""
    limit = model.input_limit()
    texts = cropped([tokenizer.encode(s) for s in sentences], limit and limit - 2, 'labelled')  # [CLS], [SEP]
    ids = [frame_text(tokenizer, x) for x in texts]
    out = [None] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        probs = F.softmax(model(right_padded([ids[i] for i in chunk], model.config.pad_id, device))[0].float(), dim=-1)
        best = probs.max(dim=-1)
        for i, label, p in zip(chunk, best.indices.tolist(), best.values.tolist()):
            out[i] = (label, p)
    return out
