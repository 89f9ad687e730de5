"""The encoder-only model (BERT-style): bidirectional attention, padding, masked-language-model
data, the classification data, and the prepare scripts for the pretraining corpus and SST-2."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configurator import UserError
from conftest import needs
from data import LabelledSentences, MaskedSentences, MASK_SEED_BITS
from model import GPT, Encoder, EncoderConfig, GPTConfig
from prepare import mlm_corpus, read_sst2_split, sst2
from tokenizer import MaskedLMTokenizer, SubwordTokenizer, load_meta, tokenizer_from_meta, tokenizer_from_state

SHARED = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
REVIEWS, SST2 = SHARED / 'movie_reviews' / 'reviews.txt.gz', SHARED / 'sst2'
needs_mirrors = pytest.mark.skipif(not (REVIEWS.is_file() and SST2.is_dir()), reason='offline mirrors absent')


def tiny_encoder(**kwargs):
    settings = dict(vocab_size=50, n_layer=2, n_head=2, n_embd=16, block_size=32)
    return Encoder(EncoderConfig(**{**settings, **kwargs})).eval()


def dev_sentences():
    return read_sst2_split(SST2 / 'dev.tsv.gz')[0]


def review_lines(n_sentences):
    """The first lines of the movie reviews, up to n_sentences non-blank ones."""
    lines = []
    with gzip.open(REVIEWS, 'rt', encoding='utf-8') as f:
        while sum(map(bool, lines)) < n_sentences:
            lines.append(next(f).strip())
    return lines


@pytest.fixture(scope='module')
def corpus_dir(tmp_path_factory):
    """3,000 sentences of the movie reviews (and the blank lines between reviews) with three SST-2 dev
    sentences slipped in (one recased, one respaced)."""
    if not (REVIEWS.is_file() and SST2.is_dir()):
        pytest.skip('offline mirrors absent')
    pytest.importorskip('tokenizers')
    raw = tmp_path_factory.mktemp('raw')
    lines = review_lines(3000)
    dev = dev_sentences()
    lines[10:10] = [dev[0], dev[1].upper(), '  ' + dev[2].replace(' ', '   ')]
    (raw / 'reviews.txt').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return mlm_corpus.prepare(out_dir=tmp_path_factory.mktemp('corpus'), input_path=raw, vocab_size=600,
                              val_fraction=0.05, sst2_dir=SST2)


@pytest.fixture(scope='module')
def sst2_dir(corpus_dir, tmp_path_factory):
    return sst2.prepare(out_dir=tmp_path_factory.mktemp('sst2'), input_path=SST2, tokenizer_from=corpus_dir)


# --- tokenizer ---------------------------------------------------------------

@needs('tokenizers')
def test_tokenizer_is_lowercase_with_the_five_special_tokens():
    tokenizer = MaskedLMTokenizer.train(['a gorgeous , witty , seductive movie .', 'this movie is bad .'] * 20, 80)
    assert tokenizer.special_ids() == {'pad_id': 0, 'unk_id': 1, 'cls_id': 2, 'sep_id': 3, 'mask_id': 4}
    text = 'a witty movie , this is .'
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode('A Witty MOVIE') == tokenizer.encode('a witty movie')
    ids = tokenizer.encode('this movie is [MASK] .')
    # [MASK] takes the space before it, as the word it hides would: 'is' and '.' are encoded as in plain text
    assert ids == tokenizer.encode('this movie is')[:3] + [tokenizer.mask_id] + tokenizer.encode(' .')
    rebuilt = tokenizer_from_state(tokenizer.state())
    assert isinstance(rebuilt, MaskedLMTokenizer) and rebuilt.encode(text) == tokenizer.encode(text)


@needs('tokenizers')
def test_tokenizer_reads_english_as_the_penn_treebank_writes_it():
    """Unlabelled text writes "doesn't", SST-2 "does n't": both must give the same ids."""
    tokenizer = MaskedLMTokenizer.train(["it doesn't work , it's bad . `` yes '' . . . i can't"] * 20
                                      + ["the word 'sad' and james' car"] * 20, 160)
    same = [("It doesn't work, it's bad.", "it does n't work, it 's bad."),
            ("we're sure they've won't can't", "we 're sure they 've wo n't ca n't"),
            ("``quoted'' and \"quoted\"", '"quoted" and "quoted"'),
            ('wait . . . ok', 'wait ... ok')]
    for written, ptb in same:
        assert tokenizer.encode(written) == tokenizer.encode(ptb), written
    rebuilt = tokenizer_from_state(tokenizer.state())  # the rules travel in the vocabulary's JSON
    assert rebuilt.encode("doesn't") == tokenizer.encode("does n't")
    # quotation marks and possessives without a letter before the apostrophe are left alone
    assert tokenizer.decode(tokenizer.encode("the word 'sad' and james' car")) == "the word 'sad' and james' car"
    gpt_vocab = SubwordTokenizer.train(["It doesn't work, café."] * 20, 60)  # GPT's and the translator's: text kept as is
    assert gpt_vocab.decode(gpt_vocab.encode("It doesn't work, café.")) == "It doesn't work, café."


@needs('tokenizers')
def test_tokenizer_strips_accents_as_bert_uncased_does():
    """The movie reviews are plain ASCII; SST-2 writes "naïveté": accents are stripped, not [UNK]."""
    tokenizer = MaskedLMTokenizer.train(['the naivete of a cafe .'] * 20, 60)
    assert tokenizer.encode('Naïveté, Café') == tokenizer.encode('naivete, cafe')
    assert tokenizer.unk_id not in tokenizer.encode('naïveté à café')
    assert tokenizer.unk_id in tokenizer.encode('æ')  # no accent to strip: a letter the corpus lacks


# --- model -------------------------------------------------------------------

def test_attention_is_bidirectional_unlike_gpt():
    torch.manual_seed(0)
    tokens = torch.randint(5, 50, (1, 8))
    later = tokens.clone()
    later[0, 6] = 5 if tokens[0, 6] != 5 else 6
    encoder = tiny_encoder()
    assert not torch.allclose(encoder.encode(tokens)[0, 2], encoder.encode(later)[0, 2])
    gpt = GPT(GPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, block_size=32)).eval()
    targets = torch.zeros_like(tokens)  # with targets GPT returns every position's logits
    assert torch.allclose(gpt(tokens, targets)[0][0, 2], gpt(later, targets)[0][0, 2])


@pytest.mark.parametrize('pos_emb', ['learned', 'sinusoidal', 'rope'])
def test_padding_does_not_change_a_sentence(pos_emb):
    torch.manual_seed(0)
    model = tiny_encoder(pos_emb=pos_emb, n_classes=3)
    short, long = torch.randint(5, 50, (5,)), torch.randint(5, 50, (12,))
    batch = torch.zeros(2, 12, dtype=torch.long)  # pad_id 0
    batch[0, :5], batch[1] = short, long
    alone = model.encode(short[None])
    assert torch.allclose(model.encode(batch)[0, :5], alone[0], atol=1e-5)
    assert torch.allclose(model(batch)[0][0], model(short[None])[0][0], atol=1e-5)


@pytest.mark.parametrize('pos_emb', ['learned', 'sinusoidal', 'rope'])
@pytest.mark.parametrize('fused', [True, False])
def test_packed_sentences_are_read_apart_as_if_each_were_alone(pos_emb, fused):
    """Three sentences in two rows (position_ids restart at each [CLS], padding goes on counting) give
    the logits, loss and gradients of one sentence a row, padded."""
    torch.manual_seed(0)
    model = tiny_encoder(pos_emb=pos_emb, n_classes=2, fused_attention=fused)
    sentences = [torch.randint(5, 50, (n,)) for n in (6, 4, 9)]
    padded = torch.zeros(3, 9, dtype=torch.long)
    for row, sentence in enumerate(sentences):
        padded[row, :len(sentence)] = sentence
    packed = torch.zeros(2, 12, dtype=torch.long)
    packed[0, :10], packed[1, :9] = torch.cat(sentences[:2]), sentences[2]
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5], list(range(12))])
    labels = torch.tensor([1, 0, 1])
    (logits, loss), (packed_logits, packed_loss) = model(padded, labels), model(packed, labels, position_ids)
    assert torch.allclose(packed_logits, logits, atol=1e-5) and torch.allclose(packed_loss, loss, atol=1e-6)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    packed_grads = torch.autograd.grad(packed_loss, list(model.parameters()))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, packed_grads))
    assert not torch.allclose(model.encode(packed)[0, :6], model.encode(padded)[0, :6], atol=1e-3)  # without: mixed


def test_mlm_loss_counts_only_the_chosen_positions():
    torch.manual_seed(0)
    model = tiny_encoder()
    tokens = torch.randint(5, 50, (3, 10))
    targets = torch.full_like(tokens, -1)
    chosen = torch.rand(3, 10) < 0.3
    chosen[0, 0] = True
    targets[chosen] = torch.randint(5, 50, (int(chosen.sum()),))
    logits, loss = model(tokens, targets)
    all_logits = model(tokens)[0]  # (B, T, vocab): every position
    assert logits.shape == (int(chosen.sum()), 50)
    assert torch.allclose(logits, all_logits[chosen], atol=1e-5)
    by_hand = -torch.log_softmax(all_logits[chosen], dim=-1).gather(1, targets[chosen][:, None]).mean()
    assert torch.allclose(loss, by_hand, atol=1e-5)
    assert model.count_correct(logits, targets) == (all_logits[chosen].argmax(-1) == targets[chosen]).sum()
    _, no_loss = model(tokens, torch.full_like(tokens, -1))
    assert no_loss.item() == 0.0  # a batch with nothing to guess adds nothing, not NaN


def test_classifier_loss_and_fine_tuning_from_a_masked_lm():
    torch.manual_seed(0)
    pretrained = tiny_encoder()
    classifier = tiny_encoder(n_classes=2)
    fresh_head = classifier.classifier.out_proj.weight.clone()
    classifier.load_body(pretrained.state_dict())
    assert torch.equal(classifier.wte.weight, pretrained.wte.weight)
    assert torch.equal(classifier.h[1].mlp.c_fc.weight, pretrained.h[1].mlp.c_fc.weight)
    assert torch.equal(classifier.classifier.out_proj.weight, fresh_head)
    tokens, labels = torch.randint(5, 50, (4, 7)), torch.tensor([0, 1, 1, 0])
    logits, loss = classifier(tokens, labels)
    assert logits.shape == (4, 2) and torch.allclose(loss, F.cross_entropy(logits, labels))
    with pytest.raises(ValueError, match='body'):
        classifier.load_body(tiny_encoder(n_layer=3).state_dict())


def test_label_smoothing_is_the_classifiers_in_training_only():
    torch.manual_seed(0)
    tokens, labels = torch.randint(5, 50, (4, 7)), torch.tensor([0, 1, 1, 0])
    classifier = tiny_encoder(n_classes=2, label_smoothing=0.2).train()
    logits, loss = classifier(tokens, labels)
    assert torch.allclose(loss, F.cross_entropy(logits, labels, label_smoothing=0.2))
    assert not torch.allclose(loss, F.cross_entropy(logits, labels))
    logits, loss = classifier.eval()(tokens, labels)  # evaluation reports the plain cross-entropy
    assert torch.allclose(loss, F.cross_entropy(logits, labels))
    mlm = tiny_encoder(label_smoothing=0.2).train()  # the masked-LM loss is never smoothed
    targets = torch.full_like(tokens, -1)
    targets[:, 2] = tokens[:, 2]
    logits, loss = mlm(tokens, targets)
    assert torch.allclose(loss, F.cross_entropy(logits, tokens[:, 2]))
    with pytest.raises(ValueError, match='label_smoothing'):
        EncoderConfig(label_smoothing=1.0)


def test_output_heads_are_trained_by_adamw_under_muon():
    for model in (tiny_encoder(), tiny_encoder(n_classes=2)):
        muon, adamw = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu', optimizer='muon')
        in_muon = {id(p) for group in muon.param_groups for p in group['params']}
        assert id(model.output_heads()[0].weight) not in in_muon and id(model.wte.weight) not in in_muon
        assert id(model.h[0].attn.c_attn.weight) in in_muon


def test_flops_count_the_vocabulary_matrix_only_where_the_masked_lm_head_runs():
    mlm, classifier = tiny_encoder(), tiny_encoder(n_classes=2)
    assert mlm.mlm_head.out_proj.weight is mlm.wte.weight  # tied: counted once
    cfg = mlm.config
    vocabulary = cfg.vocab_size * cfg.n_embd
    attention = 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    body = mlm.get_num_params() - vocabulary  # the input lookup
    assert mlm.flops_per_token(mask_prob=0.3) == pytest.approx(6 * (body + 0.3 * vocabulary) + attention)
    # a classifier computes no vocabulary logits at all
    assert classifier.flops_per_token() == 6 * (classifier.get_num_params() - vocabulary) + attention
    assert mlm.estimate_mfu(100, 1.0, 1e9, mask_prob=0.3) == pytest.approx(mlm.flops_per_token(0.3) * 100 / 1e9)


def test_config_rejects_a_single_class():
    with pytest.raises(ValueError, match='n_classes'):
        EncoderConfig(n_classes=1)


# --- masked-language-model data ------------------------------------------------

@needs_mirrors
@pytest.mark.parametrize('pack', [True, False])
@pytest.mark.parametrize('mask_prob', [0.15, 0.3])
def test_masking_statistics(corpus_dir, pack, mask_prob):
    data = MaskedSentences(corpus_dir, 64, 'cpu', mask_prob=mask_prob, pack_sentences=pack)
    special = data.special_ids
    generator = torch.Generator().manual_seed(0)
    counts = dict(tokens=0, chosen=0, masked=0, kept=0)
    for _ in range(20):
        rows = data.draw('train', 32, generator)
        originals = data.pad([data.sequence('train', row >> MASK_SEED_BITS) for row in rows.tolist()])
        inputs, targets, _, predict_at = data.batch('train', rows)
        assert torch.equal(predict_at, (targets.flatten() != -1).nonzero()[:, 0])  # where the loss is
        chosen = targets != -1
        assert data.num_targets('train', rows) == int(chosen.sum())
        assert torch.equal(targets[chosen], originals[chosen])  # the targets are the hidden tokens
        assert torch.equal(inputs[~chosen], originals[~chosen])  # the rest is untouched
        assert not torch.isin(originals[chosen], special).any()  # never [PAD], [CLS], [SEP], ...
        counts['tokens'] += int((~torch.isin(originals, special)).sum())
        counts['chosen'] += int(chosen.sum())
        counts['masked'] += int((inputs[chosen] == data.mask_id).sum())
        counts['kept'] += int((inputs[chosen] == originals[chosen]).sum())
    assert abs(counts['chosen'] / counts['tokens'] - mask_prob) < 0.01
    assert abs(counts['masked'] / counts['chosen'] - 0.8) < 0.02
    assert abs(counts['kept'] / counts['chosen'] - 0.1) < 0.02  # (a random token is rarely the same one)


@needs_mirrors
def test_rows_are_packed_or_one_sentence_each(corpus_dir):
    packed = MaskedSentences(corpus_dir, 64, 'cpu', pack_sentences=True)
    single = MaskedSentences(corpus_dir, 64, 'cpu', pack_sentences=False)
    row = packed.sequence('train', 0)
    assert len(row) == 64 and row[0] == packed.cls_id and (row == packed.sep_id).sum() >= 2
    first = single.splits['train'][0]
    assert single.sequence('train', 0).tolist() == [single.cls_id, *first.tolist(), single.sep_id]
    assert row[1:len(first) + 2].tolist() == [*first.tolist(), packed.sep_id]  # packing continues with sentence 1
    rows = single.draw('train', 16, torch.Generator().manual_seed(0))
    lengths = single.splits['train'].lengths((rows >> MASK_SEED_BITS).numpy())
    assert (np.diff(lengths) >= 0).all()  # sorted by length: micro-batches hold similar lengths


@needs_mirrors
def test_masks_are_fresh_each_draw_and_reproducible(corpus_dir):
    data = MaskedSentences(corpus_dir, 64, 'cpu')
    sentences = torch.arange(8) << MASK_SEED_BITS
    first, second = data.batch('train', sentences | 1)[:2], data.batch('train', sentences | 2)[:2]
    assert not torch.equal(first[1], second[1])  # the same sentences, masked differently
    assert all(torch.equal(a, b) for a, b in zip(first, data.batch('train', sentences | 1)))
    draws = [data.batch('train', data.draw('train', 8, torch.Generator().manual_seed(5)))[:2] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*draws))  # the same generator state, the same batch
    rows = data.draw('train', 8, torch.Generator().manual_seed(5))
    assert data.num_targets('train', rows) == data.num_targets('train', rows[:3]) + data.num_targets('train', rows[3:])
    single = MaskedSentences(corpus_dir, 64, 'cpu', pack_sentences=False)  # rows of different lengths, padded
    rows = single.draw('train', 8, torch.Generator().manual_seed(5))
    together, alone = single.batch('train', rows)[:2], single.batch('train', rows[:1])[:2]
    width = alone[0].size(1)
    assert width < together[0].size(1)  # the batch is padded to a longer row
    assert all(torch.equal(a[0], b[0, :width]) for a, b in zip(alone, together))  # a row's mask is its own


# --- classification data -------------------------------------------------------

@needs_mirrors
def test_classification_batches(sst2_dir):
    data = LabelledSentences(sst2_dir, 64, 'cpu')
    assert (data.n_classes, data.label_names) == (2, ['0', '1'])
    rows = data.draw('val', 16, torch.Generator().manual_seed(0))
    tokens, labels = data.batch('val', rows)
    assert data.num_targets('val', rows) == 16 and labels.shape == (16,)
    written = (Path(sst2_dir) / 'val.labels.txt').read_text().split('\n')
    assert [data.label_names[i] for i in labels.tolist()] == [written[i] for i in rows.tolist()]
    assert (tokens[:, 0] == data.cls_id).all()
    lengths = (tokens != data.pad_id).sum(dim=1)
    assert (tokens[torch.arange(16), lengths - 1] == data.sep_id).all()
    tokenizer = tokenizer_from_meta(load_meta(sst2_dir))
    sentences = (Path(sst2_dir) / 'val.txt').read_text().split('\n')
    assert tokenizer.decode(tokens[0, 1:lengths[0] - 1]) == sentences[rows[0]]


def test_packed_classification_batches_hold_each_sentence_once_whole_with_its_label(sst2_dir):
    padded, packed = LabelledSentences(sst2_dir, 64, 'cpu'), LabelledSentences(sst2_dir, 64, 'cpu', pack_sentences=True)
    rows = packed.draw('train', 48, torch.Generator().manual_seed(0))
    tokens, labels = padded.batch('train', rows)
    packed_tokens, packed_labels, position_ids, predict_at = packed.batch('train', rows)
    assert torch.equal(predict_at, (position_ids.flatten() == 0).nonzero()[:, 0])  # each [CLS], found on the host
    assert packed_tokens.size(1) <= 64 and packed_tokens.numel() < 0.75 * tokens.numel()  # less padding
    assert (packed_tokens != packed.pad_id).sum() == (tokens != padded.pad_id).sum()  # no token lost, no padding added
    starts = position_ids == 0
    assert (packed_tokens[starts] == packed.cls_id).all() and starts.sum() == len(rows)
    assert (packed_tokens[:, 0] == packed.cls_id).all()
    # the sentences, read back in packed order between [CLS] and [SEP], with their labels: the padded batch's
    sentences = {}
    for row, positions in zip(packed_tokens.tolist(), position_ids.tolist()):
        for k, (token, position) in enumerate(zip(row, positions)):
            if token != packed.pad_id:
                sentences.setdefault(len(sentences) - (position != 0), []).append(token)
    by_sentence = sorted(zip(map(tuple, sentences.values()), packed_labels.tolist()))
    real = [tuple(t[t != padded.pad_id].tolist()) for t in tokens]
    assert by_sentence == sorted(zip(real, labels.tolist()))
    model = tiny_encoder(vocab_size=packed.meta['vocab_size'], block_size=64, n_classes=2)
    logits, loss = model(tokens, labels)
    packed_logits, packed_loss = model(packed_tokens, packed_labels, position_ids)
    assert torch.equal(model(packed_tokens, packed_labels, position_ids, predict_at)[0], packed_logits)
    assert torch.allclose(packed_loss, loss, atol=1e-6)
    assert sorted(packed_logits[:, 0].tolist()) == pytest.approx(sorted(logits[:, 0].tolist()), abs=1e-5)


# --- prepare scripts -------------------------------------------------------------

@needs_mirrors
def test_pretraining_corpus_leaves_out_the_sst2_dev_sentences(corpus_dir):
    meta = load_meta(corpus_dir)
    assert {'pad_id', 'unk_id', 'cls_id', 'sep_id', 'mask_id', 'tokenizer', 'vocab_size'} <= meta.keys()
    lines = [line for split in ('train', 'val') for line in (corpus_dir / f'{split}.txt').read_text().splitlines()]
    dev = {' '.join(s.split()) for s in dev_sentences()}
    assert sorted(lines) == sorted(line for line in review_lines(3000) if line and line not in dev)  # ('bad .' is one)
    offsets = np.fromfile(corpus_dir / 'train.idx', dtype=np.int64)
    assert offsets[-1] == len(np.fromfile(corpus_dir / 'train.bin', dtype=meta['dtype']))


@needs_mirrors
def test_sst2_uses_the_pretraining_vocabulary(corpus_dir, sst2_dir):
    meta = load_meta(sst2_dir)
    assert meta['tokenizer'] == load_meta(corpus_dir)['tokenizer'] and meta['tokenizer_from'] == str(corpus_dir)
    assert (meta['n_classes'], meta['label_names']) == (2, ['0', '1'])
    for split, n, n_positive in (('train', 6920, 3610), ('val', 872, 444)):
        labels = np.fromfile(sst2_dir / f'{split}.labels', dtype=np.int64)
        assert len(labels) == n and labels.sum() == n_positive
        assert len(np.fromfile(sst2_dir / f'{split}.idx', dtype=np.int64)) == n + 1


def write_tsv(folder, name, rows):
    folder.mkdir(exist_ok=True)
    (folder / f'{name}.tsv').write_text('sentence\tlabel\n' + ''.join(f'{s}\t{label}\n' for s, label in rows))


@needs('tokenizers')
def test_sst2_learns_its_own_vocabulary_and_adds_phrases(tmp_path, capsys):
    raw = tmp_path / 'raw'
    write_tsv(raw, 'train', [('a witty movie .', 1), ('a dull movie .', 0)])
    write_tsv(raw, 'dev', [('witty and dull .', 1)])
    write_tsv(raw, 'train_glue_phrases', [('a witty movie .', 1), ('witty', 1), ('witty and dull .', 1)])
    out = sst2.prepare(out_dir=tmp_path / 'out', input_path=raw, phrases=True, tokenizer_from=tmp_path / 'none')
    assert 'from the SST-2 train sentences instead' in capsys.readouterr().out
    assert load_meta(out)['tokenizer_from'] is None
    assert (out / 'train.txt').read_text() == 'a witty movie .\na dull movie .\nwitty\n'  # no duplicate, no dev sentence
    assert np.fromfile(out / 'train.labels', dtype=np.int64).tolist() == [1, 0, 1]


@pytest.mark.parametrize('line, message', [('a movie .\t2', "line 3: unknown label '2'"),
                                           ('   \t1', 'line 3: empty sentence'),
                                           ('no label here', 'line 3: expected sentence<TAB>label')])
def test_sst2_rejects_bad_lines(tmp_path, line, message):
    raw = tmp_path / 'raw'
    write_tsv(raw, 'train', [('a witty movie .', 1)])
    with open(raw / 'train.tsv', 'a') as f:
        f.write(line + '\n')
    write_tsv(raw, 'dev', [('fine .', 1)])
    with pytest.raises(UserError, match=message) as error:
        sst2.prepare(out_dir=tmp_path / 'out', input_path=raw, tokenizer_from=None)
    assert '\n' not in str(error.value)
    assert not (tmp_path / 'out' / 'meta.pkl').exists()


def test_sst2_reads_the_published_label_first_format(tmp_path):
    path = tmp_path / 'stsa.binary.dev'
    path.write_text('1 a -lrb- witty -rrb- movie\n0 dull \\/ flat\n')
    assert read_sst2_split(path) == (['a ( witty ) movie', 'dull / flat'], ['1', '0'])
