"""Issue 4: a run survives being killed, failing writes, signals and NaN losses, and bad
input is a one-line error that leaves existing files alone."""
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import checkpoint
import sample
import train
from checkpoint import load_checkpoint, save_checkpoint
from conftest import ROOT, needs
from test_train import file_bytes, run_script, tiny_args

TEMP_FILE = re.compile(r'^\.ckpt\.pt\.tmp\d+$')  # save_checkpoint's temporary name, ignored by load_checkpoint


@pytest.fixture(scope='module')
def trained_dir(shakespeare_char_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp('trained')
    train.main(tiny_args(shakespeare_char_dir, out_dir, max_iters=4, eval_interval=2))
    return out_dir


@pytest.fixture
def run_dir(trained_dir, tmp_path):
    """A fresh copy of the trained run's folder, for a test to damage."""
    return shutil.copytree(trained_dir, tmp_path / 'run')


# ---------------------------------------------------------------------------
# Killed runs and failing writes


# train.py with every fsync `seconds` longer, as on a slow disk: a checkpoint's temporary file then stays open
# long enough to be seen and killed in the middle of its write
SLOW_DISK = ("import os, runpy, sys, time; fsync = os.fsync; os.fsync = lambda fd: (time.sleep({seconds}), fsync(fd))[1]; "
             "sys.argv = sys.argv[1:]; runpy.run_path('train.py', run_name='__main__')")


def start_training(data_dir, out_dir, log_path, slow_disk=0.0, **overrides):
    """train.py as a subprocess with its output going to log_path, long enough to be stopped."""
    args = tiny_args(data_dir, out_dir, **{'max_iters': 100_000, **overrides})
    script = ['-c', SLOW_DISK.format(seconds=slow_disk), 'train.py'] if slow_disk else ['train.py']
    with open(log_path, 'w') as log:
        return subprocess.Popen([sys.executable, *script, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def stop(process, log_path, message):
    process.kill()
    process.wait()
    pytest.fail(f'{message}:\n{log_path.read_text()[-2000:]}')


def wait_for_line(process, log_path, pattern, timeout=90):
    """Wait until the log has a line matching `pattern`; return the match."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log_path.read_text(), re.MULTILINE)
        if match:
            return match
        assert process.poll() is None, f'training exited early:\n{log_path.read_text()[-2000:]}'
        time.sleep(0.05)
    stop(process, log_path, f'no line matching {pattern!r} within {timeout} s')


def wait_for_temp_file(process, out_dir, log_path, timeout=60):
    """Return as soon as a checkpoint is being written (its temporary file exists)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if any(TEMP_FILE.match(name) for name in os.listdir(out_dir)):
            return
        time.sleep(0.005)
    stop(process, log_path, f'no checkpoint write began within {timeout} s')


def test_sigkill_at_random_moments_never_breaks_the_checkpoint(shakespeare_char_dir, tmp_path, capsys):
    """A checkpoint at every iteration; every other kill lands at a random moment, the rest in the middle
    of a checkpoint write (on a slow disk, where the write is seen and killed before it ends)."""
    out_dir, log_path = tmp_path / 'out', tmp_path / 'log.txt'
    delays = random.Random(0)
    last_iter = 0
    for kill in range(4):
        mid_write = kill % 2 == 1
        resume = dict(init_from='resume') if kill else {}
        process = start_training(shakespeare_char_dir, out_dir, log_path, slow_disk=0.5 if mid_write else 0.0,
                                 eval_interval=1, eval_iters=1, log_interval=100, **resume)
        wait_for_line(process, log_path, '^saving checkpoint')
        if mid_write:
            wait_for_temp_file(process, out_dir, log_path)
        else:
            time.sleep(delays.uniform(0.1, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        saved = load_checkpoint(str(out_dir))
        assert saved['iter_num'] >= last_iter  # a restart resumes: no progress is lost
        last_iter = saved['iter_num']
        leftovers = set(os.listdir(out_dir)) - {'ckpt.pt', 'metrics.jsonl'}
        assert all(TEMP_FILE.match(name) for name in leftovers), leftovers
        assert leftovers or not mid_write  # the unfinished write's file: the kill did land in the middle of it
    status, out, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, out_dir, init_from='resume',
                                                                eval_interval=1, eval_iters=1, max_iters=last_iter + 1))
    assert status == 0, err
    assert f'resuming from {out_dir}/ckpt.pt at iteration {last_iter}' in out
    assert load_checkpoint(str(out_dir))['iter_num'] == last_iter + 1
    assert set(os.listdir(out_dir)) == {'ckpt.pt', 'metrics.jsonl'}  # the killed write's file removed


def test_a_failing_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint({'model': {'w': torch.zeros(1000)}, 'model_args': {}, 'iter_num': 1}, str(tmp_path))
    before = file_bytes(tmp_path)
    real_save = torch.save

    def save_half_then_fail(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)
        raise OSError('No space left on device')

    monkeypatch.setattr(checkpoint.torch, 'save', save_half_then_fail)
    with pytest.raises(OSError, match='No space left'):
        save_checkpoint({'model': {'w': torch.ones(1000)}, 'model_args': {}, 'iter_num': 2}, str(tmp_path))
    assert file_bytes(tmp_path) == before  # the same bytes, and no temporary file beside them


def test_keep_last_keeps_the_latest_earlier_checkpoints(tmp_path):
    for iter_num in range(1, 7):
        save_checkpoint({'model': {}, 'model_args': {}, 'iter_num': iter_num}, str(tmp_path), keep_last=2)
        # the oldest go by modification time; a real run's saves are seconds apart, while
        # these back-to-back ones could share a coarse file-system timestamp
        os.utime(tmp_path / 'ckpt.pt', (iter_num, iter_num))
    assert sorted(os.listdir(tmp_path)) == ['ckpt-4.pt', 'ckpt-5.pt', 'ckpt.pt']
    for name, iter_num in (('ckpt-4.pt', 4), ('ckpt-5.pt', 5), ('ckpt.pt', 6)):
        assert torch.load(tmp_path / name, weights_only=True)['iter_num'] == iter_num


@pytest.mark.parametrize('repeats', [1, 2])
def test_sigterm_saves_where_it_stopped_and_resumes_from_there(shakespeare_char_dir, tmp_path, capsys, repeats):
    """repeats=2: GNU timeout's way, the signal sent to the process and then to its process group."""
    out_dir, log_path = tmp_path / 'out', tmp_path / 'log.txt'
    process = start_training(shakespeare_char_dir, out_dir, log_path, eval_interval=100_000)
    wait_for_line(process, log_path, '^iter 3:')
    for _ in range(repeats):
        process.send_signal(signal.SIGTERM)
        time.sleep(0.01)  # time for the handler to run in between, not for the run to save and exit
    assert process.wait(timeout=60) == 0, log_path.read_text()[-2000:]
    log = log_path.read_text()
    match = re.search(r'^signal received: saving at iteration (\d+) and exiting$', log, re.MULTILINE)
    assert match, log[-2000:]
    stopped = int(match[1])
    assert stopped >= 3
    assert load_checkpoint(str(out_dir))['iter_num'] == stopped
    status, out, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, out_dir, init_from='resume',
                                                                max_iters=stopped + 2, eval_interval=100_000))
    assert status == 0, err
    assert f'resuming from {out_dir}/ckpt.pt at iteration {stopped}' in out
    assert [line.split(':')[0] for line in out.splitlines() if line.startswith('iter ')] == \
        [f'iter {stopped + 1}', f'iter {stopped + 2}']


def test_a_signal_after_the_run_ended_does_not_kill_the_exiting_script(shakespeare_char_dir, tmp_path):
    """GNU timeout signals the process, then its process group: a tiny run can save and leave main()
    before the second SIGTERM lands. The script must still exit 0, not die of the signal."""
    args = tiny_args(shakespeare_char_dir, tmp_path / 'out', max_iters=2)
    code = (f"import os, runpy, signal, sys; sys.argv = ['train.py', *{args!r}]; "
            "runpy.run_path('train.py', run_name='__main__'); "
            "os.kill(os.getpid(), signal.SIGTERM); print('exited cleanly')")
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.rstrip().endswith('exited cleanly')


def test_a_worker_restarted_by_torchrun_resumes_instead_of_starting_over(shakespeare_char_dir, tmp_path, capsys,
                                                                           monkeypatch):
    """torchrun --max-restarts relaunches the same command (init_from=scratch) with
    TORCHELASTIC_RESTART_COUNT > 0: the relaunched run must continue from out_dir's checkpoint."""
    out_dir = tmp_path / 'out'
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, out_dir, max_iters=10))[0] == 0
    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '1')
    status, out, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, out_dir, max_iters=12))
    assert status == 0, err
    assert f'resuming from {out_dir}/ckpt.pt at iteration 10' in out
    assert [line.split(':')[0] for line in out.splitlines() if line.startswith('iter ')] == ['iter 11', 'iter 12']


