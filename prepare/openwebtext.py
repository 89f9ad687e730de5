"""OpenWebText, or any local text corpus, with the GPT-2 BPE tokenizer (as in nanoGPT).

Each document is encoded with tiktoken 'gpt2' and followed by <|endoftext|> (id 50256). A random --val_fraction of the
documents goes to val.bin, the rest to train.bin; each file is one flat array of uint16 token ids.

    python prepare/openwebtext.py [--num_proc 8]     # OpenWebText from the Hugging Face Hub (about 54 GB)
    python prepare/openwebtext.py --input corpus/    # local .txt/.json/.jsonl/.parquet files"""
import functools
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python prepare/<name>.py` finds the repo's modules

from configurator import run_cli
from errors import UserError
from prepare import StagedOutputs, default_out_dir, input_files, make_arg_parser, tokenizer_meta
from tokenizer import TiktokenTokenizer, import_package

NAME = 'openwebtext'
HUB_DATASET = 'openwebtext'
# the `datasets` builder that reads each kind of local file
BUILDERS = {'.txt': 'text', '.json': 'json', '.jsonl': 'json', '.parquet': 'parquet'}
MAX_SHARDS = 1024  # the corpus is written in this many pieces, to show progress and bound memory


def load_corpus(input_path, text_column, num_proc, cache_dir):
    """The corpus as a `datasets.Dataset` with one document per row."""
    datasets = import_package('datasets')
    if input_path is None:
        try:
            corpus = datasets.load_dataset(HUB_DATASET, num_proc=num_proc, cache_dir=cache_dir)
        except ConnectionError as e:
            raise UserError(f'could not download {HUB_DATASET!r} from the Hugging Face Hub ({e}); '
                            f'pass a local corpus with --input') from None
    else:
        files = input_files(input_path, tuple(BUILDERS), recursive=True)
        if files[0].suffix not in BUILDERS:  # the file given
            raise UserError(f'--input {input_path}: unsupported file type; use {"/".join(BUILDERS)} files')
        builders = {BUILDERS[f.suffix] for f in files}
        if len(builders) > 1:
            raise UserError(f'--input mixes file types ({", ".join(sorted(builders))}); use one kind of file')
        builder = builders.pop()
        # a .txt file is one document (the builder's default would make every line a document)
        options = {'sample_by': 'document'} if builder == 'text' else {}
        corpus = datasets.load_dataset(builder, data_files=[str(f) for f in files], cache_dir=cache_dir, **options)
    documents = corpus['train']
    if text_column not in documents.column_names:
        raise UserError(f'the corpus has no column {text_column!r} (its columns: {", ".join(documents.column_names)}); '
                        f'choose one with --text_column')
    return documents.select_columns([text_column])


@functools.cache
def gpt2_tokenizer():
    # one per worker process, created on first use rather than shipped to the workers
    return TiktokenTokenizer('gpt2')


def tokenize_documents(batch, text_column):
    tokenizer = gpt2_tokenizer()
    # encode_ordinary: a literal '<|endoftext|>' in a web page is just text; the only separators are the ones we append
    ids = [tokenizer.encode_ordinary(text) + [tokenizer.eot_token] for text in batch[text_column]]
    return {'ids': ids, 'len': [len(doc) for doc in ids]}


def write_tokens(documents, out, name, dtype):
    """Concatenate the 'ids' of all `documents` into the output file `name`, shard by shard."""
    total = int(np.sum(documents['len'], dtype=np.uint64))
    tokens = np.memmap(out.path(name), dtype=dtype, mode='w+', shape=(total,))
    n_shards = min(MAX_SHARDS, len(documents))
    start = 0
    for index in tqdm(range(n_shards), desc=f'writing {name}'):
        shard = documents.shard(num_shards=n_shards, index=index, contiguous=True).with_format('numpy')
        shard_tokens = np.concatenate(shard['ids'])
        tokens[start:start + len(shard_tokens)] = shard_tokens
        start += len(shard_tokens)
    tokens.flush()
    return total


def prepare(out_dir=None, input_path=None, text_column='text', num_proc=None, val_fraction=0.0005,
            seed=2357, cache_dir=None):
    """Write train.bin, val.bin and meta.pkl into `out_dir` and return that folder. `input_path`: a local file or
    folder (None: OpenWebText from the Hub); `cache_dir`: where `datasets` keeps its files (None: its default)."""
    if not 0 < val_fraction < 1:
        raise UserError(f'--val_fraction must be between 0 and 1, not {val_fraction}')
    out_dir = Path(out_dir or default_out_dir(NAME))
    num_proc = num_proc or min(8, os.cpu_count() or 1)
    meta = tokenizer_meta(gpt2_tokenizer())
    documents = load_corpus(input_path, text_column, num_proc, cache_dir)
    try:  # a random val_fraction of the documents for validation
        splits = documents.train_test_split(test_size=val_fraction, seed=seed, shuffle=True)
    except ValueError as e:  # too few documents to put at least one on each side
        raise UserError(f'cannot split {len(documents)} documents into train and val: {e}') from None
    with StagedOutputs(out_dir) as out:
        for split, docs in (('train', splits['train']), ('val', splits['test'])):
            tokenized = docs.map(tokenize_documents, fn_kwargs={'text_column': text_column}, batched=True,
                                 remove_columns=[text_column], num_proc=min(num_proc, len(docs)),
                                 desc=f'tokenizing {split}')
            n_tokens = write_tokens(tokenized, out, f'{split}.bin', meta['dtype'])
            print(f'{split} has {len(docs):,} documents, {n_tokens:,} tokens')
        out.write_meta(meta)
    print(f'wrote {out_dir}')
    return out_dir


def main(argv=None):
    parser = make_arg_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument('--text_column', default='text', help='column holding the documents (default: %(default)s)')
    parser.add_argument('--num_proc', type=int, default=None, help='worker processes (default: up to 8 cores)')
    parser.add_argument('--val_fraction', type=float, default=0.0005,
                        help='share of documents for validation (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=2357, help='seed of the train/val split (default: %(default)s)')
    parser.add_argument('--cache_dir', default=None, help='cache folder for Hugging Face datasets')
    prepare(**vars(parser.parse_args(argv)))


if __name__ == '__main__':
    run_cli(main)
