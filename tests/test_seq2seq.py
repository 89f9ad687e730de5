"""The encoder-decoder translation system: what its attention can see, its decoders, its data and its
training loop.

Most tests use tiny random models whose weights are drawn wide enough that the logits differ by
whole units, so argmax decisions do not hinge on rounding. A few use a tiny model trained to
memorise eight sentence pairs: it ends its translations with <eos>, at various lengths.
"""
import json

import pytest
import torch

import generate
import train
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import needs, widen
from data import SentencePairs
from model import CrossAttention, Seq2SeqConfig, Seq2SeqTransformer
from tokenizer import load_meta, tokenizer_from_meta

PAD, BOS, EOS = 0, 1, 2  # Seq2SeqConfig's defaults, and what prepare/multi30k.py assigns
VOCAB = 40
MAX_NEW_TOKENS = 12


def tiny_model(seed=0, **overrides):
    """A random 2+2-layer model in eval mode, with weights wide enough for clear argmax decisions."""
    torch.manual_seed(seed)
    settings = dict(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                    src_block_size=16, tgt_block_size=16, label_smoothing=0.0)
    return widen(Seq2SeqTransformer(Seq2SeqConfig(**{**settings, **overrides}))).eval()


def random_tokens(*shape, seed=1):
    """Ids of ordinary tokens (never <pad>, <bos> or <eos>)."""
    return torch.randint(4, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def pad_rows(rows):
    """Right-pad lists of ids with <pad> into one (len(rows), longest) tensor."""
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for r, row in enumerate(rows):
        out[r, :len(row)] = torch.tensor(row)
    return out


def logits_of(model, src, tgt_in):
    with torch.no_grad():
        return model(src, tgt_in)[0]


# ---------------------------------------------------------------------------
# Attention: what each decoder position can see


def test_changing_a_source_token_changes_every_target_position():
    model = tiny_model()
    src, tgt_in = random_tokens(1, 6), random_tokens(1, 5, seed=2)
    changed = src.clone()
    changed[0, 3] = 4 if src[0, 3] != 4 else 5
    difference = (logits_of(model, changed, tgt_in) - logits_of(model, src, tgt_in)).abs()
    assert difference.amax(dim=-1).min() > 1e-3


@pytest.mark.parametrize('where, is_read', [('padding', False), ('real token', True)])
def test_only_real_source_positions_are_read(where, is_read):
    """Noise added to the encoder's input at <pad> positions changes no logit: neither the encoder's
    self-attention nor the decoder's cross-attention reads them. The same noise at a real token does."""
    model = tiny_model()
    src = torch.cat((random_tokens(1, 4), torch.full((1, 3), PAD)), dim=1)
    tgt_in = random_tokens(1, 5, seed=2)
    noisy_positions = (src == PAD) if where == 'padding' else torch.arange(7) == 1
    noise = torch.randn(1, 7, 32) * noisy_positions[..., None]
    clean = logits_of(model, src, tgt_in)
    # on the source's positions' output: the embedding itself is shared with the target
    model.src_pos.register_forward_hook(lambda module, inputs, output: (output[0] + noise, output[1]))
    noisy = logits_of(model, src, tgt_in)
    assert ((noisy - clean).abs().max() > 1e-3) == is_read
    if not is_read:
        torch.testing.assert_close(noisy, clean, rtol=0, atol=1e-5)


@pytest.mark.parametrize('position', [0, 3, 6])
def test_decoder_self_attention_is_causal(position):
    """Changing target token `position` leaves the logits before it unchanged, and changes its own."""
    model = tiny_model()
    src, tgt_in = random_tokens(2, 6), random_tokens(2, 7, seed=2)
    changed = tgt_in.clone()
    changed[:, position] = torch.where(tgt_in[:, position] == 4, 5, 4)
    logits, logits_changed = logits_of(model, src, tgt_in), logits_of(model, src, changed)
    torch.testing.assert_close(logits_changed[:, :position], logits[:, :position], rtol=0, atol=1e-6)
    assert (logits_changed[:, position] - logits[:, position]).abs().max() > 1e-3


def test_padded_batch_gives_the_same_logits_as_one_sentence_at_a_time():
    model = tiny_model()
    srcs = [random_tokens(n, seed=n).tolist() for n in (3, 7, 5)]
    tgts = [[BOS] + random_tokens(n, seed=10 + n).tolist() for n in (2, 6, 4)]
    batch = logits_of(model, pad_rows(srcs), pad_rows(tgts))
    for row, (src, tgt) in enumerate(zip(srcs, tgts)):
        alone = logits_of(model, torch.tensor([src]), torch.tensor([tgt]))[0]
        torch.testing.assert_close(batch[row, :len(tgt)], alone, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------
# Decoding: greedy, beam search, the cache


PAIRS = [  # (source, target): the target is the source reversed, each token shifted by 20
    ([5, 6, 7], [27, 26, 25]),
    ([8, 9], [29, 28]),
    ([10, 4, 11, 12, 5], [32, 31, 24, 30, 25]),
    ([13], [33]),
    ([14, 15, 16, 17], [37, 36, 35, 34]),
    ([18, 19, 6, 8, 10, 12], [32, 30, 28, 26, 39, 38]),
    ([7, 7, 9], [29, 27, 27]),
    ([11, 13, 15, 17, 19, 4], [24, 39, 37, 35, 33, 31]),
]


def pairs_batch():
    """(src, tgt_in, targets) of PAIRS, as SentencePairs.batch makes them."""
    src = pad_rows([s for s, _ in PAIRS])
    tgt_in = pad_rows([[BOS] + t for _, t in PAIRS])
    targets = torch.full_like(tgt_in, -1)
    for row, (_, t) in enumerate(PAIRS):
        targets[row, :len(t) + 1] = torch.tensor(t + [EOS])
    return src, tgt_in, targets


@pytest.fixture(scope='module')
def memorised():
    """(model, final loss): a tiny model trained on PAIRS until it knows them by heart."""
    torch.manual_seed(0)
    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                                             src_block_size=16, tgt_block_size=16, label_smoothing=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    batch = pairs_batch()
    for _ in range(300):
        _, loss = model(*batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        _, loss = model(*batch)
    return model, loss.item()


def test_tiny_model_memorises_pairs_and_translates_them_exactly(memorised):
    model, loss = memorised
    assert loss < 0.01
    src = pairs_batch()[0]
    expected = [t for _, t in PAIRS]
    assert model.generate(src, beam_size=1) == expected
    assert model.generate(src, beam_size=4) == expected


@pytest.fixture(params=['random', 'memorised'])
def model_and_sources(request):
    """(model, padded sources): a random model, which rarely stops before MAX_NEW_TOKENS, or the
    memorised one, whose translations stop at various lengths (sources slightly off the pairs too)."""
    if request.param == 'random':
        return tiny_model(), pad_rows([random_tokens(n, seed=n).tolist() for n in (3, 8, 1, 5)])
    model = request.getfixturevalue('memorised')[0]
    sources = [s for s, _ in PAIRS] + [[5, 6, 8], [14, 15, 17, 16, 4]]
    return model, pad_rows(sources)


def test_beam_search_of_size_one_is_greedy(model_and_sources):
    model, src = model_and_sources
    assert generate.beam_search(model, src, MAX_NEW_TOKENS, beam_size=1, length_penalty=0.6) == \
        generate.greedy_decode(model, src, MAX_NEW_TOKENS)


@pytest.mark.parametrize('beam_size', [1, 3])
def test_padded_batch_translates_as_one_sentence_at_a_time(model_and_sources, beam_size):
    model, src = model_and_sources
    batched = model.generate(src, MAX_NEW_TOKENS, beam_size=beam_size)
    lengths = (src != PAD).sum(dim=1)
    alone = [model.generate(row[None, :n], MAX_NEW_TOKENS, beam_size=beam_size)[0] for row, n in zip(src, lengths)]
    assert batched == alone


@pytest.mark.parametrize('beam_size', [1, 3])
def test_cached_decoding_equals_uncached(model_and_sources, beam_size):
    model, src = model_and_sources
    assert model.generate(src, MAX_NEW_TOKENS, beam_size=beam_size, use_cache=True) == \
        model.generate(src, MAX_NEW_TOKENS, beam_size=beam_size, use_cache=False)


@pytest.mark.parametrize('beam_size', [1, 3])
def test_cross_attention_keys_and_values_are_computed_once_per_sentence(monkeypatch, beam_size):
    """With the cache, each decoder layer projects the encoder output once for the whole
    translation; without it, once per generated token (which shows that the count works)."""
    model, src = tiny_model(), random_tokens(2, 5)
    projections, decoder_calls = [], []
    project_memory, decode = CrossAttention.project_memory, model.decode

    def counting_project_memory(self, memory):
        projections.append(self)
        return project_memory(self, memory)

    def counting_decode(*args, **kwargs):
        decoder_calls.append(1)
        return decode(*args, **kwargs)

    monkeypatch.setattr(CrossAttention, 'project_memory', counting_project_memory)
    monkeypatch.setattr(model, 'decode', counting_decode)
    cross_attentions = [block.cross_attn for block in model.decoder]
    model.generate(src, MAX_NEW_TOKENS, beam_size=beam_size, use_cache=True)
    assert len(decoder_calls) > 2 and projections == cross_attentions
    projections.clear()
    decoder_calls.clear()
    model.generate(src, MAX_NEW_TOKENS, beam_size=beam_size, use_cache=False)
    assert projections == cross_attentions * len(decoder_calls)


# ---------------------------------------------------------------------------
# Data: the Multi30k mirror prepared with a small vocabulary (conftest.multi30k_dir)


def test_prepared_sentences_round_trip_through_the_tokenizer(multi30k_dir):
    tokenizer = tokenizer_from_meta(load_meta(multi30k_dir))
    data = SentencePairs(multi30k_dir, block_size=64, device='cpu')
    for lang, side in (('de', 0), ('en', 1)):
        lines = (multi30k_dir / f'val.{lang}.txt').read_text(encoding='utf-8').splitlines()
        for i in (0, 17, len(lines) - 1):
            ids = data.sentence('val', side, i).tolist()
            assert tokenizer.encode(lines[i]) == ids
            assert tokenizer.decode(ids) == lines[i]


@pytest.mark.parametrize('block_size', [64, 6])
def test_sentence_pairs_batch(multi30k_dir, block_size):
    """src: the source padded with <pad>; tgt_in: <bos> + target; targets: target + <eos>, -1 at
    padding. Sentences longer than block_size are cut (the target to make room for <eos>)."""
    data = SentencePairs(multi30k_dir, block_size=block_size, device='cpu')
    rows = torch.tensor([4, 0, 9, 123])
    src, tgt_in, targets = data.batch('train', rows)
    for r, i in enumerate(rows.tolist()):
        s = data.sentence('train', 0, i).tolist()[:block_size]
        t = data.sentence('train', 1, i).tolist()[:block_size - 1]
        padding = tgt_in.size(1) - 1 - len(t)
        assert src[r].tolist() == s + [PAD] * (src.size(1) - len(s))
        assert tgt_in[r].tolist() == [BOS] + t + [PAD] * padding
        assert targets[r].tolist() == t + [EOS] + [-1] * padding
    assert src.size(1) <= block_size and tgt_in.size(1) <= block_size
    assert data.num_targets('train', rows) == (targets != -1).sum().item()


# ---------------------------------------------------------------------------
# Training: train.main in-process on the prepared mirror


def run_training(data_dir, out_dir, **overrides):
    settings = dict(dataset=str(data_dir), model_type='seq2seq', out_dir=str(out_dir), device='cpu',
                    compile=False, n_layer=1, n_head=2, n_embd=32, dropout=0.1, block_size=32, batch_size=8,
                    max_iters=6, warmup_iters=2, lr_decay_iters=6, eval_interval=2, eval_iters=2,
                    bleu_sentences=4, log_interval=1)
    train.main([f'--{key}={value}' for key, value in {**settings, **overrides}.items()])


@needs('sacrebleu')
def test_training_evaluates_bleu_and_resumes_exactly(multi30k_dir, tmp_path):
    run_training(multi30k_dir, tmp_path / 'straight')
    run_training(multi30k_dir, tmp_path / 'resumed', max_iters=4)
    run_training(multi30k_dir, tmp_path / 'resumed', init_from='resume')

    straight, resumed = load_checkpoint(tmp_path / 'straight'), load_checkpoint(tmp_path / 'resumed')
    assert straight['iter_num'] == resumed['iter_num'] == 6
    for name, tensor in straight['model'].items():
        assert torch.equal(tensor, resumed['model'][name]), name

    lines = [json.loads(line) for line in (tmp_path / 'straight' / 'metrics.jsonl').read_text().splitlines()]
    evals = [line for line in lines if 'bleu' in line]
    assert [line['iter'] for line in evals] == [0, 2, 4, 6]
    # the last BLEU is that of the saved model's greedy translations of the first validation sentences
    model = model_from_checkpoint(straight).eval()
    sources = (multi30k_dir / 'val.de.txt').read_text(encoding='utf-8').splitlines()[:4]
    references = (multi30k_dir / 'val.en.txt').read_text(encoding='utf-8').splitlines()[:4]
    hypotheses = generate.translate(model, sources, tokenizer_from_meta(load_meta(multi30k_dir)))
    import sacrebleu
    assert evals[-1]['bleu'] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)


# ---------------------------------------------------------------------------
# Edge cases found by reading


def test_an_empty_source_sentence_gives_finite_logits_loss_and_translation():
    """A source of padding only would mask every key of its attention rows (softmax of nothing = NaN)."""
    model = tiny_model()
    src = torch.tensor([[5, 6, 7], [PAD, PAD, PAD]])
    tgt_in, targets = random_tokens(2, 4, seed=2), random_tokens(2, 4, seed=3)
    model.train()
    logits, loss = model(src, tgt_in, targets)
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    for beam_size in (1, 2):
        out = model.generate(src, MAX_NEW_TOKENS, beam_size=beam_size)
        assert len(out) == 2
    # the real sentence is translated as if alone
    assert model.generate(src, MAX_NEW_TOKENS)[0] == model.generate(src[:1], MAX_NEW_TOKENS)[0]


def test_a_cache_reused_on_another_source_batch_reads_that_batch():
    """The cross-attention cache is tied to the encoder output it was made from."""
    model = tiny_model()
    first, second = random_tokens(1, 5), random_tokens(1, 5, seed=7)
    tgt_in = torch.tensor([[BOS]])
    with torch.no_grad():
        cache = generate.KVCache(16)
        memory, mask = model.encode(first)
        model.decode(tgt_in, memory, mask, cache)
        cache.pos = 0  # the same cache, now for another sentence
        memory, mask = model.encode(second)
        reused = model.decode(tgt_in, memory, mask, cache)
        fresh = model.decode(tgt_in, memory, mask)
    torch.testing.assert_close(reused, fresh)


class NumberTokenizer:
    """Sentences written as token ids: '5 6 7' <-> [5, 6, 7]."""

    def encode(self, text):
        return [int(word) for word in text.split()]

    def decode(self, ids):
        return ' '.join(map(str, ids))


@pytest.mark.parametrize('pos_emb', ['learned', 'sinusoidal', 'rope'])
def test_a_sentence_twice_the_trained_length_is_translated_not_refused(pos_emb, capsys):
    model = tiny_model(pos_emb=pos_emb)  # src_block_size=16
    long_line = ' '.join(str(4 + i % 30) for i in range(32))
    lines = ['5 6 7', long_line, '', '8 9']
    capsys.readouterr()
    out = generate.translate(model, lines, NumberTokenizer(), beam_size=2)
    err = capsys.readouterr().err
    assert len(out) == 4 and out[2] == ''
    assert out[0] == generate.translate(model, lines[:1], NumberTokenizer(), beam_size=2)[0]
    if pos_emb == 'learned':  # no position past 16: the first 16 tokens, and one warning naming the line
        assert err.splitlines() == ["warning: 1 sentence(s) longer than the model reads (16 tokens) "
                                    "translated from their first 16 tokens: line(s) 2"]
        first_16 = ' '.join(long_line.split()[:16])
        assert out[1] == generate.translate(model, [first_16], NumberTokenizer(), beam_size=2)[0]
    else:  # computed positions extend: the whole sentence is read, and the target may be as long
        assert err == ''
        src = torch.tensor([NumberTokenizer().encode(long_line)])
        assert model.generate(src, beam_size=2) == [NumberTokenizer().encode(out[1])]
        assert len(model.src_pos.table if pos_emb == 'sinusoidal' else model.src_pos.cos) >= 32  # grown
