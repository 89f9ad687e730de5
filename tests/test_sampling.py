"""sampling='epoch' (every window once per epoch, whatever the number of ranks; exact resumption
mid-epoch) and align_documents=True (rows begin at document starts, documents packed to fill them)."""
import pickle
import shutil

import numpy as np
import pytest
import torch

import train
from conftest import torchrun
from data import EpochSampler, TokenStream, document_starts, eot_id, pack_documents
from test_gpu_paths import make_trainer
from test_train import run_script, tiny_args, training_losses


@pytest.fixture(scope='module')
def small_char_dir(shakespeare_char_dir, tmp_path_factory):
    """tiny Shakespeare cut to 60 windows of 33 characters: an epoch of 15 iterations at 4 rows."""
    out = tmp_path_factory.mktemp('small_char')
    shutil.copy(shakespeare_char_dir / 'meta.pkl', out)
    shutil.copy(shakespeare_char_dir / 'val.bin', out)
    np.fromfile(shakespeare_char_dir / 'train.bin', dtype=np.uint16)[:60 * 33 + 5].tofile(out / 'train.bin')
    return out


def rows_by_rank(trainer, world, steps):
    """The row offsets that each of `world` ranks trains on in each of `steps` steps, as Trainer.micro_batches
    takes them from the global batch: [step][rank] -> its rows. Each rank draws from a sampler of its own,
    seeded alike, as each process of a run does."""
    trainer.data.batch = lambda split, rows: rows  # hand back the rows themselves instead of their tokens
    taken = [[] for _ in range(steps)]
    for rank in range(world):
        trainer.rank, trainer.world = rank, world
        trainer.accum = trainer.cfg.gradient_accumulation_steps // world
        trainer.sampler = EpochSampler(trainer.data.num_rows('train'), trainer.cfg.seed)
        for step in taken:
            micro_batches, _ = trainer.micro_batches()
            step.append(torch.cat([rows for _, rows, _ in micro_batches]))
    return taken


@pytest.fixture
def epoch_trainer(small_char_dir, tmp_path):
    """A Trainer of sampling='epoch' over small_char_dir's 60 rows, 8 rows a step in 4 micro-batches."""
    return make_trainer(small_char_dir, tmp_path, sampling='epoch', batch_size=2, gradient_accumulation_steps=4)


def test_epoch_sampling_visits_every_window_once_per_epoch(epoch_trainer):
    n = epoch_trainer.data.num_rows('train')
    assert n == 60
    seen = torch.cat([ranks[0] for ranks in rows_by_rank(epoch_trainer, 1, steps=16)])  # two epochs and a bit
    every_window = torch.arange(n) * 33  # block_size + 1 tokens apart
    first, second = seen[:n], seen[n:2 * n]
    assert torch.equal(first.sort().values, every_window)  # each non-overlapping window exactly once
    assert torch.equal(second.sort().values, every_window)
    assert not torch.equal(first, second)  # each epoch has its own order
    assert epoch_trainer.sampler.epoch == 2


