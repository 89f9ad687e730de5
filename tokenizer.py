"""Turning text into token ids and back. Four tokenizers share one small interface: vocab_size, encode(text) ->
list[int], decode(ids) -> str, and state() -> a dict of plain Python types (str, int, list, dict), so that a checkpoint
can carry its tokenizer and still be loaded with torch.load(weights_only=True); tokenizer_from_state reverses it."""
import importlib
import os
import pickle

from errors import UserError


def import_package(name):
    """The package `name`, imported where it is first needed, so that only the users of that feature need it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f'the {name} package is missing: pip install {name}') from None


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
            unknown = sorted(set(text) - self.stoi.keys())
            names = ', '.join(repr(ch) for ch in unknown[:20])
            more = f' and {len(unknown) - 20} more' if len(unknown) > 20 else ''
            raise UserError(f'the text contains characters outside the vocabulary: {names}{more} '
                            f'(the vocabulary is the set of characters of the training text)') from None

    def decode(self, ids):
        return ''.join(self.chars[i] for i in ids)

    def state(self):
        return {'kind': 'char', 'chars': list(self.chars)}


class TiktokenTokenizer:
    """OpenAI's byte-level BPE (GPT-2 by default), via the tiktoken package."""

    def __init__(self, name='gpt2'):
        try:
            self._encoding = import_package('tiktoken').get_encoding(name)
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


class SubwordTokenizer:
    """A BPE vocabulary trained with Hugging Face `tokenizers`, kept as its JSON string."""

    KIND = 'subword'  # state()['kind']
    SPECIAL_TOKENS = ('<pad>', '<bos>', '<eos>', '<unk>')  # ids 0, 1, 2, 3 in a trained vocabulary
    SPECIAL_NAMES = ('pad', 'bos', 'eos', 'unk')  # their ids are self.pad_id, self.bos_id, ...
    LSTRIP_TOKENS = ()  # special tokens that take the space before them

    def __init__(self, tokenizer_json):
        tokenizers = import_package('tokenizers')
        self.tokenizer_json = tokenizer_json
        self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
        self.vocab_size = self._tokenizer.get_vocab_size()
        for name, token in zip(self.SPECIAL_NAMES, self.SPECIAL_TOKENS):
            setattr(self, f'{name}_id', self._tokenizer.token_to_id(token))

    @classmethod
    def train(cls, lines, vocab_size, show_progress=False):
        """Learn a BPE vocabulary of at most `vocab_size` tokens from an iterable of sentences. Its normalizer_steps,
        saved in its JSON, apply to every text encoded later; Metaspace marks spaces as '▁' for decode to restore."""
        tokenizers = import_package('tokenizers')
        unk = cls.SPECIAL_TOKENS[cls.SPECIAL_NAMES.index('unk')]
        tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=unk))
        tokenizer.normalizer = tokenizers.normalizers.Sequence(cls.normalizer_steps(tokenizers))
        tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
        tokenizer.decoder = tokenizers.decoders.Metaspace()
        special_tokens = [tokenizers.AddedToken(token, special=True, normalized=False, lstrip=token in cls.LSTRIP_TOKENS)
                          for token in cls.SPECIAL_TOKENS]
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=special_tokens, show_progress=show_progress)
        tokenizer.train_from_iterator(lines, trainer=trainer)
        return cls(tokenizer.to_str())

    @classmethod
    def normalizer_steps(cls, tokenizers):
        """NFKC folds look-alike characters (a no-break space becomes a space); case is kept (BLEU is case-sensitive)."""
        return [tokenizers.normalizers.NFKC()]

    def special_ids(self):
        """{'pad_id': 0, ...}: the special tokens' ids, as meta.pkl stores them."""
        return {f'{name}_id': getattr(self, f'{name}_id') for name in self.SPECIAL_NAMES}

    def encode(self, text):
        """Ids of `text`, without <bos>/<eos>: the model code adds those where it needs them."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        """Like encode, for many texts at once (the library spreads the work over all cores)."""
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids):
        return self._tokenizer.decode(_as_ints(ids), skip_special_tokens=True)

    def normalise(self, text):
        """`text` as the vocabulary reads it (normalizer_steps): what decode(encode(text)) gives back at best."""
        return self._tokenizer.normalizer.normalize_str(text)

    def id_to_token(self, i):
        """The vocabulary entry of one id ('▁movie', '[MASK]'): for showing single tokens."""
        return self._tokenizer.id_to_token(int(i))

    def state(self):
        return {'kind': self.KIND, 'json': self.tokenizer_json}


class MaskedLMTokenizer(SubwordTokenizer):
    """The encoder's vocabulary: lowercase BPE with BERT's special tokens. [CLS] opens every sequence (its vector is
    the sentence's, for classification), [SEP] ends each sentence, [MASK] hides the tokens the model must guess;
    '[MASK]' written in a text (in capitals) encodes to it."""

    KIND = 'masked_lm'
    SPECIAL_TOKENS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')  # ids 0..4 in a trained vocabulary
    SPECIAL_NAMES = ('pad', 'unk', 'cls', 'sep', 'mask')
    LSTRIP_TOKENS = ('[MASK]',)  # 'is [MASK] .' masks a whole word, '▁great', space included
    # English written one way, the Penn Treebank's (SST-2's): "doesn't" -> "does n't", "can't" -> "ca n't",
    # "it's" -> "it 's"; `` and '' -> "; ". . ." -> "...". Unlabelled text writes "doesn't": without this,
    # a model pretrained on it has never seen negation as SST-2 writes it ("does", "n", "'t").
    PTB_SPELLINGS = ((r"(?<=[a-z])n't\b", " n't"), (r"(?<=[a-z])'(?=(?:s|re|ve|ll|d|m)\b)", " '"),
                     (r"``|''", '"'), (r"\. \. \.", '...'))

    @classmethod
    def normalizer_steps(cls, tokenizers):
        """NFKD then accents stripped, as BERT's uncased vocabulary does ("naïveté" -> "naivete": the movie
        reviews are plain ASCII, so an accented letter would be [UNK]), lowercase (the sentiment data is
        lowercased; fewer distinct words for a small vocabulary), then the Penn Treebank's spellings."""
        normalizers = tokenizers.normalizers
        return ([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()]
                + [normalizers.Replace(tokenizers.Regex(pattern), text) for pattern, text in cls.PTB_SPELLINGS])


