"""train.py on tiny Shakespeare (characters) with a tiny model on the CPU: batches, logs,
checkpoints, exact resumption, gradient accumulation, DDP, wandb, eval_only.

The helpers at the top are shared with test_sample.py and test_robustness.py."""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from checkpoint import load_checkpoint
from configurator import run_cli
from conftest import COMMON, ROOT, torchrun
from data import TokenStream

# Tiny models gain nothing from threads, and on a busy 2-core machine the threads' synchronisation
# makes each step hundreds of times slower: one thread, here and in the scripts the tests start.

ITER_LINE = re.compile(r'^iter (\d+): loss (\d+\.\d{4}), time \d+\.\d{2}ms, [\d,]+ tok/s, mfu -?\d+\.\d{2}%$')
STEP_LINE = re.compile(r'^step (\d+): train loss (\d+\.\d{4}), val loss (\d+\.\d{4})(?:, val bpb \d+\.\d{4})?$')


def tiny_args(data_dir, out_dir, **overrides):
    """train.py flags for a model small enough to train in seconds on a CPU."""
    settings = dict(dataset=str(data_dir), out_dir=str(out_dir), device='cpu', dtype='float32', n_layer=2, n_head=2,
                    n_embd=32, block_size=32, batch_size=4, eval_iters=2, eval_interval=10, log_interval=1,
                    max_iters=10, dropout=0.0)
    settings.update(overrides)
    return [f'--{key}={value}' for key, value in settings.items()]


def run_script(capsys, main, argv):
    """Run a script's main() as its command line does. Returns (exit status, stdout, stderr)."""
    capsys.readouterr()  # drop earlier output
    try:
        run_cli(lambda: main(argv))
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def read_metrics(out_dir):
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def training_losses(out_dir):
    """{iteration: loss} of the training steps recorded in metrics.jsonl (the last record wins)."""
    return {m['iter']: m['loss'] for m in read_metrics(out_dir) if 'loss' in m}


def file_bytes(folder):
    return {name: open(os.path.join(folder, name), 'rb').read() for name in sorted(os.listdir(folder))}


# ---------------------------------------------------------------------------
# Batches


def test_batch_targets_are_inputs_shifted_by_one(shakespeare_char_dir):
    stream = TokenStream(str(shakespeare_char_dir), block_size=32, device='cpu')
    rows = stream.draw('train', 8, torch.Generator().manual_seed(0))
    x, y = stream.batch('train', rows)
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    tokens = np.fromfile(shakespeare_char_dir / 'train.bin', dtype=np.uint16).astype(np.int64)
    for row, start in enumerate(rows.tolist()):
        assert torch.equal(x[row], torch.from_numpy(tokens[start:start + 32]))
        assert torch.equal(y[row], torch.from_numpy(tokens[start + 1:start + 33]))
    assert rows.max() <= len(tokens) - 33  # the last window still has a target for its last token


def test_rows_are_drawn_by_the_seeded_generator(shakespeare_char_dir):
    stream = TokenStream(str(shakespeare_char_dir), block_size=32, device='cpu')
    first = stream.draw('val', 8, torch.Generator().manual_seed(0))
    assert torch.equal(stream.draw('val', 8, torch.Generator().manual_seed(0)), first)
    assert not torch.equal(stream.draw('val', 8, torch.Generator().manual_seed(1)), first)


# ---------------------------------------------------------------------------
# A training run


@pytest.mark.parametrize('schedule', ['cosine', 'linear'])
def test_learning_rate_warms_up_then_decays_to_min_lr(schedule):
    settings = dict(train.DEFAULTS, decay_lr=True, lr_schedule=schedule, learning_rate=1.0, min_lr=0.1,
                    warmup_iters=10, lr_decay_iters=110, max_time=0.0)
    cfg = train.Settings(**settings)
    three_quarters = 0.25 if schedule == 'linear' else 0.5 * (1 + math.cos(0.75 * math.pi))
    assert train.get_lr(cfg, 0, 0.0) == pytest.approx(1 / 11)
    assert train.get_lr(cfg, 10, 0.0) == 1.0
    assert train.get_lr(cfg, 60, 0.0) == pytest.approx(0.55)  # both shapes are halfway at the middle
    assert train.get_lr(cfg, 85, 0.0) == pytest.approx(0.1 + 0.9 * three_quarters)
    assert train.get_lr(cfg, 500, 0.0) == 0.1
    timed = train.Settings(**{**settings, 'max_time': 200.0})  # with a time budget the decay follows the clock
    assert train.get_lr(timed, 60, 150.0) == pytest.approx(0.1 + 0.9 * three_quarters)


