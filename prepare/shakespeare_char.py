"""Tiny Shakespeare as characters: one token per character.

Writes train.bin and val.bin (uint16 ids: the first 90% of the text, the rest) and meta.pkl with the vocabulary."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python prepare/<name>.py` finds the repo's modules

from configurator import run_cli
from prepare import default_out_dir, make_arg_parser, read_shakespeare, split_train_val, tokenizer_meta, write_train_val
from tokenizer import CharTokenizer

NAME = 'shakespeare_char'


def prepare(out_dir=None, input_path=None):
    """Write train.bin, val.bin and meta.pkl into `out_dir` and return that folder."""
    out_dir = Path(out_dir or default_out_dir(NAME))
    text = read_shakespeare(out_dir, input_path)
    tokenizer = CharTokenizer.from_text(text)
    train_ids, val_ids = split_train_val(tokenizer.encode(text))
    print(f'vocab size: {tokenizer.vocab_size}')
    # stoi and itos keep the file readable by the original nanoGPT
    meta = tokenizer_meta(tokenizer, stoi=dict(tokenizer.stoi), itos=dict(enumerate(tokenizer.chars)))
    return write_train_val(out_dir, train_ids, val_ids, meta)


def main(argv=None):
    prepare(**vars(make_arg_parser(NAME, __doc__.splitlines()[0]).parse_args(argv)))


if __name__ == '__main__':
    run_cli(main)