# ---------------------------------------------------------------------------
# Non-finite losses


def test_a_nan_loss_skips_one_step(shakespeare_char_dir, tmp_path, capsys, nan_loss_at):
    nan_loss_at({3})
    status, out, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, max_iters=6))
    assert status == 0, err
    assert 'iter 3: non-finite gradient norm, step skipped (1 so far)' in out.splitlines()
    assert 'iter 3: loss nan' in out
    saved = load_checkpoint(str(tmp_path))
    assert saved['skipped_steps'] == 1 and saved['iter_num'] == 6
    assert all(torch.isfinite(w).all() for w in saved['model'].values())


def test_nan_at_every_step_stops_and_keeps_the_checkpoint(shakespeare_char_dir, run_dir, capsys, nan_loss_at):
    before = file_bytes(run_dir)['ckpt.pt']
    nan_loss_at(set(range(1, 1000)))
    args = tiny_args(shakespeare_char_dir, run_dir, init_from='resume', max_iters=20, eval_interval=100,
                     max_skipped_steps=3)
    status, out, err = run_script(capsys, train.main, args)
    assert status == 1
    assert err.splitlines() == [f'error: training diverged: 3 non-finite steps in a row at iteration 7; the last '
                                f'checkpoint in {run_dir} is kept. Lower the learning_rate or resume from it']
    assert file_bytes(run_dir)['ckpt.pt'] == before