def test_short_run_logs_in_nanogpt_format_and_learns(shakespeare_char_dir, tmp_path, capsys):
    args = tiny_args(shakespeare_char_dir, tmp_path, max_iters=30, learning_rate=1e-2, warmup_iters=5,
                     lr_decay_iters=30, eval_interval=15)
    status, out, err = run_script(capsys, train.main, args)
    assert status == 0, err
    lines = out.splitlines()
    iters = [ITER_LINE.match(line) for line in lines if line.startswith('iter ')]
    steps = [STEP_LINE.match(line) for line in lines if line.startswith('step ')]
    assert all(iters) and all(steps)
    assert [int(m[1]) for m in iters] == list(range(1, 31))
    assert [int(m[1]) for m in steps] == [0, 15, 30]
    val_losses = [float(m[3]) for m in steps]
    assert val_losses[0] == pytest.approx(np.log(65), abs=0.2)  # 65 characters, a uniform guess
    assert val_losses[2] < val_losses[0] - 0.5
    assert f'saving checkpoint to {tmp_path}' in lines
    assert load_checkpoint(str(tmp_path))['iter_num'] == 30
    metrics = read_metrics(tmp_path)
    assert [m['iter'] for m in metrics if 'loss' in m] == list(range(1, 31))
    assert [m['val_loss'] for m in metrics if 'val_loss' in m] == pytest.approx(val_losses, abs=1e-4)


def test_resumed_run_continues_exactly(shakespeare_char_dir, tmp_path, capsys):
    straight, split = tmp_path / 'straight', tmp_path / 'split'
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, straight, max_iters=20))[0] == 0
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, split, max_iters=10))[0] == 0
    status, out, err = run_script(capsys, train.main,
                                  tiny_args(shakespeare_char_dir, split, max_iters=20, init_from='resume'))
    assert status == 0, err
    assert f'resuming from {split}/ckpt.pt at iteration 10' in out
    first_iter = next(line for line in out.splitlines() if line.startswith('iter '))
    assert first_iter.startswith('iter 11:')
    expected, resumed = training_losses(straight), training_losses(split)
    assert [resumed[i] for i in range(11, 21)] == [expected[i] for i in range(11, 21)]  # bit-identical


def test_gradient_accumulation_equals_a_larger_batch(shakespeare_char_dir, tmp_path, capsys):
    accumulated, large = tmp_path / 'accumulated', tmp_path / 'large'
    common = dict(max_iters=5, eval_interval=100, learning_rate=1e-2, warmup_iters=0)
    for out_dir, batch, steps in ((accumulated, 4, 2), (large, 8, 1)):
        args = tiny_args(shakespeare_char_dir, out_dir, batch_size=batch, gradient_accumulation_steps=steps, **common)
        assert run_script(capsys, train.main, args)[0] == 0
    expected, actual = training_losses(large), training_losses(accumulated)
    assert sorted(actual) == list(range(1, 6))
    assert [actual[i] for i in range(1, 6)] == pytest.approx([expected[i] for i in range(1, 6)], abs=1e-6)


