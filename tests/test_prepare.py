import collections
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import prepare
from configurator import UserError
from conftest import ROOT, SHARED, needs
from prepare import char_text, multi30k, openwebtext, shakespeare_char
from tokenizer import load_meta, tokenizer_from_meta

SHAKESPEARE = SHARED / 'data' / 'tinyshakespeare' / 'input.txt'
MULTI30K = SHARED / 'data' / 'multi30k'
needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f'offline mirror {SHAKESPEARE} is absent')


def read_tokens(path, meta):
    return np.fromfile(path, dtype=meta['dtype'])


def file_contents(folder):
    return {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir())}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No downloads and no offline mirror: only --input can provide the data."""
    def fail_download(url, path):
        raise OSError('no network in this test')
    monkeypatch.setattr(prepare, 'download', fail_download)
    monkeypatch.setattr(prepare, 'MIRROR_DIR', tmp_path / 'no_mirror')


@needs_shakespeare
def test_shakespeare_char(tmp_path):
    out_dir = shakespeare_char.prepare(out_dir=tmp_path, input_path=SHAKESPEARE)
    meta = load_meta(out_dir)
    assert meta['vocab_size'] == 65
    assert meta['dtype'] == 'uint16'
    assert meta['tokenizer']['kind'] == 'char'
    assert meta['itos'][0] == '\n' and meta['stoi']['a'] == 39  # same ids as nanoGPT
    train = read_tokens(out_dir / 'train.bin', meta)
    val = read_tokens(out_dir / 'val.bin', meta)
    assert (len(train), len(val)) == (1_003_854, 111_540)
    text = SHAKESPEARE.read_text(encoding='utf-8')
    assert tokenizer_from_meta(meta).decode(train[:100]) == text[:100]


@needs_shakespeare
def test_shakespeare_char_falls_back_to_the_mirror(monkeypatch, tmp_path):
    def fail_download(url, path):
        raise OSError('no network in this test')
    monkeypatch.setattr(prepare, 'download', fail_download)
    monkeypatch.setattr(prepare, 'MIRROR_DIR', SHAKESPEARE.parents[1])
    shakespeare_char.prepare(out_dir=tmp_path)
    assert load_meta(tmp_path)['vocab_size'] == 65


def test_char_text_uses_the_vocabulary_of_a_prepared_dataset(tmp_path):
    (tmp_path / 'base.txt').write_text('abc de\n' * 50, encoding='utf-8')
    base_dir = shakespeare_char.prepare(out_dir=tmp_path / 'base', input_path=tmp_path / 'base.txt')
    (tmp_path / 'new.txt').write_text('bad cafe\n' * 40, encoding='utf-8')  # f is not in the base's vocabulary
    char_text.main(['--input', str(tmp_path / 'new.txt'), '--vocab_from', str(base_dir),
                    '--out_dir', str(tmp_path / 'new')])
    meta = load_meta(tmp_path / 'new')
    assert meta['tokenizer'] == load_meta(base_dir)['tokenizer']  # init_from the base's model needs the same ids
    tokens = np.concatenate([read_tokens(tmp_path / 'new' / name, meta) for name in ('train.bin', 'val.bin')])
    assert tokenizer_from_meta(meta).decode(tokens) == '\n'.join(['bad cae'] * 40)
    with pytest.raises(UserError, match='--input is required'):
        char_text.main(['--vocab_from', str(base_dir), '--out_dir', str(tmp_path / 'other')])
    with pytest.raises(UserError, match='not a prepared character dataset'):
        char_text.main(['--input', str(tmp_path / 'new.txt'), '--vocab_from', str(tmp_path / 'none'),
                        '--out_dir', str(tmp_path / 'other')])


def test_downloaded_input_is_used(monkeypatch, tmp_path):
    def fake_download(url, path):
        assert url == prepare.SHAKESPEARE_URL
        path.write_text('to be or not to be\n')
    monkeypatch.setattr(prepare, 'download', fake_download)
    shakespeare_char.prepare(out_dir=tmp_path)
    assert (tmp_path / 'input.txt').is_file()
    assert load_meta(tmp_path)['vocab_size'] == len(set('to be or not to be\n'))


def test_missing_input_is_a_user_error_naming_the_option(offline, tmp_path):
    with pytest.raises(UserError) as error:
        shakespeare_char.prepare(out_dir=tmp_path / 'out')
    assert '--input' in str(error.value) and prepare.SHAKESPEARE_URL in str(error.value)
    with pytest.raises(UserError, match='--input'):
        multi30k.prepare(out_dir=tmp_path / 'out')


def test_empty_input_is_a_user_error(tmp_path):
    (tmp_path / 'empty.txt').write_text('')
    with pytest.raises(UserError, match='empty'):
        shakespeare_char.prepare(out_dir=tmp_path / 'out', input_path=tmp_path / 'empty.txt')


def test_failed_run_leaves_existing_files_untouched(monkeypatch, tmp_path):
    (tmp_path / 'a.txt').write_text('first corpus\n' * 100)
    (tmp_path / 'b.txt').write_text('a different, longer second corpus\n' * 200)
    (tmp_path / 'empty.txt').write_text('')
    out_dir = tmp_path / 'out'
    shakespeare_char.prepare(out_dir=out_dir, input_path=tmp_path / 'a.txt')
    before = file_contents(out_dir)

    with pytest.raises(UserError):
        shakespeare_char.prepare(out_dir=out_dir, input_path=tmp_path / 'empty.txt')
    assert file_contents(out_dir) == before

    # interrupted after train.bin and val.bin were written, before meta.pkl
    def interrupt(self, meta):
        raise KeyboardInterrupt
    monkeypatch.setattr(prepare.StagedOutputs, 'write_meta', interrupt)
    with pytest.raises(KeyboardInterrupt):
        shakespeare_char.prepare(out_dir=out_dir, input_path=tmp_path / 'b.txt')
    assert file_contents(out_dir) == before  # no changed files and no temporary files left behind


def test_script_reports_user_errors_on_one_line(tmp_path):
    result = subprocess.run([sys.executable, 'prepare/shakespeare_char.py', '--input', str(tmp_path / 'missing.txt'),
                             '--out_dir', str(tmp_path / 'out')], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1
    assert 'missing.txt' in result.stderr


def test_shakespeare_bpe(shakespeare_bpe_dir):
    out_dir = shakespeare_bpe_dir
    meta = load_meta(out_dir)
    assert meta == {'vocab_size': 50257, 'dtype': 'uint16', 'tokenizer': {'kind': 'tiktoken', 'name': 'gpt2'}}
    tokenizer = tokenizer_from_meta(meta)
    train = read_tokens(out_dir / 'train.bin', meta)
    val = read_tokens(out_dir / 'val.bin', meta)
    assert (len(train), len(val)) == (301_966, 36_059)  # the counts nanoGPT reports
    assert tokenizer.decode(train) + tokenizer.decode(val) == SHAKESPEARE.read_text(encoding='utf-8')


def test_openwebtext_on_a_local_corpus(tmp_path, gpt2_bpe):
    pytest.importorskip('datasets')
    documents = [f'Document {i}: ' + 'some words ' * (i % 17) + 'ünïcode 🙂\n\nend.' for i in range(200)]
    documents[7] = 'a literal <|endoftext|> inside a document is plain text'
    with open(tmp_path / 'corpus.jsonl', 'w', encoding='utf-8') as f:
        for i, text in enumerate(documents):
            f.write(json.dumps({'id': i, 'text': text}) + '\n')

    out_dir = openwebtext.prepare(out_dir=tmp_path / 'out', input_path=tmp_path / 'corpus.jsonl',
                                  num_proc=2, val_fraction=0.05, cache_dir=tmp_path / 'hf_cache')
    meta = load_meta(out_dir)
    assert meta['tokenizer'] == {'kind': 'tiktoken', 'name': 'gpt2'} and meta['dtype'] == 'uint16'

    expected = collections.Counter(tuple(gpt2_bpe.encode_ordinary(text)) for text in documents)
    found = collections.Counter()
    for split in ('train', 'val'):
        tokens = read_tokens(out_dir / f'{split}.bin', meta).tolist()
        assert tokens[-1] == gpt2_bpe.eot_token  # every document ends with <|endoftext|>
        docs = ' '.join(map(str, tokens[:-1])).split(f' {gpt2_bpe.eot_token} ')
        found.update(tuple(map(int, doc.split())) for doc in docs)
    assert found == expected  # each document exactly once, in train or val


def test_openwebtext_rejects_a_missing_text_column(tmp_path, gpt2_bpe):
    pytest.importorskip('datasets')
    (tmp_path / 'corpus.jsonl').write_text('{"body": "hello"}\n{"body": "world"}\n')
    with pytest.raises(UserError, match='--text_column'):
        openwebtext.prepare(out_dir=tmp_path / 'out', input_path=tmp_path / 'corpus.jsonl', num_proc=1,
                            cache_dir=tmp_path / 'hf_cache')


def test_multi30k(multi30k_dir):
    out_dir = multi30k_dir  # prepared once for this file and test_seq2seq, with a vocabulary of 500
    meta = load_meta(out_dir)
    assert meta['vocab_size'] <= 500 and meta['dtype'] == 'uint16'
    assert (meta['pad_id'], meta['bos_id'], meta['eos_id'], meta['unk_id']) == (0, 1, 2, 3)
    assert (meta['src_lang'], meta['tgt_lang']) == ('de', 'en')
    tokenizer = tokenizer_from_meta(meta)
    assert tokenizer.vocab_size == meta['vocab_size']

    for split, n_sentences in {'train': 29_000, 'val': 1_014, 'test': 1_000}.items():
        for lang in ('de', 'en'):
            ids = read_tokens(out_dir / f'{split}.{lang}.bin', meta)
            idx = np.fromfile(out_dir / f'{split}.{lang}.idx', dtype=np.int64)
            sentences = (out_dir / f'{split}.{lang}.txt').read_text(encoding='utf-8').split('\n')[:-1]
            assert len(sentences) == n_sentences and len(idx) == n_sentences + 1
            assert idx[0] == 0 and idx[-1] == len(ids) and np.all(np.diff(idx) > 0)
            assert ids.max() < meta['vocab_size'] and not np.isin(ids, [0, 1, 2]).any()  # no pad/bos/eos
            assert tokenizer.decode(ids[idx[5]:idx[6]]) == sentences[5]

    with gzip.open(MULTI30K / 'val.en.gz', 'rt', encoding='utf-8') as f:
        assert (out_dir / 'val.en.txt').read_text(encoding='utf-8') == f.read()


def write_multi30k_folder(folder, n_de=3, n_en=3):
    """A tiny uncompressed Multi30k-like folder."""
    folder.mkdir()
    for stem in multi30k.SPLITS.values():
        (folder / f'{stem}.de').write_text(''.join(f'Ein Hund Nummer {i}.\n' for i in range(n_de)))
        (folder / f'{stem}.en').write_text(''.join(f'A dog number {i}.\n' for i in range(n_en)))


@needs('tokenizers')
def test_multi30k_on_uncompressed_files(tmp_path):
    write_multi30k_folder(tmp_path / 'raw')
    out_dir = multi30k.prepare(out_dir=tmp_path / 'out', input_path=tmp_path / 'raw', vocab_size=60)
    meta = load_meta(out_dir)
    ids = read_tokens(out_dir / 'val.de.bin', meta)
    idx = np.fromfile(out_dir / 'val.de.idx', dtype=np.int64)
    assert tokenizer_from_meta(meta).decode(ids[idx[2]:idx[3]]) == 'Ein Hund Nummer 2.'


def test_multi30k_rejects_unequal_line_counts(tmp_path):
    write_multi30k_folder(tmp_path / 'raw', n_de=3, n_en=2)
    with pytest.raises(UserError, match='3 German but 2 English'):
        multi30k.prepare(out_dir=tmp_path / 'out', input_path=tmp_path / 'raw')


def test_multi30k_rejects_a_too_large_vocabulary(tmp_path):
    with pytest.raises(UserError, match='16000'):
        multi30k.prepare(out_dir=tmp_path, vocab_size=20000)

