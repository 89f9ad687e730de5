"""Multi30k (task 1): German-English image captions, for translation.

Trains one BPE vocabulary shared by both languages on the training sentences, then writes, for each split (train, val,
test = test_2016_flickr) and language (de, en), {split}.{lang}.bin (the ids of all sentences, no <bos>/<eos>), .idx
(int64 offsets: sentence i is ids[idx[i]:idx[i+1]]) and .txt (the raw sentences, references for BLEU), and meta.pkl
with the tokenizer and its special ids. --input: a folder of train.de.gz, train.en.gz, val.de.gz, ... (or unzipped)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # so `python prepare/<name>.py` finds the repo's modules

from configurator import run_cli
from errors import UserError
from prepare import StagedOutputs, default_out_dir, find_raw_file, make_arg_parser, read_lines, tokenizer_meta, write_split
from tokenizer import SubwordTokenizer

NAME = 'multi30k'
URL = 'https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{}.{}.gz'  # stem, language
SPLITS = {'train': 'train', 'val': 'val', 'test': 'test_2016_flickr'}  # our name -> the dataset's file name
SRC_LANG, TGT_LANG = 'de', 'en'
MAX_VOCAB_SIZE = 16000  # plenty for 30k sentence pairs; a bigger vocabulary leaves most tokens rarely seen


def read_corpus(out_dir, input_dir=None):
    """{split: {lang: list of sentences}}, with the same number of sentences in both languages."""
    corpus = {}
    for split, stem in SPLITS.items():
        corpus[split] = {lang: read_lines(find_raw_file(f'{stem}.{lang}', input_dir, URL.format(stem, lang), out_dir, NAME))
                         for lang in (SRC_LANG, TGT_LANG)}
        counts = [len(lines) for lines in corpus[split].values()]
        if counts[0] != counts[1]:
            raise UserError(f'the {split} split has {counts[0]:,} German but {counts[1]:,} English sentences; '
                            f'they must be line-by-line translations')
    return corpus


def prepare(out_dir=None, input_path=None, vocab_size=8000):
    """Write the files described above into `out_dir` and return that folder; `input_path`: a folder of raw files."""
    n_special = len(SubwordTokenizer.SPECIAL_TOKENS)
    if not n_special < vocab_size <= MAX_VOCAB_SIZE:
        raise UserError(f'--vocab_size must be between {n_special + 1} and {MAX_VOCAB_SIZE}, not {vocab_size}')
    out_dir = Path(out_dir or default_out_dir(NAME))
    corpus = read_corpus(out_dir, input_path)
    print(f'training a joint {SRC_LANG}+{TGT_LANG} BPE vocabulary of up to {vocab_size:,} tokens')
    train = corpus['train']
    tokenizer = SubwordTokenizer.train(train[SRC_LANG] + train[TGT_LANG], vocab_size, show_progress=True)
    print(f'vocab size: {tokenizer.vocab_size:,}')
    meta = tokenizer_meta(tokenizer, **tokenizer.special_ids(), src_lang=SRC_LANG, tgt_lang=TGT_LANG)
    with StagedOutputs(out_dir) as out:
        for split, sentences_by_lang in corpus.items():
            for lang, sentences in sentences_by_lang.items():
                write_split(out, tokenizer, f'{split}.{lang}', sentences, meta['dtype'])
        out.write_meta(meta)
    print(f'wrote {out_dir}')
    return out_dir


def main(argv=None):
    parser = make_arg_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument('--vocab_size', type=int, default=8000,
                        help=f'size of the joint BPE vocabulary, at most {MAX_VOCAB_SIZE} (default: %(default)s)')
    prepare(**vars(parser.parse_args(argv)))


if __name__ == '__main__':
    run_cli(main)
