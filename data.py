"""Training batches from prepared datasets (prepare/), for every model kind. A dataset draws the rows of a whole global
batch (every micro-step of every rank) from one seeded generator, each rank taking its share: the batches are the same
whatever the number of processes, and the generator's state is all a checkpoint needs to continue them exactly."""

import importlib
import math
import os

import numpy as np
import torch

from distributed import any_rank, barrier
from errors import UserError
from model import predicted_positions
from tokenizer import load_meta, tokenizer_from_meta

# ---------------------------------------------------------------------------
# Finding a dataset, and preparing the small ones on first use

# dataset -> (its prepare/ module, that module's prepare() arguments, datasets it needs first)
AUTO_PREPARED = {'shakespeare_char': ('shakespeare_char', {}, ()), 'shakespeare': ('shakespeare', {}, ()),
                 'multi30k': ('multi30k', {}, ()), 'movie_reviews': ('mlm_corpus', {}, ()),
                 # SST-2 in the movie reviews' vocabulary, so that a model pretrained there reads it
                 'sst2': ('sst2', {}, ('movie_reviews',)), 'sst2_phrases': ('sst2', {'phrases': True}, ('movie_reviews',))}


def data_folder(dataset):
    """A dataset's folder: data/<dataset>, or the path itself when it is one."""
    return dataset if os.path.isabs(dataset) or os.sep in dataset else os.path.join('data', dataset)


def prepare_if_missing(dataset, model_type, rank=0, local_rank=0, device='cpu'):
    """A small known dataset is prepared on first use: by rank 0 while the others wait, then by each node's first
    rank (nodes without a shared data/). Every rank takes every collective, whatever its filesystem shows."""
    if dataset not in AUTO_PREPARED:
        return
    marker = os.path.join(data_folder(dataset), 'train.bin' if model_type == 'gpt' else 'meta.pkl')
    for preparer in (rank == 0, local_rank == 0):
        if not any_rank(not os.path.exists(marker), device):
            return
        if preparer and not os.path.exists(marker):
            print(f"{marker} not found: preparing {dataset} first")
            prepare_dataset(dataset)
        barrier()
    if any_rank(not os.path.exists(marker), device):
        raise UserError(f"{marker} is still missing on some node after preparing it: prepare {dataset} "
                        f"on every node, or give every node the same data/ folder")


def prepare_dataset(dataset):
    module, arguments, needs = AUTO_PREPARED[dataset]
    for name in needs:  # prepared first: the dataset takes its vocabulary from them
        if not os.path.exists(os.path.join(data_folder(name), 'meta.pkl')):
            print(f"{data_folder(name)}/meta.pkl not found: preparing {name} first")
            prepare_dataset(name)
    importlib.import_module(f'prepare.{module}').prepare(out_dir=data_folder(dataset), **arguments)


def load_dataset(cfg, device, meta, log=print):
    """The batches of cfg.dataset for cfg.model_type: token streams (gpt), sentence pairs (seq2seq),
    labelled sentences (an encoder's classifier: prepare/sst2.py) or unlabelled ones (prepare/mlm_corpus.py)."""
    data_dir = data_folder(cfg.dataset)
    if cfg.model_type == 'seq2seq':
        return SentencePairs(data_dir, cfg.block_size, device)
    if cfg.model_type == 'encoder':
        if meta is not None and 'n_classes' in meta:
            return LabelledSentences(data_dir, cfg.block_size, device, cfg.pack_sentences)
        return MaskedSentences(data_dir, cfg.block_size, device, cfg.mask_prob, cfg.pack_sentences)
    data = TokenStream(data_dir, cfg.block_size, device, align_documents=cfg.align_documents)
    if cfg.align_documents:
        log(f"align_documents: rows begin at document starts and hold {data.kept:.1%} of the train tokens")
    if cfg.sampling == 'epoch':
        rows = data.num_rows('train')
        log(f"epoch sampling: {rows:,} rows an epoch, {rows / (cfg.batch_size * cfg.gradient_accumulation_steps):,.1f} "
            f"iterations")
    return data


# ---------------------------------------------------------------------------
# Batches


