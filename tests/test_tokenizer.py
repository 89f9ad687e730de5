import os
import pickle
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / 'shared'
if (SHARED / 'tiktoken_cache').is_dir():  # lets tiktoken load 'gpt2' without internet
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', str(SHARED / 'tiktoken_cache'))

from configurator import UserError  # noqa: E402
from conftest import needs  # noqa: E402
from tokenizer import (CharTokenizer, SubwordTokenizer, TiktokenTokenizer, load_meta,  # noqa: E402
                       tokenizer_from_meta, tokenizer_from_state)

SENTENCES = [
    'Ein Mann fährt Fahrrad auf einer Straße.',
    'A man rides a bicycle on a street.',
    'Zwei Hunde spielen im Schnee.',
    'Two dogs play in the snow.',
    'Eine Frau liest ein Buch im Park.',
    'A woman reads a book in the park.',
]


@pytest.fixture(scope='module')
def subword():
    pytest.importorskip('tokenizers')
    return SubwordTokenizer.train(SENTENCES * 10, vocab_size=120)


def test_char_round_trip():
    tokenizer = CharTokenizer.from_text('hello world')
    assert tokenizer.vocab_size == 8
    assert tokenizer.encode('hello') == [3, 2, 4, 4, 5]
    assert tokenizer.decode(tokenizer.encode('low world')) == 'low world'


def test_char_unknown_character_is_a_user_error():
    tokenizer = CharTokenizer.from_text('abc')
    with pytest.raises(UserError) as error:
        tokenizer.encode('abcz\n')
    message = str(error.value)
    assert "'z'" in message and "'\\n'" in message
    assert 'training text' in message
    assert '\n' not in message


@pytest.mark.usefixtures('gpt2_bpe')
def test_tiktoken_gpt2():
    tokenizer = TiktokenTokenizer()
    assert tokenizer.vocab_size == 50257
    assert tokenizer.eot_token == 50256
    assert tokenizer.encode('Hello world') == [15496, 995]
    assert tokenizer.encode('<|endoftext|>') == [50256]
    text = 'Ünïcode, emoji 🙂 and\nnewlines.'
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_subword_round_trip(subword):
    assert (subword.pad_id, subword.bos_id, subword.eos_id, subword.unk_id) == (0, 1, 2, 3)
    assert subword.vocab_size <= 120
    for sentence in SENTENCES:
        ids = subword.encode(sentence)
        assert subword.bos_id not in ids and subword.eos_id not in ids
        assert subword.decode(ids) == sentence
    # special tokens are dropped when decoding
    ids = subword.encode('Two dogs.')
    assert subword.decode([subword.bos_id] + ids + [subword.eos_id, subword.pad_id]) == 'Two dogs.'


def test_subword_encode_batch_matches_encode(subword):
    assert subword.encode_batch(SENTENCES) == [subword.encode(s) for s in SENTENCES]


@pytest.mark.parametrize('kind', ['char', 'tiktoken', pytest.param('subword', marks=needs('tokenizers'))])
def test_state_round_trip_survives_a_weights_only_checkpoint(kind, request, tmp_path):
    torch = pytest.importorskip('torch')
    tokenizer = {'char': lambda: CharTokenizer.from_text('hello world'),
                 'tiktoken': lambda: request.getfixturevalue('gpt2_bpe'),
                 'subword': lambda: SubwordTokenizer.train(SENTENCES, vocab_size=80)}[kind]()
    torch.save({'tokenizer': tokenizer.state()}, tmp_path / 'ckpt.pt')
    state = torch.load(tmp_path / 'ckpt.pt', weights_only=True)['tokenizer']
    assert state['kind'] in ('char', 'tiktoken', 'subword')
    rebuilt = tokenizer_from_state(state)
    assert type(rebuilt) is type(tokenizer)
    assert rebuilt.vocab_size == tokenizer.vocab_size
    text = 'hello world'
    assert rebuilt.encode(text) == tokenizer.encode(text)
    assert rebuilt.decode(rebuilt.encode(text)) == text


def test_unknown_state_kind_is_a_user_error():
    with pytest.raises(UserError, match='unknown tokenizer kind'):
        tokenizer_from_state({'kind': 'morse'})


def test_legacy_nanogpt_meta_gives_a_char_tokenizer():
    chars = sorted(set('to be or not'))
    meta = {'vocab_size': len(chars), 'stoi': {c: i for i, c in enumerate(chars)}, 'itos': dict(enumerate(chars))}
    tokenizer = tokenizer_from_meta(meta)
    assert isinstance(tokenizer, CharTokenizer)
    assert tokenizer.encode('to be') == [meta['stoi'][c] for c in 'to be']
    assert tokenizer.decode(tokenizer.encode('not to be')) == 'not to be'


@pytest.mark.usefixtures('gpt2_bpe')
def test_meta_with_tokenizer_state():
    tokenizer = tokenizer_from_meta({'vocab_size': 50257, 'dtype': 'uint16',
                                     'tokenizer': {'kind': 'tiktoken', 'name': 'gpt2'}})
    assert tokenizer.encode('Hello world') == [15496, 995]


def test_load_meta(tmp_path):
    assert load_meta(tmp_path) is None
    meta = {'vocab_size': 3, 'tokenizer': CharTokenizer('abc').state()}
    with open(tmp_path / 'meta.pkl', 'wb') as f:
        pickle.dump(meta, f)
    assert load_meta(tmp_path) == meta