# ---------------------------------------------------------------------------
# Damaged checkpoints and contradicting settings


def truncate_to_half(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def write_garbage(path):
    path.write_bytes(np.random.default_rng(0).bytes(5000))


def write_plain_tensor(path):
    torch.save(torch.arange(10), path)


@pytest.mark.parametrize('damage, message', [
    (truncate_to_half, 'is not a readable checkpoint'),
    (write_garbage, 'is not a readable checkpoint'),
    (write_plain_tensor, 'is not a checkpoint of this project'),
])
@pytest.mark.parametrize('script', ['sample', 'train'])
def test_a_damaged_checkpoint_is_a_one_line_error(shakespeare_char_dir, run_dir, capsys, damage, message, script):
    damage(run_dir / 'ckpt.pt')
    before = file_bytes(run_dir)
    if script == 'sample':
        status, out, err = run_script(capsys, sample.main, [f'--out_dir={run_dir}', '--device=cpu'])
    else:
        status, out, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, run_dir, init_from='resume'))
    assert status == 1
    assert len(err.splitlines()) == 1 and err.startswith(f'error: {run_dir}/ckpt.pt {message}')
    assert file_bytes(run_dir) == before


def tiny_translation_dataset(folder):
    """A translation dataset of a few sentences, made by prepare/multi30k.py from raw files."""
    from prepare import multi30k
    raw = folder / 'raw'
    raw.mkdir()
    german = ['ein hund läuft im park', 'zwei kinder spielen fußball', 'eine frau liest ein buch'] * 5
    english = ['a dog runs in the park', 'two children play football', 'a woman reads a book'] * 5
    for stem in multi30k.SPLITS.values():
        (raw / f'{stem}.de').write_text('\n'.join(german) + '\n', encoding='utf-8')
        (raw / f'{stem}.en').write_text('\n'.join(english) + '\n', encoding='utf-8')
    return multi30k.prepare(out_dir=folder / 'translation', input_path=raw, vocab_size=60)


