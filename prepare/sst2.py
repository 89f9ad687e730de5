"""SST-2 (Stanford Sentiment Treebank, binary): sentence classification for the encoder.

Reads the sentence-level train and dev splits (`sentence<TAB>label`, a header line; 0 negative, 1 positive); writes
for train and val (SST-2's dev) {split}.bin, .idx and .txt as prepare/multi30k.py does, {split}.labels (int64 indices
into label_names), .labels.txt (as written) and meta.pkl. The vocabulary is the pretraining corpus's (--tokenizer_from,
by prepare/mlm_corpus.py), so that a model pretrained there reads the same ids; where that folder is not prepared, one
is learned from the train sentences. --input: a folder of train.tsv, dev.tsv (and train_glue_phrases.tsv for --phrases),
gzipped or not."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python prepare/<name>.py` finds the repo's modules

from configurator import run_cli
from errors import UserError
from prepare import SST2_LABELS, StagedOutputs, default_out_dir, make_arg_parser, read_sst2, tokenizer_meta, write_split
from tokenizer import MaskedLMTokenizer, load_meta, tokenizer_from_meta

NAME = 'sst2'
PRETRAINING_DIR = default_out_dir('movie_reviews')  # prepare/mlm_corpus.py's default output


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
    out_dir = Path(out_dir or default_out_dir(NAME))
    data = {split: read_sst2(name, out_dir, input_path) for split, name in (('train', 'train'), ('val', 'dev'))}
    if phrases:
        data['train'] = add_phrases(data['train'], read_sst2('train_glue_phrases', out_dir, input_path), data['val'])
    tokenizer, source = load_tokenizer(tokenizer_from, data['train'][0], vocab_size)
    meta = tokenizer_meta(tokenizer, **tokenizer.special_ids(), label_names=list(SST2_LABELS), n_classes=len(SST2_LABELS),
                          tokenizer_from=source)
    with StagedOutputs(out_dir) as out:
        for split, (sentences, labels) in data.items():
            write_split(out, tokenizer, split, sentences, meta['dtype'])
            out.write_array(f'{split}.labels', [SST2_LABELS.index(label) for label in labels], np.int64)
            out.write_text(f'{split}.labels.txt', ''.join(label + '\n' for label in labels))
            counts = ', '.join(f'{labels.count(name):,} labelled {name}' for name in SST2_LABELS)
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
    prepare(**vars(parser.parse_args(argv)))


if __name__ == '__main__':
    run_cli(main)
