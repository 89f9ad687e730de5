"""
Generation: everything that turns a trained model into new tokens, for GPT and the
encoder-decoder alike.

- KVCache: keys and values of the tokens already read, so each new token costs one position.
- sample_next_token: temperature, top-k, top-p; temperature 0 is greedy.
- sample: a GPT continues a prompt, token by token (nanoGPT's generate).
- sample_rows: many continuations of one prompt in one batch, each stopping on its own; speculative_rows: the same
  with a draft model's proposals, kept by speculative_accept.
- greedy_decode, beam_search, translate: an encoder-decoder writes translations, batched by length.
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
    """Keys and values already computed during generation, so that each new token is one query against the stored
    keys instead of a re-run of the whole context. Self-attention layers write each new position into buffers of
    max_len positions made on first use (no re-allocation as the text grows); cross-attention layers store the
    projection of the encoder output once per source batch (it never changes while decoding it). Rows may hold
    different numbers of positions (`lengths`, speculative decoding's rows), each rolled back alone."""

    def __init__(self, max_len):
        self.max_len = max_len
        self.pos = 0  # positions held so far (the longest row's)
        self.lengths = None  # (B,) each row's positions, when rows hold different numbers (speculative_rows)
        self.self_kv = {}  # layer -> (k, v) buffers, (B, heads, max_len, head_dim)
        self.cross_kv = {}  # layer -> (memory, (k, v) of that memory)

    def reserve(self, T):
        """A forward of T new tokens begins: they take positions pos..pos+T-1 (model.causal_attention
        masks them). Returns pos, the positions already held (each row's, a tensor, when they differ)."""
        start = self.pos if self.lengths is None else self.lengths
        self.pos += T
        self.lengths = None if self.lengths is None else self.lengths + T
        return start

    def append(self, layer, k, v):
        """Store the new tokens' k, v (B, heads, T, head_dim) where reserve put them; return the keys and values so far."""
        if layer not in self.self_kv:  # zeros: rows of different lengths read (masked) slots never written, and
            B, H, _, D = k.shape       # a masked NaN of uninitialised memory would still be NaN (0 x NaN)
            self.self_kv[layer] = (k.new_zeros(B, H, self.max_len, D), v.new_zeros(B, H, self.max_len, D))
        keys, values = self.self_kv[layer]
        if self.lengths is not None:  # row r's new tokens go to its positions lengths[r] - T .. lengths[r] - 1
            B, H, T, D = k.shape  # as rows of the flat buffers: index_copy_ is ~20x faster than scatter_ in bf16
            at = (self.lengths - T)[:, None, None] + torch.arange(T, device=k.device)
            at = (at + torch.arange(B * H, device=k.device).view(B, H, 1) * self.max_len).view(-1)
            for buffer, new in ((keys, k), (values, v)):
                buffer.view(-1, D).index_copy_(0, at, new.reshape(-1, D))
            return keys[:, :, :self.pos], values[:, :, :self.pos]
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
        if self.lengths is not None:
            self.roll_back(self.lengths[rows])

    def roll_back(self, lengths):
        """Keep the first lengths[r] positions of each row r (B,), forgetting the rest: a rejected draft's tokens.
        Nothing is copied; the next tokens are written over them, and the mask (model.causal_attention) never
        lets a row read past its length. Rows of one length go back to the plain path (one length for all)."""
        self.pos = int(lengths.max())
        self.lengths = None if bool((lengths == self.pos).all()) else lengths


def next_token_logits(forward, tokens, cache, window=None):
    """Logits (B, V) of the token after `tokens` (B, T); forward(tokens, cache) -> logits (B, T', V). With a cache only
    the tokens it has not seen yet are fed in: after the prompt, one per step. Past `window` tokens (a GPT's block_size)
    the last `window` are re-read without the cache: every position shifts, so the cached keys are stale."""
    if window is not None and tokens.size(1) > window:
        return forward(tokens[:, -window:], None)[:, -1]
    return forward(tokens if cache is None else tokens[:, cache.pos:], cache)[:, -1]


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
    return draw(token_probabilities(logits, temperature, top_k, top_p), generators)


def token_probabilities(logits, temperature=1.0, top_k=None, top_p=None):
    """The distribution sample_next_token draws from, for logits (..., V): temperature, then top_k, then top_p;
    temperature 0 puts all of it on the argmax."""
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[..., [-1]]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        outside = probs.cumsum(dim=-1) - probs > top_p  # mass before this token already exceeds top_p
        sorted_logits = sorted_logits.masked_fill(outside, float('-inf'))
        logits = torch.full_like(logits, float('-inf')).scatter(-1, order, sorted_logits)
    return F.softmax(logits, dim=-1)


def draw(probs, generators=None):
    """One token per row of probs (B, V) (weights: they need not sum to 1), each row from its own generator if
    given. As torch.multinomial(probs, 1) draws it (same noise, same token) but in one batched op: with Exp(1)
    noise, argmax(p / noise) picks token i with probability p_i / sum(p)."""
    noise = torch.empty_like(probs)
    if generators is None:
        noise.exponential_()
    else:
        for row_noise, generator in zip(noise, generators):
            row_noise.exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1, keepdim=True)