@needs('tokenizers')  # to prepare the translation data
def test_resuming_a_gpt_checkpoint_as_seq2seq_is_an_error(run_dir, tmp_path, capsys):
    dataset = tiny_translation_dataset(tmp_path)
    args = tiny_args(dataset, run_dir, init_from='resume', model_type='seq2seq')
    status, _, err = run_script(capsys, train.main, args)
    assert status == 1
    assert err.splitlines() == [f'error: out_dir {run_dir} holds a gpt checkpoint but model_type is seq2seq']


def test_resuming_with_another_architecture_is_an_error(shakespeare_char_dir, run_dir, capsys):
    before = file_bytes(run_dir)
    args = tiny_args(shakespeare_char_dir, run_dir, init_from='resume', n_layer=3)
    status, _, err = run_script(capsys, train.main, args)
    assert status == 1
    assert err.splitlines() == ["error: --n_layer=3 differs from the checkpoint's 2: a resumed run keeps its "
                                "architecture (drop the flag, or use another out_dir)"]
    assert file_bytes(run_dir) == before


# ---------------------------------------------------------------------------
# Bad settings and data


@pytest.fixture
def short_dataset(shakespeare_char_dir, tmp_path):
    """shakespeare_char with a train.bin of only 20 tokens."""
    folder = shutil.copytree(shakespeare_char_dir, tmp_path / 'short')
    np.arange(20, dtype=np.uint16).tofile(folder / 'train.bin')
    return folder


@pytest.mark.parametrize('overrides, message', [
    (dict(device='cuda'), "device 'cuda' is not available on this machine: use --device=cpu (or auto)"),
    (dict(n_embd=30, n_head=4), 'invalid model settings: n_embd (30) must be divisible by n_head (4)'),
    (dict(batch_size=-1), 'batch_size must be positive, got -1'),
    (dict(dataset='no_such_dataset'), 'data/no_such_dataset/train.bin not found: prepare the dataset first'),
    (dict(dataset='{short}'), 'train.bin in {short} has 20 tokens, fewer than block_size + 1 = 33'),
])
def test_bad_settings_are_one_line_errors_that_change_no_file(shakespeare_char_dir, short_dataset, run_dir,
                                                              tmp_path, capsys, monkeypatch, overrides, message):
    if torch.cuda.is_available() and overrides.get('device') == 'cuda':
        pytest.skip('this machine has a GPU')
    monkeypatch.chdir(tmp_path)  # a relative dataset name is looked up under tmp_path/data
    overrides = {key: value.format(short=short_dataset) if isinstance(value, str) else value
                 for key, value in overrides.items()}
    folders = (run_dir, shakespeare_char_dir, short_dataset)
    before = [file_bytes(folder) for folder in folders]
    # overwrite=True: the run_dir's checkpoint may be replaced, but only by a run that starts
    status, out, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, run_dir, overwrite=True,
                                                                **overrides))
    assert status == 1
    assert len(err.splitlines()) == 1 and err.startswith(f'error: {message.format(short=short_dataset)}')
    assert [file_bytes(folder) for folder in folders] == before