def prepare_command(path):
    """How to make the dataset whose file `path` is: its prepare script, when there is one."""
    name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'prepare', f'{name}.py')
    return f"python prepare/{name}.py" if os.path.exists(script) else "one of the scripts in prepare/"


def open_tokens(path, dtype):
    if not os.path.exists(path):
        raise UserError(f"{path} not found: prepare the dataset first with {prepare_command(path)}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty: prepare the dataset again with {prepare_command(path)}")
    return np.memmap(path, dtype=dtype, mode='r')


def token_dtype(meta):
    return np.dtype((meta or {}).get('dtype', 'uint16'))


class Batches:
    """What the training loop needs of a dataset."""

    def __init__(self, device):
        self.device = torch.device(device)

    def num_inputs(self, split, rows):
        """Tokens the model reads for these rows (tok/s and MFU count them): by default its target tokens."""
        return self.num_targets(split, rows)

    def eval_rows(self, split, eval_iters, batch_size, seed, world):
        """eval_iters batches of rows, from a generator seeded the same at every evaluation: evaluations compare."""
        return list(self.draw(split, eval_iters * batch_size, torch.Generator().manual_seed(seed)).view(eval_iters, -1))

    def to_device(self, *tensors):
        """The tensors on the device (a None stays None: an argument the model is not given)."""
        if self.device.type == 'cuda':  # pinned memory lets the copy overlap with compute
            return tuple(t if t is None else t.pin_memory().to(self.device, non_blocking=True) for t in tensors)
        return tuple(t if t is None else t.to(self.device) for t in tensors)

    def pad(self, sequences, value=None):
        """Tensors of ids -> one (len(sequences), longest) tensor, right-padded with `value` (default: pad_id)."""
        value = self.pad_id if value is None else value
        return torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True, padding_value=value)


class EpochSampler:
    """Rows drawn in epochs, without replacement (sampling='epoch'): epoch e is a permutation of
    all n rows seeded by (seed, e); draw(k) takes the next k, going on into the next epoch when
    one runs out. Its position, get_state() = {epoch, offset}, is what a checkpoint keeps."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch, self.offset = n, seed, 0, 0
        self._order = None  # (epoch, its permutation)

    def order(self, epoch):
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(self.n)))
        return self._order[1]

    def draw(self, k):
        parts = []
        while k > 0:
            if self.offset == self.n:  # the next epoch begins with the first row drawn from it
                self.epoch, self.offset = self.epoch + 1, 0
            take = min(k, self.n - self.offset)
            parts.append(self.order(self.epoch)[self.offset:self.offset + take])
            self.offset, k = self.offset + take, k - take
        return torch.cat(parts)

    def get_state(self):
        return {'epoch': self.epoch, 'offset': self.offset, 'rows': self.n, 'seed': self.seed}

    def set_state(self, state):
        if state.get('rows') != self.n:
            raise ValueError(f"the checkpoint's epochs have {state.get('rows')} rows, this data {self.n}")
        self.seed, self.epoch, self.offset = state['seed'], state['epoch'], state['offset']


def eot_id(meta):
    """A dataset's end-of-text token: meta's, its tokenizer's (None if none), or GPT-2's (no meta.pkl: GPT-2 BPE)."""
    if meta is None:
        return 50256
    if 'eot_id' in meta:
        return meta['eot_id']
    return getattr(tokenizer_from_meta(meta), 'eot_token', None)


def document_starts(data, eot, chunk=1 << 26):
    """Where each document of the token stream begins: 0 and every position after an eot."""
    starts = [np.zeros(1, dtype=np.int64)]
    for begin in range(0, len(data), chunk):
        starts.append(np.flatnonzero(np.asarray(data[begin:begin + chunk]) == eot).astype(np.int64) + begin + 1)
    starts = np.concatenate(starts)
    return starts[starts < len(data)]


def pack_documents(lengths, row_len, buffer=1000, cut=True):
    """Best-fit packing of documents (in corpus order, `buffer` at a time) into rows of row_len tokens, each row
    beginning at a document start: a row takes the longest waiting document that fits its room, again and again;
    when none fits, the shortest is cut to fill the row (its tail dropped). buffer=1 is greedy packing. cut=False:
    documents stay whole (a row ends when none fits, the last one kept however full; one longer than row_len is
    still cut, alone in its row). Returns (documents, lengths, ptr): row i's segments are ptr[i]:ptr[i+1]."""
    import bisect
    waiting, next_doc, n = [], 0, len(lengths)  # waiting: sorted (length, document)
    docs, takes, ptr, room = [], [], [0], row_len
    while True:
        while len(waiting) < buffer and next_doc < n:
            bisect.insort(waiting, (int(lengths[next_doc]), next_doc))
            next_doc += 1
        if not waiting:
            break
        i = bisect.bisect_right(waiting, (room, n)) - 1  # the longest that fits
        if i < 0 and not cut and room < row_len:  # none fits: the row ends short
            ptr.append(len(docs))
            room = row_len
            continue
        length, doc = waiting.pop(i if i >= 0 else 0)
        docs.append(doc)
        takes.append(min(length, room))
        room -= takes[-1]
        if room == 0:
            ptr.append(len(docs))
            room = row_len
    if not cut and room < row_len:
        ptr.append(len(docs))
    ptr = np.array(ptr, dtype=np.int64)
    return np.array(docs[:ptr[-1]], dtype=np.int64), np.array(takes[:ptr[-1]], dtype=np.int64), ptr


