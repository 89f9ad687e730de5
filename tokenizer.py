"""Turning text into token ids and back.

Three tokenizers share one small interface:

    vocab_size       number of distinct token ids
    encode(text)     -> list[int]
    decode(ids)      -> str
    state()          -> dict of plain Python types (str, int, list, dict)

`state()` holds only plain types so that a checkpoint can carry its tokenizer
and still be loaded with torch.load(weights_only=True); `tokenizer_from_state`
turns such a dict back into a tokenizer.
"""
import os
import pickle

from configurator import UserError


def _as_ints(ids):
    """Plain Python ints: numpy and torch integers are not accepted by the Rust-backed libraries."""
    return [int(i) for i in ids]


class CharTokenizer:
    """One token per character; the vocabulary is the characters of the training text."""

    def __init__(self, chars):
        # ids follow the order of `chars` (sorted, for the ones our scripts build)
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def encode(self, text):
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError:
            raise UserError(self._unknown_characters_message(text)) from None

    def _unknown_characters_message(self, text, shown=20):
        unknown = sorted(set(text) - self.stoi.keys())
        names = ', '.join(repr(ch) for ch in unknown[:shown])
        more = f' and {len(unknown) - shown} more' if len(unknown) > shown else ''
        return (f'the text contains characters outside the vocabulary: {names}{more} '
                f'(the vocabulary is the set of characters of the training text)')

    def decode(self, ids):
        return ''.join(self.chars[i] for i in ids)

    def state(self):
        return {'kind': 'char', 'chars': list(self.chars)}


class TiktokenTokenizer:
    """OpenAI's byte-level BPE (GPT-2 by default), via the tiktoken package."""

    def __init__(self, name='gpt2'):
        try:
            import tiktoken  # imported here so char-level users do not need it
        except ImportError:
            raise UserError('the tiktoken package is missing: pip install tiktoken') from None
        try:
            self._encoding = tiktoken.get_encoding(name)
        except (ValueError, OSError) as e:  # unknown name, or no network and no TIKTOKEN_CACHE_DIR
            raise UserError(f'cannot load the tiktoken encoding {name!r}: {e}') from None
        self.name = name
        self.vocab_size = self._encoding.n_vocab
        self.eot_token = self._encoding.eot_token

    def encode(self, text):
        # '<|endoftext|>' written in a prompt becomes the document separator the model was trained with
        return self._encoding.encode(text, allowed_special={'<|endoftext|>'})

    def encode_ordinary(self, text):
        """Encode treating '<|endoftext|>' as plain text: for training documents, whose separators we add ourselves."""
        return self._encoding.encode_ordinary(text)

    def decode(self, ids):
        return self._encoding.decode(_as_ints(ids))

    def state(self):
        return {'kind': 'tiktoken', 'name': self.name}


def _import_tokenizers():
    try:
        import tokenizers  # imported here so users of the other tokenizers do not need it
    except ImportError:
        raise UserError('the tokenizers package is missing: pip install tokenizers') from None
    return tokenizers


class SubwordTokenizer:
    """A BPE vocabulary trained with Hugging Face `tokenizers`, kept as its JSON string."""

    SPECIAL_TOKENS = ('<pad>', '<bos>', '<eos>', '<unk>')  # ids 0, 1, 2, 3 in a trained vocabulary

    def __init__(self, tokenizer_json):
        tokenizers = _import_tokenizers()
        self.tokenizer_json = tokenizer_json
        self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
        self.vocab_size = self._tokenizer.get_vocab_size()
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (
            self._tokenizer.token_to_id(token) for token in self.SPECIAL_TOKENS)

    @classmethod
    def train(cls, lines, vocab_size, show_progress=False):
        """Learn a BPE vocabulary of at most `vocab_size` tokens from an iterable of sentences.

        Case is kept (BLEU is case-sensitive). NFKC folds look-alike characters
        (e.g. a no-break space becomes a space). The Metaspace pre-tokenizer
        marks each space as '▁', so the decoder can restore the spacing and
        decode returns clean text.
        """
        tokenizers = _import_tokenizers()
        tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token='<unk>'))
        tokenizer.normalizer = tokenizers.normalizers.NFKC()
        tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
        tokenizer.decoder = tokenizers.decoders.Metaspace()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(cls.SPECIAL_TOKENS), show_progress=show_progress)
        tokenizer.train_from_iterator(lines, trainer=trainer)
        return cls(tokenizer.to_str())

    def encode(self, text):
        """Ids of `text`, without <bos>/<eos>: the model code adds those where it needs them."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        """Like encode, for many texts at once (the library spreads the work over all cores)."""
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids):
        return self._tokenizer.decode(_as_ints(ids), skip_special_tokens=True)

    def state(self):
        return {'kind': 'subword', 'json': self.tokenizer_json}


def tokenizer_from_state(state):
    """Rebuild the tokenizer whose `state()` returned `state`."""
    kind = state.get('kind')
    if kind == 'char':
        return CharTokenizer(state['chars'])
    if kind == 'tiktoken':
        return TiktokenTokenizer(state['name'])
    if kind == 'subword':
        return SubwordTokenizer(state['json'])
    raise UserError(f"unknown tokenizer kind {kind!r} (expected 'char', 'tiktoken' or 'subword')")


def tokenizer_from_meta(meta):
    """The tokenizer described by a meta.pkl dict.

    Our prepare scripts store the tokenizer's state under 'tokenizer'; the
    meta.pkl of the original nanoGPT only has 'stoi' and 'itos' (a char
    tokenizer), so we accept that as well.
    """
    if 'tokenizer' in meta:
        return tokenizer_from_state(meta['tokenizer'])
    if 'itos' in meta:
        itos = meta['itos']
        return CharTokenizer([itos[i] for i in range(len(itos))])
    raise UserError("meta.pkl describes no tokenizer (it has neither a 'tokenizer' nor an 'itos' entry)")


def load_meta(data_dir):
    """The dict stored in `data_dir`/meta.pkl, or None if there is no such file."""
    path = os.path.join(data_dir, 'meta.pkl')
    if not os.path.exists(path):
        return None
    with open(path, 'rb') as f:
        return pickle.load(f)
