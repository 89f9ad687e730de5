"""The CUDA paths themselves, where a GPU is present (skipped elsewhere; the CPU suite drives the same
code with fake device queries): bf16 autocast with fused AdamW and the CUDA RNG through a resume,
torch.compile on CUDA, float16 with its gradient scaler, NCCL DDP and FSDP on one GPU, FSDP's bf16
mixed precision with compiled blocks, QK-norm and rotary positions under autocast, pinned non-blocking
batch copies, the KV cache and sample.py's bf16 weights on the GPU, the peak FLOP/s of the GPU."""
import subprocess
import sys

import pytest
import torch

import generate
import sample
import train
from checkpoint import load_checkpoint
from conftest import ROOT, switches, widen
from data import Batches
from device import gpu_table_peak, peak_flops
from generate import KVCache
from test_device import MatmulSpy, random_tokens, tiny_gpt
from test_train import read_metrics, run_script, tiny_args, training_losses

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


def cuda_args(data_dir, out_dir, **overrides):
    return tiny_args(data_dir, out_dir, **{'device': 'cuda', **overrides})


def train_on_cuda(capsys, data_dir, out_dir, **overrides):
    status, out, err = run_script(capsys, train.main, cuda_args(data_dir, out_dir, **overrides))
    assert status == 0, err
    return out


def test_a_gpu_in_the_table_gets_its_data_sheet_peak():
    name = torch.cuda.get_device_name()
    if gpu_table_peak(name) is None:
        pytest.skip(f'{name} is not in the peak FLOP/s table: its peak is measured (the next test)')
    assert peak_flops('cuda', torch.bfloat16) == gpu_table_peak(name)
    assert peak_flops('cuda', torch.float32) == gpu_table_peak(name) / 2  # TF32


def test_a_gpu_missing_from_the_table_is_measured_with_large_random_matmuls_several_per_sync(monkeypatch):
    """Small matrices, or a sync after each product, would measure launch and sync overhead, not the GPU."""
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'NVIDIA B200')  # not in the table
    spy = MatmulSpy(monkeypatch)
    rng = torch.get_rng_state(), torch.cuda.get_rng_state()
    assert peak_flops('cuda', torch.bfloat16) > 1e12
    assert torch.equal(torch.get_rng_state(), rng[0]) and torch.equal(torch.cuda.get_rng_state(), rng[1])
    assert all(a.is_cuda and a.dtype == torch.bfloat16 and min(a.shape) >= 8192 for a in spy.operands)
    assert spy.operands[0].float().std() > 0.5  # random, not constant: constant data multiplies faster
    rounds = spy.syncs + [len(spy.operands)]
    assert len(spy.syncs) >= 2 and all(end - start >= 8 for start, end in zip(rounds, rounds[1:]))


def test_batches_reach_the_gpu_through_pinned_non_blocking_copies():
    rows = torch.randint(0, 100, (4, 9))
    inputs, targets = Batches('cuda').to_device(rows[:, :-1], rows[:, 1:])
    assert inputs.is_cuda and targets.is_cuda
    assert torch.equal(inputs.cpu(), rows[:, :-1]) and torch.equal(targets.cpu(), rows[:, 1:])


def test_bf16_run_with_fused_adamw_and_dropout_resumes_where_it_stopped(shakespeare_char_dir, tmp_path, capsys):
    """The CUDA RNG (dropout) and the fused optimizer's state come back with the checkpoint. GPU kernels
    may sum in a different order from run to run, so the losses agree to 1e-3, not bit for bit; a
    wrong batch, optimizer state or dropout stream moves them by far more."""
    straight, split = tmp_path / 'straight', tmp_path / 'split'
    common = dict(dtype='bfloat16', dropout=0.1, learning_rate=1e-2, eval_interval=6)
    train_on_cuda(capsys, shakespeare_char_dir, straight, max_iters=12, **common)
    train_on_cuda(capsys, shakespeare_char_dir, split, max_iters=6, **common)
    out = train_on_cuda(capsys, shakespeare_char_dir, split, max_iters=12, init_from='resume', **common)
    assert 'at iteration 6' in out
    assert load_checkpoint(str(split))['optimizer'][0]['param_groups'][0]['fused'] is True
    expected, resumed = training_losses(straight), training_losses(split)
    assert [resumed[i] for i in range(7, 13)] == pytest.approx([expected[i] for i in range(7, 13)], abs=1e-3)


def test_compiled_training_on_cuda_matches_eager(shakespeare_char_dir, tmp_path, capsys):
    runs = {}
    for compiled in (False, True):
        train_on_cuda(capsys, shakespeare_char_dir, tmp_path / str(compiled), max_iters=8, compile=compiled,
                      dtype='bfloat16', learning_rate=1e-2)
        runs[compiled] = training_losses(tmp_path / str(compiled))
    assert [runs[True][i] for i in range(1, 9)] == pytest.approx([runs[False][i] for i in range(1, 9)], abs=2e-2)


def test_float16_scaler_settles_and_follows_the_bf16_curve(shakespeare_char_dir, tmp_path, capsys):
    curves = {}
    for dtype in ('float16', 'bfloat16'):
        train_on_cuda(capsys, shakespeare_char_dir, tmp_path / dtype, max_iters=60, dtype=dtype, learning_rate=1e-2,
                      eval_interval=60)
        curves[dtype] = training_losses(tmp_path / dtype)
    scales = [m['loss_scale'] for m in read_metrics(tmp_path / 'float16') if 'loss_scale' in m]
    assert len(scales) == 60 and all(s > 0 for s in scales)
    assert scales[-1] == scales[-30]  # no overflowing step in the last 30: the scale has settled
    late = range(41, 61)
    assert sum(curves['float16'][i] for i in late) / 20 == pytest.approx(sum(curves['bfloat16'][i] for i in late) / 20,
                                                                         abs=0.05)
    assert 'loss_scale' not in read_metrics(tmp_path / 'bfloat16')[-1]