class TokenStream(Batches):
    """GPT data: one long stream of token ids per split. A row is a window of block_size + 1 tokens: its inputs
    the first block_size, its targets the same shifted by one. Rows are drawn by a torch.Generator (nanoGPT's
    windows at any offset, with replacement) or an EpochSampler (every non-overlapping window once an epoch).
    align_documents=True: a row is a pack of whole documents from a document start (pack_documents), by number."""

    def __init__(self, data_dir, block_size, device, align_documents=False):
        super().__init__(device)
        meta = load_meta(data_dir)
        dtype = token_dtype(meta)
        self.block_size = block_size
        self.splits = {split: open_tokens(os.path.join(data_dir, f'{split}.bin'), dtype) for split in ('train', 'val')}
        for split, data in self.splits.items():
            if len(data) <= block_size:
                raise UserError(f"{split}.bin in {data_dir} has {len(data)} tokens, fewer than block_size + 1 = "
                                f"{block_size + 1}: lower --block_size or use more data")
        self.packs = None
        if align_documents:
            eot = eot_id(meta)
            if eot is None:
                raise UserError(f"align_documents=True needs documents separated by an end-of-text token, and "
                                f"{data_dir}'s tokenizer has none: use --align_documents=False")
            self.packs = {}
            for split, data in self.splits.items():
                starts = document_starts(data, eot)
                docs, takes, ptr = pack_documents(np.diff(np.append(starts, len(data))), block_size + 1)
                if len(ptr) < 2:
                    raise UserError(f"{split}.bin in {data_dir} fills no row of block_size + 1 tokens")
                self.packs[split] = (starts[docs], takes, ptr)
            # what packing keeps: documents longer than the row lose their tail (no row begins mid-document)
            self.kept = int(self.packs['train'][1].sum()) / len(self.splits['train'])

    def num_rows(self, split):
        """How many distinct rows epoch sampling draws from: packs, or non-overlapping windows."""
        if self.packs is not None:
            return len(self.packs[split][2]) - 1
        return len(self.splits[split]) // (self.block_size + 1)

    def draw(self, split, n_rows, generator):
        if isinstance(generator, EpochSampler):
            index = generator.draw(n_rows)
            return index if self.packs is not None else index * (self.block_size + 1)
        if self.packs is not None:
            return torch.randint(self.num_rows(split), (n_rows,), generator=generator)
        return torch.randint(len(self.splits[split]) - self.block_size, (n_rows,), generator=generator)

    def num_targets(self, split, rows):
        return len(rows) * self.block_size

    def window(self, split, row):
        """Row `row`'s block_size + 1 tokens."""
        data, T = self.splits[split], self.block_size
        if self.packs is None:
            return data[row:row + T + 1]
        starts, takes, ptr = self.packs[split]
        return np.concatenate([data[s:s + n] for s, n in zip(starts[ptr[row]:ptr[row + 1]], takes[ptr[row]:ptr[row + 1]])])

    def batch(self, split, rows):
        """rows: window starts (pack numbers with align_documents) -> (x, y), both (len(rows), block_size)."""
        windows = torch.from_numpy(np.stack([self.window(split, i) for i in rows.tolist()]).astype(np.int64))
        return self.to_device(windows[:, :-1], windows[:, 1:])

    def tokens_per_byte(self, tokenizer):
        """Tokens per UTF-8 byte of the validation text (of its first 10M tokens at most), measured once: what
        turns a loss in nats per token into bits per byte, which does not depend on the tokenizer."""
        if getattr(self, '_tokens_per_byte', None) is None:
            ids = self.splits['val'][:10_000_000]
            self._tokens_per_byte = len(ids) / max(len(tokenizer.decode(ids.tolist()).encode('utf-8')), 1)
        return self._tokens_per_byte