def test_ddp_on_two_processes_matches_one_process(shakespeare_char_dir, ddp_run, tmp_path, capsys):
    """Gloo on the CPU. gradient_accumulation_steps is the total over all processes, so the
    two runs take the same steps on the same global batches."""
    ddp, out = ddp_run
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, max_iters=4, **COMMON))[0] == 0
    iter_lines = [line for line in out.splitlines() if line.startswith('iter ')]
    assert [line.split(':')[0] for line in iter_lines] == ['iter 1', 'iter 2', 'iter 3', 'iter 4']  # rank 0 only
    expected, actual = training_losses(tmp_path), training_losses(ddp)
    assert sorted(actual) == [1, 2, 3, 4]
    assert [actual[i] for i in range(1, 5)] == pytest.approx([expected[i] for i in range(1, 5)], abs=1e-5)
    assert load_checkpoint(str(ddp))['iter_num'] == 4


def run_torchrun(data_dir, out_dir, **settings):
    result = torchrun('train.py', tiny_args(data_dir, out_dir, **settings))
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_ddp_resumed_run_continues_exactly(shakespeare_char_dir, tmp_path):
    """Under torchrun too, stopping and resuming changes nothing: each rank gets back its RNG state.
    The run stopped at iteration 3 is the straight run's checkpoint of iteration 3 (kept by keep_last),
    in a folder of its own: one launch fewer than running the first half again."""
    straight, split = tmp_path / 'straight', tmp_path / 'split'
    common = dict(gradient_accumulation_steps=2, dropout=0.1, eval_interval=3)
    run_torchrun(shakespeare_char_dir, straight, max_iters=6, keep_last=1, **common)
    split.mkdir()
    shutil.copy(straight / 'ckpt-3.pt', split / 'ckpt.pt')  # without metrics.jsonl: the losses below are the resumed run's
    out = run_torchrun(shakespeare_char_dir, split, max_iters=6, init_from='resume', **common)
    assert 'at iteration 3' in out
    expected, resumed = training_losses(straight), training_losses(split)
    assert sorted(resumed) == [4, 5, 6]
    assert [resumed[i] for i in range(4, 7)] == [expected[i] for i in range(4, 7)]  # bit-identical


def test_wandb_offline_run_is_written(shakespeare_char_dir, tmp_path, capsys, monkeypatch):
    pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_DIR', str(tmp_path))
    monkeypatch.setenv('WANDB_SILENT', 'true')
    args = tiny_args(shakespeare_char_dir, tmp_path / 'out', max_iters=3, wandb_log=True, wandb_run_name='test-run')
    status, _, err = run_script(capsys, train.main, args)
    assert status == 0, err
    runs = list((tmp_path / 'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and any(runs[0].glob('*.wandb'))
    assert load_checkpoint(str(tmp_path / 'out'))['wandb_id'] in runs[0].name  # a resumed run continues it


def test_eval_only_on_a_resumed_checkpoint_leaves_it_unchanged(shakespeare_char_dir, tmp_path, capsys):
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, max_iters=5))[0] == 0
    before = file_bytes(tmp_path)['ckpt.pt']
    status, out, err = run_script(capsys, train.main,
                                  tiny_args(shakespeare_char_dir, tmp_path, init_from='resume', eval_only=True))
    assert status == 0, err
    steps = [STEP_LINE.match(line) for line in out.splitlines() if line.startswith('step ')]
    assert len(steps) == 1 and steps[0] and steps[0][1] == '5'
    assert not any(line.startswith('iter ') for line in out.splitlines())
    assert file_bytes(tmp_path)['ckpt.pt'] == before


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc tuning')
def test_kept_freed_memory_stops_training_steps_from_page_faulting():
    # in a fresh process: the setting is process-wide, and glibc's thresholds adapt to earlier allocations
    code = """
import resource, torch, device
from model import GPT, GPTConfig
torch.set_num_threads(1)
model = GPT(GPTConfig(vocab_size=64, block_size=64, n_layer=2, n_head=2, n_embd=64))
x = torch.randint(0, 64, (64, 64))
def faults_per_step(steps=5):
    model(x, x)[1].backward()  # warm-up
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        model(x, x)[1].backward()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / steps
before = faults_per_step()
assert device.keep_freed_memory()
print(before, faults_per_step())
"""
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    before, after = map(float, result.stdout.split())
    assert after < before / 5, (before, after)  # ~1,000 page faults a step before, ~0-80 after
