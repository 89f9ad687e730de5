"""fsdp=True (FSDP2 over Gloo on the CPU) and its sharded DCP checkpoints: the same losses as one
process and as DDP, resumption on the same and on a different number of ranks, a torn checkpoint
write, sample.py and export.py reading the sharded checkpoint, parameters halved over 2 ranks.

Three runs are shared by the tests of this file (and DDP's with test_train, conftest.ddp_run): 8 steps on
one process, the reference for every other run; 4 steps on one process and 4 on two, whose checkpoints
the tests resume in copies of their folders."""
import contextlib
import io
import os
import re
import shutil

import pytest
import torch

import conftest
import export
import sample
import train
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import COMMON
from test_train import read_metrics, run_script, tiny_args, training_losses


def torchrun(data_dir, out_dir, **settings):
    result = conftest.torchrun('train.py', tiny_args(data_dir, out_dir, **{**COMMON, **settings}))
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


def trained_here(data_dir, out_dir, **settings):
    """(out_dir, what train.py printed) of a run in this process, for the module's shared runs."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train.main(tiny_args(data_dir, out_dir, **{**COMMON, **settings}))
    return out_dir, printed.getvalue()


@pytest.fixture(scope='module')
def straight(shakespeare_char_dir, tmp_path_factory):
    """8 steps of FSDP on one process, never stopped: the losses every other run must give."""
    return trained_here(shakespeare_char_dir, tmp_path_factory.mktemp('straight'), max_iters=8, fsdp=True)


@pytest.fixture(scope='module')
def one_rank_at_4(shakespeare_char_dir, tmp_path_factory):
    """Its first 4 steps, run apart: a sharded checkpoint written by one rank."""
    return trained_here(shakespeare_char_dir, tmp_path_factory.mktemp('one_rank'), max_iters=4, fsdp=True)[0]


@pytest.fixture(scope='module')
def two_ranks_at_4(shakespeare_char_dir, tmp_path_factory):
    """(out_dir, stdout) of 4 steps of FSDP on two processes: a sharded checkpoint written by two ranks."""
    out_dir = tmp_path_factory.mktemp('two_ranks')
    return out_dir, torchrun(shakespeare_char_dir, out_dir, max_iters=4, fsdp=True)


def copy_of(run_dir, tmp_path):
    """A run's folder to resume in, leaving the shared one as it is (ckpt.dcp links to its directory by name)."""
    return shutil.copytree(run_dir, tmp_path / 'run', symlinks=True)


def test_fsdp_on_two_ranks_matches_one_process_and_ddp_with_half_the_parameters_each(straight, two_ranks_at_4,
                                                                                      ddp_run):
    (fsdp2, out), (reference, reference_out) = two_ranks_at_4, straight
    assert parameter_bytes(out) == pytest.approx(parameter_bytes(reference_out) / 2, rel=0.01)  # each rank half
    assert os.path.isdir(fsdp2 / 'ckpt.dcp') and not os.path.exists(fsdp2 / 'ckpt.pt')
    assert losses(fsdp2, 1, 4) == pytest.approx(losses(reference, 1, 4), rel=1e-5)
    assert losses(ddp_run[0], 1, 4) == pytest.approx(losses(reference, 1, 4), rel=1e-5)


def test_a_two_rank_checkpoint_resumes_on_one_rank(shakespeare_char_dir, straight, two_ranks_at_4, tmp_path, capsys):
    run = copy_of(two_ranks_at_4[0], tmp_path)
    out = one_process(capsys, shakespeare_char_dir, run, max_iters=8, fsdp=True, init_from='resume')
    assert f'resuming from {run}/ckpt.dcp at iteration 4' in out
    assert losses(run, 5, 8) == pytest.approx(losses(straight[0], 5, 8), rel=1e-5)


def test_a_one_rank_checkpoint_resumes_on_two_ranks(shakespeare_char_dir, straight, one_rank_at_4, tmp_path):
    run = copy_of(one_rank_at_4, tmp_path)
    torchrun(shakespeare_char_dir, run, max_iters=8, fsdp=True, init_from='resume')
    assert losses(run, 5, 8) == pytest.approx(losses(straight[0], 5, 8), rel=1e-5)


def test_resuming_on_the_same_number_of_ranks_is_bit_identical(shakespeare_char_dir, straight, one_rank_at_4, tmp_path,
                                                               capsys):
    run = copy_of(one_rank_at_4, tmp_path)
    one_process(capsys, shakespeare_char_dir, run, max_iters=8, fsdp=True, init_from='resume')
    assert losses(run, 5, 8) == losses(straight[0], 5, 8)


def test_a_plain_run_resumes_from_a_sharded_checkpoint(shakespeare_char_dir, straight, one_rank_at_4, tmp_path, capsys):
    """Read whole on one process, without FSDP."""
    run = copy_of(one_rank_at_4, tmp_path)
    one_process(capsys, shakespeare_char_dir, run, max_iters=8, init_from='resume')
    assert losses(run, 5, 8) == pytest.approx(losses(straight[0], 5, 8), rel=1e-5)


