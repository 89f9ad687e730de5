"""Issue 14: the GPU and multi-GPU paths of train.py and bench.py, driven on a CPU: float16 resumes,
fused optimizers, MFU per device, DDP evaluation, pre-Volta compile, host syncs per step and the
gradient scaler's own skipped steps. DDP paths run under Gloo, in this process with one rank or
under torchrun with two."""
import itertools
import json
import signal
import socket

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

import checkpoint
import device
import model
import train
from checkpoint import load_checkpoint, save_checkpoint
from configurator import configure
from conftest import torchrun
from test_device import fake_gpu
from test_train import read_metrics, run_script, tiny_args


def make_trainer(data_dir, out_dir, **overrides):
    """A Trainer built as train.main builds it, from tiny_args' flags."""
    config, explicit = configure(train.DEFAULTS, tiny_args(data_dir, out_dir, **overrides), sources=[train.__file__])
    return train.Trainer(train.Settings(**config), explicit)


@pytest.fixture
def one_rank_ddp(monkeypatch):
    """The environment torchrun gives a single process: train.py takes its DDP path (Gloo, one rank)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    for key, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class SyncCounter:
    """Counts Tensor.item() and Tensor.tolist() calls on floating-point tensors: each waits for the
    device (the data's row indices, integer tensors on the host, are left out)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        for name in ('item', 'tolist'):
            real = getattr(torch.Tensor, name)

            def counted(tensor, *args, _real=real, **kwargs):
                if tensor.is_floating_point():
                    self.calls += 1
                return _real(tensor, *args, **kwargs)
            monkeypatch.setattr(torch.Tensor, name, counted)


def syncs_per_call(monkeypatch, counter, method):
    """Wrap Trainer.<method>: returns the list of the syncs each call made."""
    per_call, real = [], getattr(train.Trainer, method)

    def wrapped(self, *args, **kwargs):
        before = counter.calls
        try:
            return real(self, *args, **kwargs)
        finally:
            per_call.append(counter.calls - before)
    monkeypatch.setattr(train.Trainer, method, wrapped)
    return per_call


# ---------------------------------------------------------------------------
# Item 2: resuming in float16, and on another device's fused setting


def test_float16_resumes_from_a_float32_checkpoint(shakespeare_char_dir, tmp_path, capsys):
    """The float32 run saved its disabled scaler as {}: an enabled scaler must start afresh, not crash."""
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, max_iters=3))[0] == 0
    assert load_checkpoint(str(tmp_path))['scaler'] == {}
    status, out, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, init_from='resume',
                                                                dtype='float16', max_iters=5))
    assert status == 0, err
    assert 'resuming from' in out and 'iter 5:' in out
    saved = load_checkpoint(str(tmp_path))
    assert saved['iter_num'] == 5 and saved['scaler']['scale'] > 0  # now the float16 run's scaler


def test_resume_takes_fused_from_this_device_not_the_checkpoint(shakespeare_char_dir, tmp_path, capsys):
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, max_iters=3))[0] == 0
    saved = load_checkpoint(str(tmp_path))
    saved = {**saved, 'model': dict(saved['model'])}
    for state in saved['optimizer']:  # as saved on a device without fused AdamW (MPS)
        for group in state['param_groups']:
            group['fused'] = False
    save_checkpoint(saved, str(tmp_path))
    for dtype in ('float32', 'float16'):  # float16: the scaler hands the fused step its found_inf
        trainer = make_trainer(shakespeare_char_dir, tmp_path, init_from='resume', dtype=dtype)
        adamw = trainer.optimizers[0]
        assert adamw.defaults['fused'] is True  # what configure_optimizers decides on a CPU
        assert all(group['fused'] is True for group in adamw.param_groups)
        trainer.train_step()  # the fused step runs with the restored state


# ---------------------------------------------------------------------------
# Item 3 and 12: MFU per device, bench.py under torchrun


def test_logged_mfu_is_per_device(shakespeare_char_dir, tmp_path):
    trainer = make_trainer(shakespeare_char_dir, tmp_path)
    trainer.world, trainer.peak = 4, 1e12  # as rank 0 of four would see it
    trainer.log_progress(torch.tensor(2.5), 4096, torch.tensor(1.0), 0.5, first=True)
    record = read_metrics(tmp_path)[-1]
    assert record['mfu'] == pytest.approx(trainer.raw_model.estimate_mfu(4096 / 4, 0.5, 1e12))
    assert record['tokens_per_sec'] == 4096 / 0.5  # throughput stays the global batch's


