"""Unlabelled text for masked-language-model pretraining (the encoder), and its vocabulary.

Reads the movie reviews (Pang & Lee 2004, 2,000 reviews) into data/movie_reviews, or --input's .txt/.txt.gz file or
folder into data/<its name>, one sentence or paragraph per line; drops the SST-2 dev sentences (the encoder's test);
learns a lowercase BPE vocabulary with [PAD] [UNK] [CLS] [SEP] [MASK] on the train lines (sst2.py uses it too); writes
meta.pkl and, as multi30k.py does, {split}.bin, .idx, .txt for train and val (a fixed random val_fraction)."""
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python prepare/<name>.py` finds the repo's modules

from configurator import run_cli
from errors import UserError
from prepare import (StagedOutputs, default_out_dir, find_input, input_files, make_arg_parser, read_lines, read_sst2,
                     tokenizer_meta, write_split)
from tokenizer import MaskedLMTokenizer

NAME = 'movie_reviews'
# NLTK's copy of the polarity dataset v2.0: one file per review, one sentence per line
URL = 'https://raw.githubusercontent.com/nltk/nltk_data/gh-pages/packages/corpora/movie_reviews.zip'
MIRROR = 'movie_reviews/reviews.txt.gz'
VOCAB_SIZES = (256, 65535)  # at least the special tokens and the characters; ids fit in uint16


def zip_lines(path):
    """The lines of NLTK's movie_reviews.zip: the reviews in file-name order (negative, then positive)."""
    lines = []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(n for n in archive.namelist() if n.endswith('.txt')):
            with archive.open(name) as f:
                lines += io.TextIOWrapper(f, encoding='utf-8').read().split('\n') + ['']
    return lines


def read_corpus(files):
    """The non-blank lines of all files, their spacing tidied."""
    lines = []
    for path in tqdm(files, desc='reading', unit='file', disable=len(files) == 1):
        raw = zip_lines(path) if path.suffix == '.zip' else read_lines(path)
        lines += [' '.join(line.split()) for line in raw if line.strip()]
    if not lines:
        raise UserError(f'no text in {", ".join(map(str, files))}')
    return lines


def normalised(sentence):
    return ' '.join(sentence.lower().split())


def drop_excluded(lines, excluded):
    """The lines that are not one of the `excluded` sentences (compared lowercased, spacing ignored)."""
    excluded = {normalised(s) for s in excluded}
    kept = [line for line in tqdm(lines, desc='filtering', unit='line', mininterval=1) if normalised(line) not in excluded]
    print(f'dropped {len(lines) - len(kept):,} lines that are SST-2 dev sentences')
    return kept


def split_val(lines, val_fraction, seed=1337):
    """(train lines, val lines): a random val_fraction of the lines, the same every run."""
    is_val = np.random.default_rng(seed).random(len(lines)) < val_fraction
    train = [line for line, v in zip(lines, is_val) if not v]
    val = [line for line, v in zip(lines, is_val) if v]
    if not train or not val:
        raise UserError(f'{len(lines)} lines are too few for a train and a val split: give more text')
    return train, val


def prepare(out_dir=None, input_path=None, vocab_size=8192, val_fraction=0.02, sst2_dir=None):
    """Write the files described above into `out_dir` and return it; `sst2_dir`: a folder with SST-2's dev.tsv[.gz]."""
    if not VOCAB_SIZES[0] <= vocab_size <= VOCAB_SIZES[1]:
        raise UserError(f'--vocab_size must be between {VOCAB_SIZES[0]} and {VOCAB_SIZES[1]}, not {vocab_size}')
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f'--val_fraction must be between 0 and 1, not {val_fraction}')
    if input_path is None:
        out_dir = Path(out_dir or default_out_dir(NAME))
        files = [find_input(URL, out_dir, MIRROR)]
    else:
        files = input_files(input_path, ('.txt', '.txt.gz'))
        out_dir = Path(out_dir or default_out_dir(Path(input_path).name.split('.')[0]))
    lines = read_corpus(files)
    try:
        lines = drop_excluded(lines, read_sst2('dev', default_out_dir('sst2'), sst2_dir)[0])
    except UserError as e:
        print(f'warning: SST-2 dev not found, no lines filtered out ({e})')
    train, val = split_val(lines, val_fraction)
    print(f'training a lowercase BPE vocabulary of up to {vocab_size:,} tokens on {len(train):,} lines')
    tokenizer = MaskedLMTokenizer.train(train, vocab_size, show_progress=True)
    print(f'vocab size: {tokenizer.vocab_size:,}')
    meta = tokenizer_meta(tokenizer, **tokenizer.special_ids())
    with StagedOutputs(out_dir) as out:
        for split, split_lines in (('train', train), ('val', val)):
            write_split(out, tokenizer, split, split_lines, meta['dtype'])
        out.write_meta(meta)
    print(f'wrote {out_dir}')
    return out_dir


def main(argv=None):
    parser = make_arg_parser(NAME, __doc__.splitlines()[0])
    parser.set_defaults(out_dir=None)
    parser.add_argument('--vocab_size', type=int, default=8192,
                        help='size of the lowercase BPE vocabulary (default: %(default)s)')
    parser.add_argument('--val_fraction', type=float, default=0.02,
                        help='share of the lines held out for validation (default: %(default)s)')
    parser.add_argument('--sst2', dest='sst2_dir', default=None, metavar='FOLDER',
                        help="folder with SST-2's dev.tsv[.gz], whose sentences are left out (default: a download or the mirror)")
    prepare(**vars(parser.parse_args(argv)))


if __name__ == '__main__':
    run_cli(main)