@torch.inference_mode()
def sample(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True):
    """Continue each row of idx (B, T) by max_new_tokens tokens of a GPT, one at a time; returns
    (B, T + max_new_tokens). With the KV cache each step feeds only the newest token."""
    cache = KVCache(model.config.block_size) if use_cache else None
    forward = lambda tokens, kv: model(tokens, cache=kv)[0]  # noqa: E731 (last-position logits)
    for _ in range(max_new_tokens):
        logits = next_token_logits(forward, idx, cache, model.config.block_size)
        idx = torch.cat((idx, sample_next_token(logits, temperature, top_k, top_p)), dim=1)
    return idx


@torch.inference_mode()
def sample_rows(model, prompt, n_rows, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                generators=None, is_finished=None, use_cache=True):
    """n_rows continuations of one prompt (1, T), generated as one batch. The prompt is read once and its cache copied
    to every row. A row ends when is_finished(row, its new ids) says so, or after max_new_tokens; it then leaves the
    batch and costs nothing more. Yields (row, token id) for each new token, the rows of a step in order."""
    cache = KVCache(model.config.block_size) if use_cache else None
    forward = lambda tokens, kv: model(tokens, cache=kv)[0]  # noqa: E731 (last-position logits)
    running, new_ids = list(range(n_rows)), [[] for _ in range(n_rows)]
    idx = prompt
    for step in range(max_new_tokens):
        logits = next_token_logits(forward, idx, cache, model.config.block_size)
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


def speculative_accept(p, q, drafted, generators=None):
    """Speculative sampling's rule (Leviathan et al. 2023; Chen et al. 2023). drafted (B, k): the draft's tokens,
    drawn from its probabilities q (B, k, V); p (B, k + 1, V): the model's there and one after (both shaped by
    token_probabilities). Draft token i is kept with probability min(1, p_i / q_i) while all before it were; the
    first rejected is replaced by a draw from max(0, p - q), and after k kept a token is drawn from p.
    Returns (kept counts (B,), that token (B, 1)). Exact: x comes out by acceptance with probability
    q(x) min(1, p(x) / q(x)) = min(p(x), q(x)), by rejection with sum_y max(0, q(y) - p(y)) = sum_y max(0, p(y) - q(y))
    times max(0, p(x) - q(x)) / that sum: min(p, q)(x) + max(0, p(x) - q(x)) = p(x). Greedy: p and q one-hot."""
    B, k = drafted.shape
    u = torch.rand(B, k, device=p.device) if generators is None else \
        torch.stack([torch.rand(k, generator=generator, device=p.device) for generator in generators])
    p_drafted, q_drafted = p[:, :k].gather(-1, drafted[..., None])[..., 0], q.gather(-1, drafted[..., None])[..., 0]
    kept = (u * q_drafted < p_drafted).long().cumprod(dim=1).sum(dim=1)
    after = torch.cat(((p[:, :k] - q).clamp(min=0), p[:, k:]), dim=1)  # what the token after the kept ones is drawn from
    return kept, draw(after[torch.arange(B, device=p.device), kept], generators)


def propose(draft, cache, feed, k, temperature, top_k, top_p, generators):
    """The draft's k tokens (B, k), drawn one at a time with its cache, and the probabilities (B, k, V) they were
    drawn from (None when k is 0). feed (B, w): the tokens its cache has not read yet."""
    tokens, probs = [feed[:, :0]], []
    for _ in range(k):
        probs.append(token_probabilities(draft(feed, cache=cache)[0][:, -1], temperature, top_k, top_p))
        feed = draw(probs[-1], generators)
        tokens.append(feed)
    return torch.cat(tokens, dim=1), torch.stack(probs, dim=1) if k else None


def speculative_pass(model, draft, caches, tokens, length, behind, k, shape, generators, stats):
    """One round for every row: the draft proposes k tokens, the model reads them in one pass, speculative_accept
    keeps a prefix and adds one of the model's. The rows' new tokens are written into `tokens` after each row's
    `length`, and both caches roll back what was rejected. Returns (new tokens (B, k + 1), kept counts (B,)): each
    row's first kept + 1 are its new ones. shape: (temperature, top_k, top_p)."""
    cache, draft_cache = caches
    device = tokens.device
    unread = tokens.gather(1, length[:, None] - behind + torch.arange(behind, device=device))  # not in the draft's cache
    drafted, q = propose(draft, draft_cache, unread, k, *shape, generators)
    p = token_probabilities(model(torch.cat((unread[:, -1:], drafted), dim=1), cache=cache, all_logits=True)[0], *shape)
    kept, own = speculative_accept(p, p[:, :0] if q is None else q, drafted, generators)
    new = torch.cat((drafted, own), dim=1).scatter(1, kept[:, None], own)
    tokens.scatter_(1, length[:, None] + torch.arange(k + 1, device=device), new)
    cache.roll_back(length + kept)
    if k:
        draft_cache.roll_back(length + kept - 1)
    if stats is not None and k:
        stats['passes'] = stats.get('passes', 0) + len(length)
        stats['accepted'] = stats.get('accepted', 0) + int(kept.sum())
    return new, kept