def test_torn_checkpoint_write_leaves_the_last_complete_one(shakespeare_char_dir, one_rank_at_4, tmp_path, capsys):
    """A kill while the shards are written: the new directory lacks its metadata (written last) and the
    ckpt.dcp link still points at the previous checkpoint, which the next run resumes from."""
    run = copy_of(one_rank_at_4, tmp_path)
    complete = os.path.realpath(run / 'ckpt.dcp')
    torn = run / '.ckpt-dcp-8'
    shutil.copytree(complete, torn)
    os.remove(torn / '.metadata')
    assert load_checkpoint(str(run))['iter_num'] == 4
    out = one_process(capsys, shakespeare_char_dir, run, max_iters=8, fsdp=True, init_from='resume')
    assert 'at iteration 4' in out
    assert load_checkpoint(str(run), weights=False)['iter_num'] == 8
    assert sorted(os.listdir(run)) == ['.ckpt-dcp-8', 'ckpt.dcp', 'metrics.jsonl']  # the torn one replaced


def test_sample_and_export_read_a_sharded_checkpoint_as_the_unsharded_model(two_ranks_at_4, ddp_run, tmp_path, capsys):
    """The 2-rank FSDP run's checkpoint against the DDP run's ckpt.pt, the same model to float rounding:
    sampled text (which every logit sways) and the exported model's logits."""
    (sharded, _), (unsharded, _) = two_ranks_at_4, ddp_run
    texts = []
    for out_dir in (sharded, unsharded):
        status, out, err = run_script(capsys, sample.main, [f'--out_dir={out_dir}', '--device=cpu', '--num_samples=2',
                                                            '--max_new_tokens=40', '--temperature=1.0', '--seed=7'])
        assert status == 0, err
        texts.append(out)
    assert texts[0] == texts[1] and len(set(texts[0])) > 10
    transformers = pytest.importorskip('transformers')
    status, out, err = run_script(capsys, export.main, [f'--out_dir={sharded}', f'--to={tmp_path / "hf"}'])
    assert status == 0, err
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / 'hf')).eval()
    model = model_from_checkpoint(load_checkpoint(str(unsharded))).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, model(ids, targets=ids)[0], atol=1e-4, rtol=0)


def test_init_from_a_sharded_run_starts_from_its_weights(shakespeare_char_dir, one_rank_at_4, tmp_path, capsys):
    """init_from=<an FSDP run's out_dir> reads its ckpt.dcp on one process: the fine-tune's first
    evaluation is the source's last (the same weights, the same evaluation batches)."""
    assert os.path.islink(one_rank_at_4 / 'ckpt.dcp') and not (one_rank_at_4 / 'ckpt.pt').exists()
    one_process(capsys, shakespeare_char_dir, tmp_path, max_iters=2, eval_interval=2, init_from=str(one_rank_at_4))
    last = [m for m in read_metrics(one_rank_at_4) if 'val_loss' in m][-1]
    first = [m for m in read_metrics(tmp_path) if 'val_loss' in m][0]
    assert first['iter'] == 0 and first['val_loss'] == pytest.approx(last['val_loss'], rel=1e-6)


def test_muon_is_refused_with_fsdp(shakespeare_char_dir, tmp_path, capsys):
    status, _, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, fsdp=True,
                                                              optimizer='muon'))
    assert status != 0 and "optimizer='muon' does not work with fsdp=True" in err


def test_activation_checkpointing_under_fsdp_on_two_ranks_gives_the_same_losses(shakespeare_char_dir, two_ranks_at_4,
                                                                                tmp_path):
    """Each block checkpointed before FSDP wraps it: the losses of the plain 2-rank run, bit for bit."""
    torchrun(shakespeare_char_dir, tmp_path, max_iters=4, fsdp=True, activation_checkpointing='block')
    assert losses(tmp_path, 1, 4) == losses(two_ranks_at_4[0], 1, 4)


def test_lora_under_fsdp_on_two_ranks_saves_the_adapters_alone(shakespeare_char_dir, straight, tmp_path, capsys):
    """LoRA on a sharded run's weights, sharded over two ranks: the losses of one plain process; the sharded
    checkpoint holds the adapters (not the frozen base, nor a tied copy of it), and a plain run resumes from it."""
    lora = dict(init_from=straight[0], lora_rank=4, lora_targets='attn+mlp', max_iters=4)
    torchrun(shakespeare_char_dir, tmp_path / 'fsdp', fsdp=True, **lora)
    one_process(capsys, shakespeare_char_dir, tmp_path / 'plain', **lora)
    assert losses(tmp_path / 'fsdp', 1, 4) == pytest.approx(losses(tmp_path / 'plain', 1, 4), rel=1e-5)
    checkpoint = load_checkpoint(str(tmp_path / 'fsdp'))
    assert checkpoint['model'] and all(name.endswith(('lora_A', 'lora_B')) for name in checkpoint['model'])
    one_process(capsys, shakespeare_char_dir, tmp_path / 'fsdp', init_from='resume', max_iters=6)
    assert set(training_losses(tmp_path / 'fsdp')) == set(range(1, 7))
