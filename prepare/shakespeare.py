"""Tiny Shakespeare with the GPT-2 BPE tokenizer (tiktoken 'gpt2').

Writes train.bin and val.bin (uint16 ids: the first 90% of the text, the rest) and meta.pkl naming the tokenizer."""
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
    return write_train_val(out_dir, tokenizer.encode_ordinary(train_text), tokenizer.encode_ordinary(val_text),
                           tokenizer_meta(tokenizer))


def main(argv=None):
    prepare(**vars(make_arg_parser(NAME, __doc__.splitlines()[0]).parse_args(argv)))


if __name__ == '__main__':
    run_cli(main)