def test_bench_under_torchrun_reports_once_with_mfu_per_device(shakespeare_char_dir):
    args = [f'--dataset={shakespeare_char_dir}', '--device=cpu', '--dtype=float32', '--n_layer=1', '--n_head=2',
            '--n_embd=16', '--block_size=16', '--batch_size=4', '--gradient_accumulation_steps=2',
            '--warmup_steps=1', '--measure_steps=3', '--sample_tokens=0', '--json=True']
    result = torchrun('bench.py', args)
    assert result.returncode == 0, result.stderr[-2000:]
    r = json.loads(result.stdout)  # one JSON object: rank 1 prints nothing
    config, _ = configure(train.DEFAULTS, tiny_args(shakespeare_char_dir, '.', n_layer=1, n_head=2, n_embd=16,
                                                    block_size=16))
    gpt = model.GPT(model.GPTConfig(**checkpoint.architecture(train.Settings(**config), {'vocab_size': 65})))
    assert r['peak_flops'] > 1e6
    assert r['mfu'] == pytest.approx(gpt.flops_per_token() * r['tokens_per_sec'] / 2 / r['peak_flops'])


# ---------------------------------------------------------------------------
# Item 5: DDP evaluation


def test_ddp_does_not_broadcast_the_constant_buffers(shakespeare_char_dir, tmp_path, one_rank_ddp):
    trainer = make_trainer(shakespeare_char_dir, tmp_path, pos_emb='rope')
    assert isinstance(trainer.model, DistributedDataParallel)
    assert trainer.model.broadcast_buffers is False


def test_fewer_eval_batches_than_processes_is_refused(shakespeare_char_dir, tmp_path):
    result = torchrun('train.py', tiny_args(shakespeare_char_dir, tmp_path, eval_iters=1, pos_emb='rope',
                                            gradient_accumulation_steps=2), timeout=120)
    assert result.returncode != 0
    assert 'error: eval_iters (1) must be at least the number of processes (2)' in result.stderr


# ---------------------------------------------------------------------------
# Item 6: torch.compile below Volta


def test_compile_is_turned_off_with_a_reason_below_volta(monkeypatch):
    lines = []
    fake_gpu(monkeypatch, (6, 1), name='Tesla P100-PCIE-16GB')
    assert device.compiles(True, 'cuda', lines.append) is False
    assert lines == ['compile=True turned off: torch.compile needs a GPU of compute capability 7.0 or newer, '
                     'cuda has 6.1']
    assert device.compiles(False, 'cuda', lines.append) is False and len(lines) == 1
    fake_gpu(monkeypatch, (7, 0))
    assert device.compiles(True, 'cuda', lines.append) is True and len(lines) == 1
    assert device.compiles(True, 'cpu', lines.append) is True


# ---------------------------------------------------------------------------
# Item 7: host syncs


def test_training_steps_do_not_wait_for_the_device(shakespeare_char_dir, tmp_path, capsys, monkeypatch):
    """float32 AdamW (fused on a CPU): no step reads a value back; each log line reads one vector."""
    counter = SyncCounter(monkeypatch)
    steps = syncs_per_call(monkeypatch, counter, 'train_step')
    logs = syncs_per_call(monkeypatch, counter, 'log_progress')
    args = tiny_args(shakespeare_char_dir, tmp_path, max_iters=12, log_interval=4, eval_interval=100)
    status, out, err = run_script(capsys, train.main, args)
    assert status == 0, err
    assert steps == [0] * 12 and logs == [1] * 3
    assert [r['iter'] for r in read_metrics(tmp_path) if 'grad_norm' in r] == [4, 8, 12]


def test_ddp_ranks_agree_on_stopping_every_log_interval(shakespeare_char_dir, tmp_path, capsys, monkeypatch,
                                                        one_rank_ddp):
    counter = SyncCounter(monkeypatch)
    steps = syncs_per_call(monkeypatch, counter, 'train_step')
    checks = syncs_per_call(monkeypatch, counter, 'should_stop')
    args = tiny_args(shakespeare_char_dir, tmp_path, max_iters=12, log_interval=4, eval_interval=100)
    status, out, err = run_script(capsys, train.main, args)
    assert status == 0, err
    assert steps == [0] * 12
    assert checks == [1] * 4  # iterations 0, 4, 8, 12: one collective, one read each