SUBWORD_KINDS = {cls.KIND: cls for cls in (SubwordTokenizer, MaskedLMTokenizer)}


def tokenizer_from_state(state):
    """Rebuild the tokenizer whose `state()` returned `state`."""
    kind = state.get('kind')
    if kind == 'char':
        return CharTokenizer(state['chars'])
    if kind == 'tiktoken':
        return TiktokenTokenizer(state['name'])
    if kind in SUBWORD_KINDS:
        return SUBWORD_KINDS[kind](state['json'])
    raise UserError(f"unknown tokenizer kind {kind!r} (expected 'char', 'tiktoken', 'subword' or 'masked_lm')")


def tokenizer_from_meta(meta):
    """The tokenizer described by a meta.pkl dict: ours store its state under 'tokenizer'; the original nanoGPT's
    has only 'stoi' and 'itos' (a char tokenizer)."""
    if 'tokenizer' in meta:
        return tokenizer_from_state(meta['tokenizer'])
    if 'itos' in meta:
        return CharTokenizer([meta['itos'][i] for i in range(len(meta['itos']))])
    raise UserError("meta.pkl describes no tokenizer (it has neither a 'tokenizer' nor an 'itos' entry)")


def hf_tokenizer(folder):
    """The tokenizer of a Hugging Face GPT-2 folder (export.py's, or a downloaded one) as one of ours:
    GPT-2's BPE, or a character vocabulary (export.py writes a character model's as single-character words)."""
    import json
    path = os.path.join(folder, 'tokenizer.json')
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as f:
            model = json.load(f).get('model', {})
        vocab = model.get('vocab')
        if model.get('type') == 'WordLevel' and isinstance(vocab, dict) and all(len(token) == 1 for token in vocab):
            return CharTokenizer(sorted(vocab, key=vocab.get))
    path = os.path.join(folder, 'vocab.json')
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as f:
            vocab = json.load(f)
        if len(vocab) == 50257 and vocab.get('<|endoftext|>') == 50256:
            return TiktokenTokenizer('gpt2')
    raise UserError(f"{folder} holds no tokenizer this project reads (GPT-2's BPE in vocab.json, or export.py's "
                    f"character vocabulary in tokenizer.json)")


def load_meta(data_dir):
    """The dict stored in `data_dir`/meta.pkl, or None if there is no such file."""
    path = os.path.join(data_dir, 'meta.pkl')
    if not os.path.exists(path):
        return None
    with open(path, 'rb') as f:
        return pickle.load(f)