@pytest.mark.parametrize('sharding', [{}, {'fsdp': True}], ids=['ddp', 'fsdp'])
def test_nccl_on_one_gpu_matches_one_process(shakespeare_char_dir, tmp_path, capsys, sharding):
    common = dict(max_iters=4, eval_interval=100, learning_rate=1e-2, warmup_iters=0)
    train_on_cuda(capsys, shakespeare_char_dir, tmp_path / 'single', **common)
    command = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1', 'train.py',
               *cuda_args(shakespeare_char_dir, tmp_path / 'nccl', backend='nccl', **common, **sharding)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    expected, actual = training_losses(tmp_path / 'single'), training_losses(tmp_path / 'nccl')
    assert [actual[i] for i in range(1, 5)] == pytest.approx([expected[i] for i in range(1, 5)], abs=1e-3)


@pytest.fixture
def full_float32_matmuls():
    """A Trainer earlier in this process may have turned TF32 on; float32 here means float32."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision('highest')
    yield
    torch.set_float32_matmul_precision(before)


def test_kv_cache_generation_equals_the_full_context_on_cuda(full_float32_matmuls):
    model = widen(tiny_gpt()).cuda().eval()  # output that varies: a cache bug changes it
    prompt = random_tokens(2, 3).cuda()
    with torch.no_grad():
        cached = generate.sample(model, prompt, 12, temperature=0.0, use_cache=True)
        uncached = generate.sample(model, prompt, 12, temperature=0.0, use_cache=False)
    assert torch.equal(cached, uncached)
    assert switches(cached[:, 3:]).min() >= 5


@pytest.mark.parametrize('dtype, tolerance', [(torch.bfloat16, 0.1), (torch.float16, 0.02)], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'written-out'])
def test_qk_norm_and_rotary_positions_under_autocast_follow_float32(full_float32_matmuls, dtype, tolerance, fused):
    """Under autocast the heads come in bf16 or fp16, QK-norm and the rotation run in float32 and the values
    stay in low precision (Attention.norm_heads): the attention, its backward and the KV cache's steps take
    the mixed dtypes and give float32's numbers to low precision (logits of ~2 here)."""
    model = widen(tiny_gpt(pos_emb='rope', qk_norm=True, norm='rmsnorm', n_kv_head=2, fused_attention=fused),
                  std=0.1).cuda().eval()
    x, y = random_tokens(4, 16).cuda(), random_tokens(4, 16, seed=2).cuda()
    with torch.no_grad():
        expected, _ = model(x, y)
    with torch.autocast('cuda', dtype=dtype):
        logits, loss = model(x, y)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(logits.float(), expected, atol=tolerance, rtol=0)
    with torch.no_grad(), torch.autocast('cuda', dtype=dtype):  # chunks through the cache, as decoding under autocast
        cache = KVCache(max_len=16)
        for start, end in ((0, 5), (5, 9), (9, 10), (10, 16)):
            last, _ = model(x[:, start:end], cache=cache)
            torch.testing.assert_close(last[:, -1].float(), expected[:, end - 1], atol=tolerance, rtol=0)


def test_fsdp_bf16_mixed_precision_with_compiled_blocks_trains_as_plain_bf16(shakespeare_char_dir, tmp_path, capsys):
    """fsdp=True in bf16 on a GPU: FSDP's MixedPrecisionPolicy (bf16 parameters in the forward and backward,
    gradients reduced in float32, float32 master weights) around blocks compiled one by one
    (sharding.shard_model), with QK-norm and rotary positions. It must learn as the plain compiled run does."""
    common = dict(max_iters=8, eval_interval=8, dtype='bfloat16', compile=True, learning_rate=1e-2, warmup_iters=0,
                  pos_emb='rope', qk_norm=True)
    out = train_on_cuda(capsys, shakespeare_char_dir, tmp_path / 'fsdp', fsdp=True, **common)
    assert 'fsdp over 1 ranks' in out
    train_on_cuda(capsys, shakespeare_char_dir, tmp_path / 'plain', **common)
    fsdp, plain = training_losses(tmp_path / 'fsdp'), training_losses(tmp_path / 'plain')
    assert [fsdp[i] for i in range(1, 9)] == pytest.approx([plain[i] for i in range(1, 9)], abs=5e-2)
    assert fsdp[8] < fsdp[1] - 0.3  # it learns
    assert all(w.dtype == torch.float32 for w in load_checkpoint(str(tmp_path / 'fsdp'))['model'].values())


def test_sample_py_runs_bf16_weights_on_the_gpu(shakespeare_char_dir, tmp_path, capsys):
    train_on_cuda(capsys, shakespeare_char_dir, tmp_path, max_iters=10)
    args = [f'--out_dir={tmp_path}', '--device=cuda', '--num_samples=3', '--max_new_tokens=25', '--seed=7']
    status, out, err = run_script(capsys, sample.main, args)
    assert status == 0, err
    samples = out.split('---------------\n')
    assert len(samples) == 4 and all(len(text) == 25 + 1 for text in samples[:3])
    assert run_script(capsys, sample.main, args)[1] == out  # seeded: the same samples again