def test_ddp_signal_still_saves_at_the_next_check(shakespeare_char_dir, tmp_path, capsys, monkeypatch, one_rank_ddp):
    real_step, calls = train.Trainer.train_step, itertools.count(1)
    monkeypatch.setattr(train, 'stop_signal', None)  # put back after the test

    def step_then_signal(self):
        if next(calls) == 5:
            train.stop_signal = signal.SIGTERM
        return real_step(self)
    monkeypatch.setattr(train.Trainer, 'train_step', step_then_signal)
    args = tiny_args(shakespeare_char_dir, tmp_path, max_iters=100, log_interval=4, eval_interval=1000)
    status, out, err = run_script(capsys, train.main, args)
    assert status == 0, err
    assert 'signal received: saving at iteration 8 and exiting' in out.splitlines()
    assert load_checkpoint(str(tmp_path))['iter_num'] == 8


def test_ddp_time_budget_still_ends_the_run(shakespeare_char_dir, tmp_path, capsys, one_rank_ddp):
    args = tiny_args(shakespeare_char_dir, tmp_path, max_iters=100_000, max_time=1.0, log_interval=3,
                     eval_interval=100_000)
    status, out, err = run_script(capsys, train.main, args)
    assert status == 0, err
    stopped = load_checkpoint(str(tmp_path))['iter_num']
    assert 0 < stopped < 100_000 and stopped % 3 == 0  # at a check


def test_a_nan_step_is_skipped_without_a_sync_and_counted_at_the_log_line(shakespeare_char_dir, tmp_path, capsys,
                                                                           monkeypatch, nan_loss_at):
    nan_loss_at({3})
    counter = SyncCounter(monkeypatch)
    steps = syncs_per_call(monkeypatch, counter, 'train_step')
    args = tiny_args(shakespeare_char_dir, tmp_path, max_iters=8, log_interval=4, eval_interval=100)
    status, out, err = run_script(capsys, train.main, args)
    assert status == 0, err
    assert steps == [0] * 8
    assert 'iter 4: non-finite gradient norm, step skipped (1 so far)' in out.splitlines()
    saved = load_checkpoint(str(tmp_path))
    assert saved['skipped_steps'] == 1 and saved['iter_num'] == 8
    assert all(torch.isfinite(w).all() for w in saved['model'].values())
    steps = [s['step'] for state in saved['optimizer'] for s in state['state'].values()]
    assert steps and all(step == 7 for step in steps)  # AdamW counted the 7 steps it took


def test_muon_still_skips_a_nan_step(shakespeare_char_dir, tmp_path, capsys, nan_loss_at):
    nan_loss_at({2})
    args = tiny_args(shakespeare_char_dir, tmp_path, max_iters=4, optimizer='muon', eval_interval=100)
    status, out, err = run_script(capsys, train.main, args)
    assert status == 0, err
    assert 'iter 2: non-finite gradient norm, step skipped (1 so far)' in out.splitlines()
    assert all(torch.isfinite(w).all() for w in load_checkpoint(str(tmp_path))['model'].values())


# ---------------------------------------------------------------------------
# Item 8: the gradient scaler's own skipped steps


def test_float16_overflow_steps_are_the_scalers_not_skipped_steps(shakespeare_char_dir, tmp_path, capsys,
                                                                   monkeypatch):
    real_backward, calls = train.Trainer.backward, itertools.count(1)

    def backward_with_overflow(self, loss):
        real_backward(self, loss)
        if next(calls) in (3, 4):  # as an overflowing float16 gradient would be
            next(self.raw_model.parameters()).grad.view(-1)[0] = float('inf')
    monkeypatch.setattr(train.Trainer, 'backward', backward_with_overflow)
    args = tiny_args(shakespeare_char_dir, tmp_path, dtype='float16', max_iters=6, max_skipped_steps=2)
    status, out, err = run_script(capsys, train.main, args)
    assert status == 0, err
    assert 'non-finite' not in out
    saved = load_checkpoint(str(tmp_path))
    assert saved['skipped_steps'] == 0
    assert saved['scaler']['scale'] <= 2.0 ** 14  # the scaler backed off twice, by itself
    assert all(torch.isfinite(w).all() for w in saved['model'].values())


def test_float16_nan_loss_is_still_a_skipped_step(shakespeare_char_dir, tmp_path, capsys, nan_loss_at):
    nan_loss_at({3})
    args = tiny_args(shakespeare_char_dir, tmp_path, dtype='float16', max_iters=5)
    status, out, err = run_script(capsys, train.main, args)
    assert status == 0, err
    assert 'iter 3: non-finite gradient norm, step skipped (1 so far)' in out.splitlines()
    assert load_checkpoint(str(tmp_path))['skipped_steps'] == 1