class Sentences:
    """One split of sentences: `{split}.bin`, all their ids; `{split}.idx`, int64 offsets (i: ids[idx[i]:idx[i+1]])."""

    def __init__(self, data_dir, split, dtype):
        self.ids = open_tokens(os.path.join(data_dir, f'{split}.bin'), dtype)
        idx = os.path.join(data_dir, f'{split}.idx')
        if not os.path.exists(idx):
            raise UserError(f"{idx} not found: prepare the dataset again with {prepare_command(idx)}")
        self.offsets = np.fromfile(idx, dtype=np.int64)
        if len(self.offsets) < 2 or self.offsets[-1] != len(self.ids):
            raise UserError(f"{idx} does not match {split}.bin: prepare the dataset again with {prepare_command(idx)}")

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self, index):
        index = np.asarray(index)
        return self.offsets[index + 1] - self.offsets[index]


class SentencePairs(Batches):
    """Seq2seq data: aligned source and target sentences (the Sentences of `{split}.{lang}`). A micro-batch is
    padded to its longest sentence; the global batch is sorted by length first (bucketing): little padding."""

    def __init__(self, data_dir, block_size, device, src_lang='de', tgt_lang='en'):
        super().__init__(device)
        meta = load_meta(data_dir)
        if meta is None or 'pad_id' not in meta:
            raise UserError(f"{data_dir}/meta.pkl is missing or is not a translation dataset: run python prepare/multi30k.py")
        self.pad_id, self.bos_id, self.eos_id = meta['pad_id'], meta['bos_id'], meta['eos_id']
        self.data_dir, self.langs, self.block_size = data_dir, (src_lang, tgt_lang), block_size
        self.splits = {}
        for split in ('train', 'val'):
            self.splits[split] = [Sentences(data_dir, f'{split}.{lang}', token_dtype(meta)) for lang in self.langs]
            if len(self.splits[split][0]) != len(self.splits[split][1]):
                raise UserError(f"{data_dir}: {split}.{src_lang} and {split}.{tgt_lang} have different sentence counts")

    def sentence(self, split, side, i):
        return self.splits[split][side][i]

    def texts(self, split, n):
        """(the first n source sentences of a split, their reference translations), as text: for BLEU."""
        pair = []
        for lang in self.langs:
            with open(os.path.join(self.data_dir, f'{split}.{lang}.txt'), encoding='utf-8') as f:
                pair.append(f.read().splitlines()[:n])
        return pair

    def target_lengths(self, split, rows):  # target tokens of each row: the sentence + <eos>, within block_size
        return np.minimum(self.splits[split][1].lengths(rows.numpy()), self.block_size - 1) + 1

    def draw(self, split, n_rows, generator):
        rows = torch.randint(len(self.splits[split][0]), (n_rows,), generator=generator)
        return rows[torch.from_numpy(np.argsort(self.target_lengths(split, rows), kind='stable'))]

    def num_targets(self, split, rows):
        return int(self.target_lengths(split, rows).sum())

    def batch(self, split, rows):
        """rows: sentence numbers -> (src, tgt_in = <bos> y, targets = y <eos>), padded; targets -1 at the padding."""
        src, tgt_in, targets = [], [], []
        for i in rows.tolist():
            y = torch.from_numpy(self.sentence(split, 1, i)[:self.block_size - 1].astype(np.int64))
            src.append(torch.from_numpy(self.sentence(split, 0, i)[:self.block_size].astype(np.int64)))
            tgt_in.append(torch.cat([torch.tensor([self.bos_id]), y]))
            targets.append(torch.cat([y, torch.tensor([self.eos_id])]))
        return self.to_device(self.pad(src), self.pad(tgt_in), self.pad(targets, -1))


