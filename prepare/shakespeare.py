"""Tiny Shakespeare with the GPT-2 BPE tokenizer (tiktoken 'gpt2').

Writes train.bin and val.bin (uint16 token ids; the first 90% of the text is
for training, the rest for validation) and meta.pkl naming the tokenizer.

    python prepare/shakespeare.py [--input input.txt] [--out_dir data/shakespeare]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python prepare/<name>.py` finds the repo's modules

from configurator import run_cli
from prepare import default_out_dir, make_arg_parser, read_shakespeare, split_train_val, tokenizer_meta, write_train_val
from tokenizer import TiktokenTokenizer

NAME = 'shakespeare'


def prepare(out_dir=None, input_path=None):
    """Write train.bin, val.bin and meta.pkl into `out_dir` and return that folder."""
    out_dir = Path(out_dir or default_out_dir(NAME))
    tokenizer = TiktokenTokenizer('gpt2')
    # split the text, not the tokens, so no token straddles the train/val boundary
    train_text, val_text = split_train_val(read_shakespeare(out_dir, input_path))
    train_ids = tokenizer.encode_ordinary(train_text)
    val_ids = tokenizer.encode_ordinary(val_text)
    meta = tokenizer_meta(tokenizer)
    write_train_val(out_dir, train_ids, val_ids, meta)
    return out_dir


def main(argv=None):
    args = make_arg_parser(NAME, __doc__.splitlines()[0]).parse_args(argv)
    prepare(out_dir=args.out_dir, input_path=args.input)


if __name__ == '__main__':
    run_cli(main)
