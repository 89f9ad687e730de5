"""Helpers shared by the data preparation scripts in this folder.

Each script turns a corpus into token files under data/<name>/:
  - finding its input: an explicit --input path, else a download, else an offline mirror;
  - writing its outputs so that a failed or interrupted run never damages the files
    of an earlier run (everything is written to temporary files first and only
    moved into place once the whole run has succeeded).
"""
import argparse
import http.client
import os
import pickle
import urllib.request
from contextlib import contextmanager
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
    """An argument parser with the options every script has: --input and --out_dir."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--input', default=None,
                        help='use this local copy of the raw corpus instead of downloading it')
    parser.add_argument('--out_dir', default=str(default_out_dir(name)),
                        help='folder for the prepared files (default: %(default)s)')
    return parser


def token_dtype(vocab_size):
    """Name of the smallest unsigned integer type that holds every token id."""
    return 'uint16' if vocab_size < 2**16 else 'uint32'


def tokenizer_meta(tokenizer, **extra):
    """The meta.pkl dict for data encoded by `tokenizer`, plus the `extra` entries."""
    return {'vocab_size': tokenizer.vocab_size, 'dtype': token_dtype(tokenizer.vocab_size),
            'tokenizer': tokenizer.state(), **extra}


# --- finding the input -------------------------------------------------------

def download(url, path):
    """Download `url` to `path`; on failure it raises and leaves no partial file behind."""
    print(f'downloading {url}')
    with urllib.request.urlopen(url, timeout=30) as response, staged_outputs(path.parent) as out:
        size = int(response.headers.get('Content-Length') or 0) or None  # None: unknown size
        bar = tqdm(total=size, unit='B', unit_scale=True, desc=path.name)
        with open(out.path(path.name), 'wb') as f, bar:
            while chunk := response.read(1 << 16):
                f.write(chunk)
                bar.update(len(chunk))


def find_input(url, data_dir, mirror, input_path=None):
    """Path of a raw input file.

    In order of preference: `input_path` (the --input option); a copy downloaded
    into `data_dir` by an earlier run; a fresh download of `url`; the offline
    mirror file MIRROR_DIR/`mirror`.
    """
    if input_path is not None:
        path = Path(input_path)
        if not path.is_file():
            raise UserError(f'--input {input_path}: no such file')
        return path
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


# --- writing the outputs -----------------------------------------------------

def _fsync(path):
    # make sure the bytes are on disk before the rename makes them visible
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StagedOutputs:
    """Output files written to temporary names, all moved into place together by `commit`.

    Use it through `staged_outputs(out_dir)`.
    """

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self._staged = {}  # final path -> temporary path

    def path(self, name):
        """A temporary path to write the output file `name` to (e.g. with np.memmap)."""
        final = self.out_dir / name
        tmp = self.out_dir / f'.{name}.{os.getpid()}.tmp'
        self._staged[final] = tmp
        return tmp

    def write_array(self, name, array, dtype):
        np.asarray(array, dtype=dtype).tofile(self.path(name))

    def write_text(self, name, text):
        self.path(name).write_text(text, encoding='utf-8')

    def write_meta(self, meta):
        with open(self.path('meta.pkl'), 'wb') as f:
            pickle.dump(meta, f)

    def commit(self):
        for tmp in self._staged.values():
            _fsync(tmp)
        for final, tmp in self._staged.items():
            os.replace(tmp, final)
        self._staged.clear()

    def discard(self):
        for tmp in self._staged.values():
            tmp.unlink(missing_ok=True)
        self._staged.clear()


@contextmanager
def staged_outputs(out_dir):
    """Collect output files; they replace the files in `out_dir` only if the block completes.

        with staged_outputs(out_dir) as out:
            out.write_array('train.bin', train_ids, 'uint16')
            out.write_meta(meta)
    """
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    outputs = StagedOutputs(out_dir)
    try:
        yield outputs
        outputs.commit()
    finally:  # also on KeyboardInterrupt
        outputs.discard()


def write_train_val(out_dir, train_ids, val_ids, meta):
    """Write train.bin, val.bin and meta.pkl into `out_dir` (all or none of them) and report the sizes."""
    with staged_outputs(out_dir) as out:
        out.write_array('train.bin', train_ids, meta['dtype'])
        out.write_array('val.bin', val_ids, meta['dtype'])
        out.write_meta(meta)
    print(f'train has {len(train_ids):,} tokens')
    print(f'val has {len(val_ids):,} tokens')
    print(f'wrote {out_dir}')