# ---------------------------------------------------------------------------
# Encoder data: masked language modelling and sentence classification


class EncoderBatches(Batches):
    """What the encoder's datasets share: sentences framed as [CLS] sentence [SEP] and padded with [PAD]."""

    def __init__(self, data_dir, block_size, device, needs, script):
        super().__init__(device)
        meta = load_meta(data_dir)
        if meta is None or not all(key in meta for key in needs):
            raise UserError(f"{data_dir}/meta.pkl is missing or is not a dataset of prepare/{script}: "
                            f"run python prepare/{script}")
        if block_size < 3:
            raise UserError(f"block_size must be at least 3 ([CLS], a token, [SEP]), got {block_size}")
        self.meta, self.block_size = meta, block_size
        self.pad_id, self.cls_id, self.sep_id = meta['pad_id'], meta['cls_id'], meta['sep_id']
        self.splits = {split: Sentences(data_dir, split, token_dtype(meta)) for split in ('train', 'val')}

    def framed(self, split, i):
        """[CLS] sentence i [SEP], the sentence cut to fit block_size, as a long tensor."""
        sentence = self.splits[split][i][:self.block_size - 2].astype(np.int64)
        return torch.from_numpy(np.concatenate([[self.cls_id], sentence, [self.sep_id]]))

    def by_length(self, split, rows, index):
        """rows sorted by sentence length (index[k] is row k's sentence): the micro-batches cut from them pad little."""
        return rows[torch.from_numpy(np.argsort(self.splits[split].lengths(index), kind='stable'))]


MASK_SEED_BITS = 31  # a masked-LM row is (sentence number << 31) | the seed of its mask: see MaskedSentences


def mask_tokens(tokens, draws, replacements, mask_prob, mask_id, special_ids):
    """BERT's masking of tokens (rows, n), given two uniform draws per position (draws: (2, rows, n)) and a random
    token for each (replacements). A token that is not special ([CLS], [SEP], [PAD], ...) is chosen with probability
    mask_prob and becomes [MASK] 80% of the time, a random token 10%, itself 10% (so the model guesses at every
    position, not only at [MASK]). Returns (inputs, targets): targets the original ids where chosen, -1 elsewhere."""
    choice, how = draws
    chosen = (choice < mask_prob) & ~torch.isin(tokens, special_ids)
    inputs = torch.where(chosen & (how < 0.8), mask_id, tokens)
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), replacements, inputs)
    return inputs, torch.where(chosen, tokens, -1)


