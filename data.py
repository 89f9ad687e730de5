"""
Training batches from prepared datasets (see prepare/), for both model kinds.

A dataset draws the rows of a whole *global* batch (every micro-step of every rank) from
one seeded generator, and each rank then takes its share. The batches a run sees are
therefore the same whatever the number of processes, and the generator's state is all
that a checkpoint needs to continue the data stream exactly.
"""

import os

import numpy as np
import torch

from configurator import UserError
from tokenizer import load_meta


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

    def to_device(self, *tensors):
        if self.device.type == 'cuda':  # pinned memory lets the copy overlap with compute
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in tensors)
        return tuple(t.to(self.device) for t in tensors)


class TokenStream(Batches):
    """GPT data: one long stream of token ids per split. A row is a random window of
    block_size tokens; its targets are the same window shifted by one token."""

    def __init__(self, data_dir, block_size, device):
        super().__init__(device)
        dtype = token_dtype(load_meta(data_dir))
        self.block_size = block_size
        self.splits = {split: open_tokens(os.path.join(data_dir, f'{split}.bin'), dtype) for split in ('train', 'val')}
        for split, data in self.splits.items():
            if len(data) <= block_size:
                raise UserError(f"{split}.bin in {data_dir} has {len(data)} tokens, fewer than block_size + 1 = "
                                f"{block_size + 1}: lower --block_size or use more data")

    def sample(self, split, n_rows, generator):
        return torch.randint(len(self.splits[split]) - self.block_size, (n_rows,), generator=generator)

    def num_targets(self, split, rows):
        return len(rows) * self.block_size

    def batch(self, split, rows):
        """rows: window starts -> (x, y), both (len(rows), block_size)."""
        data, T = self.splits[split], self.block_size
        windows = torch.from_numpy(np.stack([data[i:i + T + 1] for i in rows.tolist()]).astype(np.int64))
        return self.to_device(windows[:, :-1], windows[:, 1:])


class SentencePairs(Batches):
    """Seq2seq data: aligned source and target sentences (`{split}.{lang}.bin` ids with
    `{split}.{lang}.idx` offsets). A micro-batch is padded to its longest sentence; the
    global batch is sorted by length first (bucketing), so little of it is padding."""

    def __init__(self, data_dir, block_size, device, src_lang='de', tgt_lang='en'):
        super().__init__(device)
        meta = load_meta(data_dir)
        if meta is None or 'pad_id' not in meta:
            raise UserError(f"{data_dir}/meta.pkl is missing or is not a translation dataset: run python prepare/multi30k.py")
        self.pad_id, self.bos_id, self.eos_id = meta['pad_id'], meta['bos_id'], meta['eos_id']
        self.block_size = block_size
        dtype = token_dtype(meta)
        self.splits = {}
        for split in ('train', 'val'):
            pair = []
            for lang in (src_lang, tgt_lang):
                ids = open_tokens(os.path.join(data_dir, f'{split}.{lang}.bin'), dtype)
                offsets = np.fromfile(os.path.join(data_dir, f'{split}.{lang}.idx'), dtype=np.int64)
                pair.append((ids, offsets))
            if len(pair[0][1]) != len(pair[1][1]):
                raise UserError(f"{data_dir}: {split}.{src_lang} and {split}.{tgt_lang} have different sentence counts")
            self.splits[split] = pair

    def sentence(self, split, side, i):
        ids, offsets = self.splits[split][side]
        return ids[offsets[i]:offsets[i + 1]]

    def target_lengths(self, split, rows):  # target tokens of each row: the sentence + <eos>, within block_size
        offsets = self.splits[split][1][1]
        rows = rows.numpy()
        return np.minimum(offsets[rows + 1] - offsets[rows], self.block_size - 1) + 1

    def sample(self, split, n_rows, generator):
        rows = torch.randint(len(self.splits[split][0][1]) - 1, (n_rows,), generator=generator)
        return rows[torch.from_numpy(np.argsort(self.target_lengths(split, rows), kind='stable'))]

    def num_targets(self, split, rows):
        return int(self.target_lengths(split, rows).sum())

    def batch(self, split, rows):
        """rows: sentence numbers -> (src, tgt_in, targets). tgt_in = <bos> y (what the decoder
        reads), targets = y <eos> (what it must predict), -1 where the loss ignores padding."""
        rows = rows.tolist()
        srcs = [self.sentence(split, 0, i)[:self.block_size] for i in rows]
        tgts = [self.sentence(split, 1, i)[:self.block_size - 1] for i in rows]
        S, T = max(map(len, srcs)), max(map(len, tgts)) + 1
        src = torch.full((len(rows), S), self.pad_id, dtype=torch.long)
        tgt_in = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        targets = torch.full((len(rows), T), -1, dtype=torch.long)
        for r, (s, t) in enumerate(zip(srcs, tgts)):
            t = torch.from_numpy(t.astype(np.int64))
            src[r, :len(s)] = torch.from_numpy(s.astype(np.int64))
            tgt_in[r, 0], tgt_in[r, 1:len(t) + 1] = self.bos_id, t
            targets[r, :len(t)], targets[r, len(t)] = t, self.eos_id
        return self.to_device(src, tgt_in, targets)