@torch.inference_mode()
def speculative_rows(model, draft, prompt, n_rows, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                     generators=None, is_finished=None, draft_tokens=4, stats=None):
    """sample_rows by speculative decoding (greedy: the same tokens; sampling: the same distribution), rounds of
    speculative_pass; rows past block_size end with plain steps (sliding_rows). stats: a dict to count 'passes'
    (rows verified) and 'accepted' (draft tokens kept)."""
    block_size, T, device = model.config.block_size, prompt.size(1), prompt.device
    if T > block_size:
        yield from sample_rows(model, prompt, n_rows, max_new_tokens, temperature, top_k, top_p, generators, is_finished)
        return
    caches = KVCache(block_size), KVCache(draft.config.block_size)
    if T > 1:  # the prompt but its last token, read once by each model and copied to every row
        for net, kv in zip((model, draft), caches):
            net(prompt[:, :-1], cache=kv)
            kv.select(torch.zeros(n_rows, dtype=torch.long, device=device))
    tokens = torch.cat((prompt.expand(n_rows, -1), prompt.new_zeros(n_rows, max_new_tokens + draft_tokens + 1)), dim=1)
    length = torch.full((n_rows,), T, device=device)  # tokens of each row; the model's cache holds all but the last
    behind = 1  # the draft's cache holds all but the last `behind` of each row
    running, new_ids, parked = list(range(n_rows)) if max_new_tokens else [], [[] for _ in range(n_rows)], []
    while running:
        k = min(draft_tokens, block_size - int(length.max()))  # the longest row's positions must fit
        new, kept = speculative_pass(model, draft, caches, tokens, length, behind, k, (temperature, top_k, top_p),
                                     [generators[row] for row in running] if generators else None, stats)
        behind, length = 2 if k else behind + 1, length + kept + 1
        still, lengths = [], length.tolist()
        for i, (row, ids, count) in enumerate(zip(running, new.tolist(), (kept + 1).tolist())):
            for token in ids[:count]:
                new_ids[row].append(token)
                yield row, token
                if len(new_ids[row]) == max_new_tokens or is_finished is not None and is_finished(row, new_ids[row]):
                    break
            else:  # unfinished: on, or, its context full, to plain steps
                (parked.append((row, tokens[i, :block_size + 1])) if lengths[i] > block_size else still.append(i))
        if not still:
            break
        if len(still) < len(running):  # finished rows and full ones leave the batch
            keep = torch.tensor(still, dtype=torch.long, device=device)
            running, tokens, length = [running[i] for i in still], tokens[keep], length[keep]
            for kv in caches:
                kv.select(keep)
    if parked:
        yield from sliding_rows(model, parked, new_ids, max_new_tokens, (temperature, top_k, top_p), generators,
                                is_finished)


def sliding_rows(model, parked, new_ids, max_new_tokens, shape, generators, is_finished):
    """The rows whose context is full, (row, its last block_size + 1 tokens), go on as sample_rows does past
    block_size (a sliding window, no cache), all in one batch, each until its own max_new_tokens or stop."""
    rows = [row for row, _ in parked]

    def finished(i, _):
        return len(new_ids[rows[i]]) >= max_new_tokens or is_finished is not None and is_finished(rows[i], new_ids[rows[i]])
    plain = sample_rows(model, torch.stack([window for _, window in parked]), len(rows),
                        max(max_new_tokens - len(new_ids[row]) for row in rows), *shape,
                        generators and [generators[row] for row in rows], finished, use_cache=False)
    for i, token in plain:
        new_ids[rows[i]].append(token)
        yield rows[i], token


def find_stop(text, stops):
    """Index in `text` where the first stop string begins, or -1 if none occurs."""
    found = [i for i in (text.find(stop) for stop in stops if stop) if i >= 0]
    return min(found) if found else -1


# ---------------------------------------------------------------------------
# Encoder-decoder: greedy and beam search


def cut_at_eos(tokens, eos_id):
    """Rows of generated ids (B, 1 + T), starting with <bos> -> lists without <bos>, cut before <eos>."""
    return [row[:row.index(eos_id)] if eos_id in row else row for row in tokens[:, 1:].tolist()]


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
    """Keep the beam_size likeliest partial translations of each sentence; at each step extend every one by every token
    and keep the best beam_size of the results. Finished beams stay, extended only by <pad> at no cost. The winner
    maximises log p / ((5 + length) / 6) ** length_penalty (Wu et al. 2016): long outputs are not unfairly penalised."""
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