class MaskedSentences(EncoderBatches):
    """Masked-language-model data (prepare/mlm_corpus.py): unlabelled sentences. pack_sentences=True: a row is
    [CLS] s_i [SEP] s_i+1 [SEP] ..., consecutive sentences from a random one on, cut at block_size (RoBERTa's "full
    sentences": almost no padding); False: one sentence, [CLS] s_i [SEP], padded to the longest of its micro-batch.

    Dynamic masking: a row is one int64, its sentence number << 31 | a random 31-bit seed, both drawn by draw() from
    the run's generator. The seed decides the row's mask (mask_tokens): a sentence gets a fresh mask every time it
    is drawn, while a resumed run, every rank and num_targets all see the same masks."""

    def __init__(self, data_dir, block_size, device, mask_prob=0.15, pack_sentences=True):
        super().__init__(data_dir, block_size, device, ('mask_id', 'cls_id', 'sep_id', 'pad_id'), 'mlm_corpus.py')
        if not 0.0 < mask_prob < 1.0:
            raise UserError(f"mask_prob must be between 0 and 1, got {mask_prob}")
        self.mask_prob, self.pack_sentences = mask_prob, pack_sentences
        self.recent = {}  # (split, rows) -> masked batch, see masked()
        self.generator = torch.Generator()  # reseeded for each row, see random_draws()
        self.mask_id = self.meta['mask_id']
        special = sorted({i for key, i in self.meta.items() if key.endswith('_id')})
        self.special_ids = torch.tensor(special)
        self.random_ids = torch.from_numpy(np.setdiff1d(np.arange(self.meta['vocab_size']), special))
        if pack_sentences:
            self.streams = {split: self.separated(sentences) for split, sentences in self.splits.items()}

    def separated(self, sentences):
        """(all sentences in one array, each followed by [SEP]; where each sentence starts in it)."""
        n = len(sentences)
        starts = sentences.offsets[:-1] + np.arange(n)  # each earlier sentence adds one [SEP]
        stream = np.full(len(sentences.ids) + n, self.sep_id, dtype=sentences.ids.dtype)
        is_token = np.ones(len(stream), dtype=bool)
        is_token[starts + sentences.lengths(np.arange(n))] = False
        stream[is_token] = sentences.ids
        return stream, starts

    def sequence(self, split, i):
        """Row i's tokens, before masking: packed from sentence i on, or sentence i alone."""
        if not self.pack_sentences:
            return self.framed(split, i)
        stream, starts = self.streams[split]
        window = stream[starts[i]:starts[i] + self.block_size - 1].astype(np.int64)
        return torch.from_numpy(np.concatenate([[self.cls_id], window]))

    def draw(self, split, n_rows, generator):
        index = torch.randint(len(self.splits[split]), (n_rows,), generator=generator)
        seeds = torch.randint(2 ** MASK_SEED_BITS, (n_rows,), generator=generator)
        rows = index << MASK_SEED_BITS | seeds
        return rows if self.pack_sentences else self.by_length(split, rows, index.numpy())

    def masked(self, split, rows):
        """rows -> (inputs, targets), (len(rows), longest row), each row masked by its own seed. Kept for the last
        batches: a step asks for the global batch twice (its targets and inputs) and for each micro-batch twice."""
        key = (split, rows.numpy().tobytes())
        if key not in self.recent:
            if len(self.recent) >= 16:
                self.recent.clear()
            tokens = self.pad([self.sequence(split, row >> MASK_SEED_BITS) for row in rows.tolist()])
            draws, replacements = self.random_draws(rows, tokens.size(1))
            self.recent[key] = mask_tokens(tokens, draws, replacements, self.mask_prob, self.mask_id,
                                           self.special_ids)
        return self.recent[key]

    def random_draws(self, rows, width):
        """What mask_tokens needs, from each row's own seed: (2, rows, width) uniforms and (rows, width) random
        tokens. The only per-row Python left: masking the whole batch takes 3.5 ms for 128 rows of 128 tokens on a
        2-core CPU, against 21-33 ms row by row; on an H200 a pretraining step went from 35-40 to 20-26 ms (README)."""
        uniforms, picks = [], []
        for row in rows.tolist():
            self.generator.manual_seed(row & (2 ** MASK_SEED_BITS - 1))
            uniforms.append(torch.rand(2, self.block_size, generator=self.generator))
            picks.append(torch.randint(len(self.random_ids), (self.block_size,), generator=self.generator))
        return torch.stack(uniforms, 1)[..., :width], self.random_ids[torch.stack(picks)[:, :width]]

    def num_targets(self, split, rows):
        return int((self.masked(split, rows)[1] != -1).sum())

    def num_inputs(self, split, rows):  # every token of a row is read, ~mask_prob of them predicted
        return int((self.masked(split, rows)[0] != self.pad_id).sum())

    def batch(self, split, rows):
        """rows -> (inputs, targets, None, predict_at) for Encoder.forward: no position_ids (a row is read whole);
        predict_at the chosen positions' flat indices, found here on the host (model.predicted_positions)."""
        inputs, targets = self.masked(split, rows)
        return self.to_device(inputs, targets, None, predicted_positions(targets != -1))


