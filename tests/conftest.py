"""Shared test setup: the repo root on sys.path, offline tokenizers, the data mirrors, and the helpers
and fixtures that several test files use."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'
sys.path.insert(0, str(ROOT))
os.environ.setdefault('TIKTOKEN_CACHE_DIR', str(SHARED / 'tiktoken_cache'))
os.environ.setdefault('WANDB_MODE', 'offline')
# Tests use tiny models, and some start several processes: one thread each avoids oversubscribing the cores.
os.environ.setdefault('OMP_NUM_THREADS', '1')
torch.set_num_threads(1)
CUDNN_ATTENTION_AT_START = torch.backends.cuda.cudnn_sdp_enabled()


@pytest.fixture(autouse=True)
def cudnn_attention_put_back():
    """speed_up(..., 'cuda') turns cuDNN attention off for the whole process (device.no_attention_plans_per_shape),
    and no CUDA test turns it back on: put it back after each test, so that no test depends on which ran before."""
    yield
    torch.backends.cuda.enable_cudnn_sdp(CUDNN_ATTENTION_AT_START)


# ---------------------------------------------------------------------------
# Data mirrors and optional packages: a test that needs one that is missing is skipped, not an error


def mirror(*parts):
    """The path of a file or folder of the offline data mirrors (../shared/data); skips the test where it is absent."""
    path = SHARED.joinpath('data', *parts)
    if not path.exists():
        pytest.skip(f'offline mirror {path} is absent')
    return path


def needs(package):
    """A skip mark for the tests of a feature that needs an optional package, where it cannot be imported."""
    try:
        importlib.import_module(package)
        missing = False
    except ImportError:
        missing = True
    return pytest.mark.skipif(missing, reason=f'{package} is not installed')


@pytest.fixture(scope='session')
def gpt2_bpe():
    """GPT-2's BPE, from the offline tiktoken cache (or downloaded); skips the tests that need it where neither works."""
    from configurator import UserError
    from tokenizer import TiktokenTokenizer
    try:
        return TiktokenTokenizer('gpt2')
    except UserError as e:
        pytest.skip(str(e))


# ---------------------------------------------------------------------------
# Datasets prepared once per session


@pytest.fixture(scope='session')
def shakespeare_char_dir(tmp_path_factory):
    """tiny Shakespeare prepared at the character level into a temporary folder."""
    from prepare import shakespeare_char
    source = mirror('tinyshakespeare', 'input.txt')
    out = tmp_path_factory.mktemp('shakespeare_char')
    shakespeare_char.prepare(out_dir=str(out), input_path=str(source))
    return out


@pytest.fixture(scope='session')
def shakespeare_bpe_dir(tmp_path_factory, gpt2_bpe):
    """tiny Shakespeare in GPT-2's BPE (prepare/shakespeare.py), for test_prepare and test_metrics."""
    from prepare import shakespeare
    return shakespeare.prepare(out_dir=tmp_path_factory.mktemp('shakespeare'),
                               input_path=mirror('tinyshakespeare', 'input.txt'))


@pytest.fixture(scope='session')
def multi30k_dir(tmp_path_factory):
    """Multi30k prepared with a vocabulary of 500 (prepare/multi30k.py), for test_prepare and test_seq2seq."""
    source = mirror('multi30k')
    pytest.importorskip('tokenizers')
    from prepare import multi30k
    return multi30k.prepare(out_dir=tmp_path_factory.mktemp('multi30k'), input_path=source, vocab_size=500)


# ---------------------------------------------------------------------------
# Models


def widen(model, std=0.3):
    """Redraw a model's matrices from N(0, std), wider than the N(0, 0.02) initialisation, and return it. At that
    initialisation the logits are nearly flat and greedy decoding repeats one token, so a cache or batching
    bug would go unseen; with wide weights the logits differ by whole units and the output varies."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
    return model


def switches(ids):
    """How many times each row of ids (B, T) moves to another token. Greedy output that never moves (one
    token repeated) is the same whatever the context it read, so it could not show a bug in that context."""
    return (ids[:, 1:] != ids[:, :-1]).sum(dim=1)


@pytest.fixture
def nan_loss_at(monkeypatch):
    """nan_loss_at(calls): the training forward passes numbered in `calls` (from 1) return a NaN loss."""
    import itertools

    import model

    def install(calls):
        real_forward, counter = model.GPT.forward, itertools.count(1)

        def forward(self, idx, targets=None, cache=None):
            logits, loss = real_forward(self, idx, targets, cache)
            if self.training and next(counter) in calls:
                loss = loss * float('nan')
            return logits, loss
        monkeypatch.setattr(model.GPT, 'forward', forward)
    return install


# ---------------------------------------------------------------------------
# Several processes


def torchrun(script, args, timeout=180):
    """`script` under torchrun on two CPU processes (Gloo), from the repo root. Returns the finished process."""
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', script, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# float32, no dropout: runs of these settings take the same steps on the same global batches whatever their
# number of ranks, DDP or FSDP (test_train, test_fsdp)
COMMON = dict(gradient_accumulation_steps=2, eval_interval=4, learning_rate=1e-2, warmup_iters=0, eval_iters=2)


@pytest.fixture(scope='session')
def ddp_run(shakespeare_char_dir, tmp_path_factory):
    """(out_dir, stdout) of 4 steps of train.py under DDP on two processes, with COMMON: one torchrun launch
    for the tests that hold one process (test_train) and FSDP (test_fsdp) to it."""
    from test_train import tiny_args
    out_dir = tmp_path_factory.mktemp('ddp_run')
    result = torchrun('train.py', tiny_args(shakespeare_char_dir, out_dir, max_iters=4, **COMMON))
    assert result.returncode == 0, result.stderr[-2000:]
    return out_dir, result.stdout
