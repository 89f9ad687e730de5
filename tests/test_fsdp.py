"""fsdp=True (FSDP2 over Gloo on the CPU) and its sharded DCP checkpoints: the same losses as one
process and as DDP, resumption on the same and on a different number of ranks, a torn checkpoint
write, sample.py and export.py reading the sharded checkpoint, parameters halved over 2 ranks."""
import os
import re
import shutil
import subprocess
import sys

import pytest

import export
import sample
import train
from checkpoint import load_checkpoint
from conftest import ROOT
from test_train import read_metrics, run_script, tiny_args, training_losses

# float32, no dropout: every run takes the same steps on the same global batches
COMMON = dict(gradient_accumulation_steps=2, eval_interval=4, learning_rate=1e-2, warmup_iters=0, eval_iters=2)


def torchrun(data_dir, out_dir, **settings):
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py',
               *tiny_args(data_dir, out_dir, **{**COMMON, **settings})]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def one_process(capsys, data_dir, out_dir, **settings):
    status, out, err = run_script(capsys, train.main, tiny_args(data_dir, out_dir, **{**COMMON, **settings}))
    assert status == 0, err
    return out


def losses(out_dir, first, last):
    recorded = training_losses(out_dir)
    return [recorded[i] for i in range(first, last + 1)]


def parameter_bytes(out):
    return int(re.search(r'rank 0 holds ([\d,]+) bytes of parameters', out)[1].replace(',', ''))


def test_fsdp_matches_one_process_and_ddp_and_resumes_on_other_rank_counts(shakespeare_char_dir, tmp_path, capsys):
    straight, fsdp2, ddp2, fsdp1 = (tmp_path / name for name in ('straight', 'fsdp2', 'ddp2', 'fsdp1'))
    out = one_process(capsys, shakespeare_char_dir, straight, max_iters=8, fsdp=True)
    bytes_one = parameter_bytes(out)
    out = torchrun(shakespeare_char_dir, fsdp2, max_iters=4, fsdp=True)
    assert parameter_bytes(out) == pytest.approx(bytes_one / 2, rel=0.01)  # each rank holds half
    assert os.path.isdir(fsdp2 / 'ckpt.dcp') and not os.path.exists(fsdp2 / 'ckpt.pt')
    torchrun(shakespeare_char_dir, ddp2, max_iters=4)
    expected = losses(straight, 1, 4)
    assert losses(fsdp2, 1, 4) == pytest.approx(expected, rel=1e-5)
    assert losses(ddp2, 1, 4) == pytest.approx(expected, rel=1e-5)
    # a 2-rank checkpoint resumed on 1 rank, a 1-rank one on 2: the same next losses
    out = one_process(capsys, shakespeare_char_dir, fsdp2, max_iters=8, fsdp=True, init_from='resume')
    assert f'resuming from {fsdp2}/ckpt.dcp at iteration 4' in out
    one_process(capsys, shakespeare_char_dir, fsdp1, max_iters=4, fsdp=True)
    torchrun(shakespeare_char_dir, fsdp1, max_iters=8, fsdp=True, init_from='resume')
    assert losses(fsdp2, 5, 8) == pytest.approx(losses(straight, 5, 8), rel=1e-5)
    assert losses(fsdp1, 5, 8) == pytest.approx(losses(straight, 5, 8), rel=1e-5)
    # the same number of ranks: bit-identical
    shutil.rmtree(fsdp1)
    one_process(capsys, shakespeare_char_dir, fsdp1, max_iters=4, fsdp=True)
    one_process(capsys, shakespeare_char_dir, fsdp1, max_iters=8, fsdp=True, init_from='resume')
    assert losses(fsdp1, 5, 8) == losses(straight, 5, 8)
    # a plain run resumes from the sharded checkpoint too (read whole on one process)
    shutil.rmtree(fsdp1)
    one_process(capsys, shakespeare_char_dir, fsdp1, max_iters=4, fsdp=True)
    one_process(capsys, shakespeare_char_dir, fsdp1, max_iters=8, init_from='resume')
    assert losses(fsdp1, 5, 8) == pytest.approx(losses(straight, 5, 8), rel=1e-5)


def test_torn_checkpoint_write_leaves_the_last_complete_one(shakespeare_char_dir, tmp_path, capsys):
    """A kill while the shards are written: the new directory lacks its metadata (written last) and the
    ckpt.dcp link still points at the previous checkpoint, which the next run resumes from."""
    one_process(capsys, shakespeare_char_dir, tmp_path, max_iters=4, fsdp=True)
    complete = os.path.realpath(tmp_path / 'ckpt.dcp')
    torn = tmp_path / '.ckpt-dcp-8'
    shutil.copytree(complete, torn)
    os.remove(torn / '.metadata')
    assert load_checkpoint(str(tmp_path))['iter_num'] == 4
    out = one_process(capsys, shakespeare_char_dir, tmp_path, max_iters=8, fsdp=True, init_from='resume')
    assert 'at iteration 4' in out
    assert load_checkpoint(str(tmp_path), weights=False)['iter_num'] == 8
    assert sorted(os.listdir(tmp_path)) == ['.ckpt-dcp-8', 'ckpt.dcp', 'metrics.jsonl']  # the torn one replaced


def test_sample_and_export_read_a_sharded_checkpoint(shakespeare_char_dir, tmp_path, capsys):
    one_process(capsys, shakespeare_char_dir, tmp_path, max_iters=4, fsdp=True)
    status, out, err = run_script(capsys, sample.main, [f'--out_dir={tmp_path}', '--device=cpu', '--num_samples=1',
                                                        '--max_new_tokens=10', '--temperature=0.0'])
    assert status == 0, err
    assert out.strip()
    pytest.importorskip('safetensors')
    status, out, err = run_script(capsys, export.main, [f'--out_dir={tmp_path}', f'--to={tmp_path / "hf"}'])
    assert status == 0, err
    assert (tmp_path / 'hf' / 'model.safetensors').exists()


def test_init_from_a_sharded_run_starts_from_its_weights(shakespeare_char_dir, tmp_path, capsys):
    """init_from=<an FSDP run's out_dir> reads its ckpt.dcp on one process: the fine-tune's first
    evaluation is the source's last (the same weights, the same evaluation batches)."""
    source, tuned = tmp_path / 'source', tmp_path / 'tuned'
    one_process(capsys, shakespeare_char_dir, source, max_iters=4, fsdp=True)
    assert os.path.islink(source / 'ckpt.dcp') and not (source / 'ckpt.pt').exists()
    one_process(capsys, shakespeare_char_dir, tuned, max_iters=2, eval_interval=2, init_from=str(source))
    last = [m for m in read_metrics(source) if 'val_loss' in m][-1]
    first = [m for m in read_metrics(tuned) if 'val_loss' in m][0]
    assert first['iter'] == 0 and first['val_loss'] == pytest.approx(last['val_loss'], rel=1e-6)


def test_muon_is_refused_with_fsdp(shakespeare_char_dir, tmp_path, capsys):
    status, _, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, fsdp=True,
                                                              optimizer='muon'))
    assert status != 0 and "optimizer='muon' does not work with fsdp=True" in err
