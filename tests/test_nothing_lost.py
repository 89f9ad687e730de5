"""Issue 40: no checkpoint lost, no finished model replaced unasked, a run that cannot save told so before
it starts, and the decisions of a distributed run taken by every rank alike."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed.checkpoint
import torch.multiprocessing as mp

import data
import export
import sample
import train
from checkpoint import load_checkpoint
from conftest import ROOT
from test_train import file_bytes, run_script, tiny_args, training_losses

FSDP = dict(fsdp=True, always_save_checkpoint=True, eval_interval=4, eval_iters=2)


def one_line_error(capsys, main, argv):
    status, out, err = run_script(capsys, main, argv)
    assert status == 1 and len(err.splitlines()) == 1 and err.startswith('error: '), err
    return err, out


def greedy_text(capsys, out_dir):
    status, out, err = run_script(capsys, sample.main, [f'--out_dir={out_dir}', '--device=cpu', '--num_samples=1',
                                                        '--max_new_tokens=8', '--temperature=0', '--stop=none'])
    assert status == 0, err
    return out


# ---------------------------------------------------------------------------
# 1. A sharded checkpoint saved again at its own iteration, with a relative out_dir


def test_a_sharded_checkpoint_saved_again_at_its_iteration_survives_a_kill_during_that_save(
        shakespeare_char_dir, tmp_path, capsys, monkeypatch):
    """A resumed FSDP run evaluates and saves at the iteration it resumed from. That save must not touch
    the live checkpoint, which a relative out_dir once made it delete: killed then, nothing was left."""
    monkeypatch.chdir(tmp_path)
    run_script(capsys, train.main, tiny_args(shakespeare_char_dir, 'o', max_iters=4, **FSDP))
    text = greedy_text(capsys, 'o')

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies in the middle of writing the shards
    monkeypatch.setattr(torch.distributed.checkpoint, 'save', killed)
    with pytest.raises(KeyboardInterrupt):
        train.main(tiny_args(shakespeare_char_dir, 'o', max_iters=8, init_from='resume', **FSDP))
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert load_checkpoint('o', weights=False)['iter_num'] == 4
    assert greedy_text(capsys, 'o') == text  # sample.py reads the same model
    status, out, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, 'o', max_iters=8,
                                                                init_from='resume', **FSDP))
    assert status == 0 and 'resuming from o/ckpt.dcp at iteration 4' in out, err
    assert load_checkpoint('o', weights=False)['iter_num'] == 8


def child_pids(pid):
    with open(f'/proc/{pid}/task/{pid}/children') as f:
        return [int(p) for p in f.read().split()]


def test_two_fsdp_ranks_killed_at_random_moments_of_their_saves_always_leave_a_checkpoint(
        shakespeare_char_dir, tmp_path, capsys, monkeypatch):
    """torchrun with 2 ranks, a relative out_dir and a save at every step: SIGKILL one rank, then every
    process, at random moments. Each time the checkpoint loads and sample.py reads it; a resume finishes."""
    monkeypatch.chdir(tmp_path)
    args = tiny_args(shakespeare_char_dir, 'o', max_iters=10_000, gradient_accumulation_steps=2,
                     **{**FSDP, 'eval_interval': 1})
    moments = random.Random(0)
    for victims in ('one rank', 'every process'):
        start = os.readlink('o/ckpt.dcp') if os.path.lexists('o/ckpt.dcp') else None
        command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                   str(ROOT / 'train.py'), *args, *(['--init_from=resume'] if start else [])]
        with open('log.txt', 'w') as log:
            runner = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not os.path.lexists('o/ckpt.dcp') or os.readlink('o/ckpt.dcp') == start:  # until it has saved
            assert runner.poll() is None and time.monotonic() < deadline, open('log.txt').read()[-3000:]
            time.sleep(0.02)
        time.sleep(moments.uniform(0.0, 1.0))  # somewhere in the saves, one per step
        workers = child_pids(runner.pid)  # torchrun starts each in a session of its own
        for pid in workers[-1:] if victims == 'one rank' else [runner.pid, *workers]:
            os.kill(pid, signal.SIGKILL)
        runner.wait(timeout=60)
        for pid in workers:  # gone (the survivor stopped by torchrun), so that nothing writes any more
            while os.path.exists(f'/proc/{pid}') and open(f'/proc/{pid}/stat').read().split()[2] != 'Z':
                time.sleep(0.01)
        saved = load_checkpoint('o', weights=False)['iter_num']
        assert saved > 0
        assert greedy_text(capsys, 'o').strip()
    status, out, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, 'o', init_from='resume',
                                                                max_iters=saved + 2, **FSDP))
    assert status == 0 and f'at iteration {saved}' in out, err
    assert max(training_losses('o')) == saved + 2


# ---------------------------------------------------------------------------
# 2. A finished model is not replaced without the user saying so


def test_a_new_run_refuses_to_replace_another_runs_checkpoint_unless_told(shakespeare_char_dir, tmp_path, capsys):
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, max_iters=4))[0] == 0
    before = file_bytes(tmp_path)
    for start in ('scratch', str(tmp_path)):  # a new model, or this run's weights fine-tuned into its own folder
        err, out = one_line_error(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, init_from=start))
        assert f'out_dir {tmp_path} already holds a gpt model at iteration 4' in err
        assert '--init_from=resume' in err and '--out_dir' in err and '--overwrite=True' in err
        assert 'iter ' not in out  # refused before the first step
        assert file_bytes(tmp_path) == before
    # evaluating writes no checkpoint, so it needs no permission; --overwrite=True replaces the run
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, eval_only=True))[0] == 0
    assert load_checkpoint(str(tmp_path))['iter_num'] == 4
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, max_iters=2, eval_interval=2,
                                                    overwrite=True))[0] == 0
    assert load_checkpoint(str(tmp_path))['iter_num'] == 2


def test_overwrite_removes_the_old_runs_sharded_and_kept_checkpoints(shakespeare_char_dir, tmp_path, capsys):
    run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, max_iters=8, **FSDP, keep_last=1))
    assert sorted(os.listdir(tmp_path)) == ['.ckpt-dcp-4', '.ckpt-dcp-8', 'ckpt.dcp', 'metrics.jsonl']
    status, out, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, max_iters=2,
                                                                eval_interval=2, overwrite=True))
    assert status == 0, err
    assert sorted(os.listdir(tmp_path)) == ['ckpt.pt', 'metrics.jsonl']


# ---------------------------------------------------------------------------
# 3 and 9. A folder that cannot take the checkpoint is a one-line error before any work


@pytest.fixture
def unusable_folders(tmp_path):
    """{what: path} of places where no checkpoint can be written."""
    (tmp_path / 'a_file').write_text('not a folder')
    os.symlink('loop', tmp_path / 'loop')
    (tmp_path / 'holds_a_folder' / 'ckpt.pt').mkdir(parents=True)
    return {'is a file, not a folder': tmp_path / 'a_file',
            'leads nowhere (a loop or a missing target)': tmp_path / 'loop',
            'cannot hold files': tmp_path / 'a_file' / 'below',
            'is a folder, where the checkpoint file goes': tmp_path / 'holds_a_folder'}


def test_an_out_dir_that_cannot_hold_checkpoints_is_refused_before_training(shakespeare_char_dir, unusable_folders,
                                                                            capsys):
    for message, folder in unusable_folders.items():
        err, out = one_line_error(capsys, train.main, tiny_args(shakespeare_char_dir, folder))
        assert message in err and 'iter ' not in out and 'step ' not in out


def test_export_to_a_place_that_cannot_hold_files_is_a_one_line_error(shakespeare_char_dir, tmp_path,
                                                                      unusable_folders, capsys):
    pytest.importorskip('transformers')
    run = tmp_path / 'run'
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, run, max_iters=2, eval_interval=2))[0] == 0
    for message, folder in list(unusable_folders.items())[:3]:
        err, _ = one_line_error(capsys, export.main, [f'--out_dir={run}', f'--to={folder}'])
        assert err.startswith(f'error: --to={folder}') and message in err


# ---------------------------------------------------------------------------
# 8. A corrupt sharded checkpoint is the one-line error a corrupt ckpt.pt gets


@pytest.mark.parametrize('damage', ['truncated shard', 'no .metadata'])
def test_a_corrupt_sharded_checkpoint_is_a_one_line_error(shakespeare_char_dir, tmp_path, capsys, damage):
    run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, max_iters=4, **FSDP))
    live = os.path.realpath(tmp_path / 'ckpt.dcp')
    if damage == 'no .metadata':
        os.remove(os.path.join(live, '.metadata'))
    else:
        shard = next(os.path.join(live, name) for name in os.listdir(live) if name.endswith('.distcp'))
        os.truncate(shard, os.path.getsize(shard) // 2)
    err, _ = one_line_error(capsys, sample.main, [f'--out_dir={tmp_path}', '--device=cpu'])
    assert err.startswith(f'error: {tmp_path}/ckpt.dcp is not a readable checkpoint (')
    for fsdp in (True, False):  # loaded sharded, or whole on one process
        err, _ = one_line_error(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, init_from='resume',
                                                              max_iters=8, **{**FSDP, 'fsdp': fsdp}))
        assert err.startswith(f'error: {tmp_path}/') and 'is not a readable checkpoint (' in err
        assert 'restore it or delete it' in err


# ---------------------------------------------------------------------------
# 14. Data prepared on first use: one decision for every rank, whatever each rank's filesystem shows


def prepare_on_two_nodes(rank, folders, port, results):
    """A rank of a 2-rank group whose ranks stand for two nodes that share no data/ folder."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.distributed.init_process_group('gloo', rank=rank, world_size=2)
    os.chdir(folders[rank])
    prepared = []
    data.AUTO_PREPARED['tiny'] = ('tiny', {}, ())
    data.prepare_dataset = lambda dataset: (prepared.append(data.data_folder(dataset)),
                                            os.makedirs(data.data_folder(dataset)), open('data/tiny/train.bin', 'w'))
    data.prepare_if_missing('tiny', 'gpt', rank=rank, local_rank=0)
    total = torch.tensor([rank + 1.0])
    torch.distributed.all_reduce(total)  # the ranks still pair their collectives
    results[rank] = (prepared, os.path.exists('data/tiny/train.bin'), total.item())
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize('prepared_before', [(False, True), (True, False)])
def test_each_node_prepares_its_missing_data_and_the_ranks_stay_in_step(tmp_path, prepared_before):
    folders = [tmp_path / 'node0', tmp_path / 'node1']
    for folder, prepared in zip(folders, prepared_before):
        (folder / 'data' / 'tiny').mkdir(parents=True) if prepared else folder.mkdir()
        if prepared:
            (folder / 'data' / 'tiny' / 'train.bin').write_text('')
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.start_processes(prepare_on_two_nodes, args=(folders, port, results), nprocs=2, start_method='fork')
    assert [results[rank][1:] for rank in (0, 1)] == [(True, 3.0), (True, 3.0)]
    assert [results[rank][0] for rank in (0, 1)] == [[] if before else ['data/tiny'] for before in prepared_before]