@pytest.mark.parametrize('world', [2, 4])
def test_the_ranks_train_on_the_rows_of_one_process_whatever_their_number(epoch_trainer, world):
    """Each rank takes its own share of the global batch: together, in each step, one process's rows."""
    one_process = rows_by_rank(epoch_trainer, 1, steps=16)
    for alone, ranks in zip(one_process, rows_by_rank(epoch_trainer, world, steps=16)):
        assert [len(rows) for rows in ranks] == [8 // world] * world
        assert torch.equal(torch.cat(ranks).sort().values, alone[0].sort().values)


def test_epoch_sampler_resumes_from_its_state():
    straight = EpochSampler(10, seed=3)
    expected = torch.cat([straight.draw(4) for _ in range(6)])
    first = EpochSampler(10, seed=3)
    part = [first.draw(4) for _ in range(3)]  # stopped in the middle of epoch 1
    resumed = EpochSampler(10, seed=0)
    resumed.set_state(first.get_state())
    assert first.get_state() == {'epoch': 1, 'offset': 2, 'rows': 10, 'seed': 3}
    assert torch.equal(torch.cat(part + [resumed.draw(4) for _ in range(3)]), expected)
    with pytest.raises(ValueError):
        EpochSampler(11, seed=3).set_state(first.get_state())


def test_epoch_run_stopped_mid_epoch_resumes_exactly(small_char_dir, tmp_path, capsys):
    straight, split = tmp_path / 'straight', tmp_path / 'split'
    common = dict(sampling='epoch', dropout=0.1)
    status, out, err = run_script(capsys, train.main, tiny_args(small_char_dir, straight, max_iters=20, **common))
    assert status == 0, err
    assert 'epoch sampling: 60 rows an epoch, 15.0 iterations' in out
    assert 'epoch 1 begins in iteration 16' in out
    assert run_script(capsys, train.main, tiny_args(small_char_dir, split, max_iters=7, **common))[0] == 0
    status, out, err = run_script(capsys, train.main,
                                  tiny_args(small_char_dir, split, max_iters=20, init_from='resume', **common))
    assert status == 0, err
    assert 'epoch 1 begins in iteration 16' in out
    expected, resumed = training_losses(straight), training_losses(split)
    assert [resumed[i] for i in range(8, 21)] == [expected[i] for i in range(8, 21)]  # bit-identical


def test_epoch_sampling_on_two_processes_matches_one(small_char_dir, tmp_path, capsys):
    single, ddp = tmp_path / 'single', tmp_path / 'ddp'
    common = dict(sampling='epoch', max_iters=10, eval_interval=100, gradient_accumulation_steps=2, batch_size=4,
                  learning_rate=1e-2, warmup_iters=0)  # 8 rows a step: epoch 1 begins in step 8
    assert run_script(capsys, train.main, tiny_args(small_char_dir, single, **common))[0] == 0
    result = torchrun('train.py', tiny_args(small_char_dir, ddp, **common))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count('epoch 1 begins in iteration 8') == 1  # rank 0 only
    expected, actual = training_losses(single), training_losses(ddp)
    assert [actual[i] for i in range(1, 11)] == pytest.approx([expected[i] for i in range(1, 11)], abs=1e-5)


# ---------------------------------------------------------------------------
# Document-aligned rows


def write_documents(folder, lengths, eot=0, vocab=64, seed=0):
    """A token corpus of documents of the given lengths (eot included), ids 1..vocab-1 inside them."""
    rng = np.random.default_rng(seed)
    docs = [np.append(rng.integers(1, vocab, size=n - 1), eot) for n in lengths]
    tokens = np.concatenate(docs).astype(np.uint16)
    folder.mkdir(exist_ok=True)
    for split in ('train', 'val'):
        tokens.tofile(folder / f'{split}.bin')
    with open(folder / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': vocab, 'eot_id': eot, 'dtype': 'uint16'}, f)
    return tokens


@pytest.mark.parametrize('buffer', [1, 1000])  # greedy, best-fit
def test_packed_rows_fill_up_with_whole_documents(buffer):
    lengths = np.random.default_rng(1).integers(1, 90, size=500)
    docs, takes, ptr = pack_documents(lengths, 64, buffer=buffer)
    assert np.all(np.add.reduceat(takes, ptr[:-1]) == 64)  # every row full
    assert len(set(docs.tolist())) == len(docs)  # a document goes to one row at most
    cut = takes < lengths[docs]
    # a cut document is the last of its row (its tail is dropped)
    last_in_row = np.zeros(len(docs), dtype=bool)
    last_in_row[ptr[1:] - 1] = True
    assert not np.any(cut & ~last_in_row)


def test_packing_whole_documents_keeps_each_once_and_ends_a_row_only_when_none_fits():
    lengths = np.random.default_rng(3).integers(1, 40, size=300)
    docs, takes, ptr = pack_documents(lengths, 64, buffer=len(lengths), cut=False)
    assert sorted(docs.tolist()) == list(range(300)) and np.array_equal(takes, lengths[docs])  # all, whole
    filled = np.add.reduceat(takes, ptr[:-1])
    assert filled.max() <= 64
    shortest_left = [lengths[docs[ptr[i + 1]:]].min() for i in range(len(ptr) - 2)]
    assert all(64 - f < s for f, s in zip(filled, shortest_left))  # a row ends when no document left fits
    assert len(ptr) - 1 <= np.ceil(lengths.sum() / 64) + 1


def test_aligned_rows_all_begin_at_a_document_start(tmp_path):
    tokens = write_documents(tmp_path / 'docs', np.random.default_rng(2).integers(2, 120, size=400))
    stream = TokenStream(str(tmp_path / 'docs'), block_size=48, device='cpu', align_documents=True)
    starts = set(document_starts(tokens, 0).tolist())
    assert starts == {0} | set((np.flatnonzero(tokens == 0) + 1).tolist()) - {len(tokens)}
    n = stream.num_rows('train')
    assert n > 100
    x, y = stream.batch('train', torch.arange(n))
    assert x.shape == y.shape == (n, 48) and torch.equal(x[:, 1:], y[:, :-1])
    first_starts = stream.packs['train'][0][stream.packs['train'][2][:-1]]
    assert set(first_starts.tolist()) <= starts  # the first token of every row opens a document
    assert torch.equal(x[:, 0], torch.from_numpy(tokens[first_starts].astype(np.int64)))
    # within a row, every token after an eot opens a document: packs hold whole documents in turn
    for segment_start in stream.packs['train'][0]:
        assert int(segment_start) in starts
    # both samplers draw pack numbers
    assert stream.draw('train', 5, torch.Generator().manual_seed(0)).max() < n
    assert torch.equal(stream.draw('train', n, EpochSampler(n, 0)).sort().values, torch.arange(n))


def test_align_documents_needs_a_separator(shakespeare_char_dir, gpt2_bpe, tmp_path, capsys):
    assert eot_id(None) == 50256  # no meta.pkl: GPT-2 BPE, as nanoGPT's openwebtext
    from prepare import tokenizer_meta
    assert eot_id(tokenizer_meta(gpt2_bpe)) == 50256
    status, _, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, align_documents=True))
    assert status != 0 and 'end-of-text' in err