class LabelledSentences(EncoderBatches):
    """Sentence classification data (prepare/sst2.py): a row is [CLS] sentence [SEP], padded to the longest of its
    micro-batch; its target the sentence's class, from `{split}.labels` (int64; meta['label_names'] names them).
    pack_sentences=True: a micro-batch's sentences are packed into as few rows of block_size as pack_documents
    finds, position_ids restarting at each [CLS] (Encoder.encode reads each sentence apart): the same numbers without
    the padding (a random batch of SST-2 phrases is ~3x padding): 1.3-1.6x faster steps in the CPU recipe (README)."""

    def __init__(self, data_dir, block_size, device, pack_sentences=False):
        super().__init__(data_dir, block_size, device, ('n_classes', 'label_names', 'cls_id', 'sep_id', 'pad_id'),
                         'sst2.py')
        self.n_classes, self.label_names = self.meta['n_classes'], self.meta['label_names']
        self.labels = {}
        for split, sentences in self.splits.items():
            path = os.path.join(data_dir, f'{split}.labels')
            labels = np.fromfile(path, dtype=np.int64) if os.path.exists(path) else np.zeros(0, dtype=np.int64)
            if len(labels) != len(sentences):
                raise UserError(f"{path} has {len(labels)} labels for {len(sentences)} sentences: "
                                f"prepare the dataset again with {prepare_command(path)}")
            self.labels[split] = torch.from_numpy(labels)
        self.pack_sentences = pack_sentences

    def draw(self, split, n_rows, generator):
        rows = torch.randint(len(self.splits[split]), (n_rows,), generator=generator)
        return self.by_length(split, rows, rows.numpy())

    def eval_rows(self, split, eval_iters, batch_size, seed, world):
        """The validation split is read whole, its accuracy over every sentence: sorted by length, in
        batches of about batch_size, as many as a multiple of the ranks that share them out."""
        if split != 'val':
            return super().eval_rows(split, eval_iters, batch_size, seed, world)
        index = torch.arange(len(self.splits[split]))
        rows = self.by_length(split, index, index.numpy())
        count = world * math.ceil(math.ceil(len(rows) / batch_size) / world)
        return list(torch.tensor_split(rows, min(count, len(rows))))

    def num_targets(self, split, rows):
        return len(rows)

    def num_inputs(self, split, rows):  # [CLS] sentence [SEP], as framed() cuts it
        lengths = self.splits[split].lengths(rows.numpy()).clip(max=self.block_size - 2)
        return int(lengths.sum()) + 2 * len(rows)

    def batch(self, split, rows):
        """rows: sentence numbers -> (tokens (len(rows), longest), labels), or packed: (tokens (packed rows, longest),
        labels in packed order, position_ids, predict_at: the [CLS]s' flat indices, found here on the host)."""
        sentences = [self.framed(split, i) for i in rows.tolist()]
        if not self.pack_sentences:
            return self.to_device(self.pad(sentences), self.labels[split][rows])
        order, _, ptr = pack_documents([len(s) for s in sentences], self.block_size, buffer=len(sentences), cut=False)
        packs = [order[a:b] for a, b in zip(ptr[:-1], ptr[1:])]
        tokens = self.pad([torch.cat([sentences[k] for k in pack]) for pack in packs])
        positions = torch.stack([self.positions_in_row([len(sentences[k]) for k in pack], tokens.size(1))
                                 for pack in packs])
        return self.to_device(tokens, self.labels[split][rows[torch.from_numpy(order)]], positions,
                              predicted_positions(positions == 0))

    @staticmethod
    def positions_in_row(lengths, width):
        """Each sentence's positions from 0; the last one's run on over the padding (never 0 there: no [CLS] seen)."""
        return torch.cat([torch.arange(n) for n in lengths[:-1]] + [torch.arange(width - sum(lengths[:-1]))])
