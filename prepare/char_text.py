"""Any text as characters in the vocabulary of a prepared character dataset, so that a model trained on that dataset
can be fine-tuned on it (init_from wants the same tokenizer); other characters are dropped; the first 90% trains.

    python prepare/char_text.py --input ../shared/data/wikitext-2/valid.txt.gz --vocab_from data/shakespeare_char \\
        --out_dir data/wikitext_char"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python prepare/<name>.py` finds the repo's modules

from configurator import run_cli
from errors import UserError
from prepare import make_arg_parser, read_lines, split_train_val, tokenizer_meta, write_train_val
from tokenizer import CharTokenizer, load_meta, tokenizer_from_meta


def prepare(input_path, vocab_from, out_dir):
    """Write train.bin, val.bin and meta.pkl into `out_dir` and return that folder."""
    meta = load_meta(vocab_from)
    tokenizer = tokenizer_from_meta(meta) if meta else None
    if not isinstance(tokenizer, CharTokenizer):
        raise UserError(f"--vocab_from {vocab_from} is not a prepared character dataset (no meta.pkl of characters)")
    text = '\n'.join(read_lines(Path(input_path)))
    kept = ''.join(ch for ch in text if ch in tokenizer.stoi)
    print(f'{len(text) - len(kept):,} of {len(text):,} characters dropped (outside the vocabulary)')
    train_ids, val_ids = split_train_val(tokenizer.encode(kept))
    return write_train_val(Path(out_dir), train_ids, val_ids, tokenizer_meta(tokenizer))


def main(argv=None):
    parser = make_arg_parser('char_text', __doc__.splitlines()[0])
    parser.add_argument('--vocab_from', required=True, help='a prepared character dataset whose vocabulary to use')
    args = parser.parse_args(argv)
    if args.input_path is None:
        raise UserError('--input is required: the text to prepare')
    prepare(**vars(args))


if __name__ == '__main__':
    run_cli(main)
