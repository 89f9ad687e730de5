"""sample.py on the checkpoint of a tiny training run, whose dataset folder is deleted
afterwards: the checkpoint carries its tokenizer."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import sample
import train
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import ROOT
from test_train import run_script, tiny_args
from tokenizer import tokenizer_from_state

SEPARATOR = '---------------'


@pytest.fixture(scope='module')
def trained_dir(shakespeare_char_dir, tmp_path_factory):
    """out_dir of a short training run on a copy of the dataset that no longer exists."""
    data_copy = tmp_path_factory.mktemp('data') / 'shakespeare_char'
    shutil.copytree(shakespeare_char_dir, data_copy)
    out_dir = tmp_path_factory.mktemp('out')
    train.main(tiny_args(data_copy, out_dir, max_iters=20, learning_rate=1e-2, warmup_iters=5, lr_decay_iters=20))
    shutil.rmtree(data_copy)
    return out_dir


def sample_args(out_dir, **overrides):
    settings = dict(out_dir=str(out_dir), device='cpu', num_samples=2, max_new_tokens=30, temperature=0.0)
    settings.update(overrides)
    return [f'--{key}={value}' for key, value in settings.items()]


def greedy_continuation(out_dir, prompt, length):
    """What greedy sampling must print: the checkpoint's model and tokenizer used directly."""
    checkpoint = load_checkpoint(str(out_dir))
    model = model_from_checkpoint(checkpoint).eval()
    tokenizer = tokenizer_from_state(checkpoint['tokenizer'])
    idx = torch.tensor([tokenizer.encode(prompt)])
    return tokenizer.decode(model.generate(idx, length, temperature=0)[0, idx.size(1):].tolist())


def test_prints_the_samples_separated_by_dashes(trained_dir, capsys):
    assert not os.path.exists(load_checkpoint(str(trained_dir))['config']['dataset'])  # self-contained
    status, out, err = run_script(capsys, sample.main, sample_args(trained_dir, num_samples=3, temperature=0.8))
    assert status == 0, err
    samples = out.split(SEPARATOR + '\n')
    assert len(samples) == 4 and samples[-1] == ''
    assert all(len(text) == 30 + 1 for text in samples[:3])  # 30 characters and the newline after each
    assert len(set(samples[:3])) > 1  # sampled, not greedy


def test_greedy_sampling_is_deterministic_and_continues_the_prompt(trained_dir, capsys):
    args = sample_args(trained_dir, start='ROMEO:')
    first = run_script(capsys, sample.main, args)
    assert first == run_script(capsys, sample.main, args)
    status, out, _ = first
    assert status == 0
    assert out == (greedy_continuation(trained_dir, 'ROMEO:', 30) + '\n' + SEPARATOR + '\n') * 2


def test_prompt_from_a_file(trained_dir, tmp_path, capsys):
    prompt = 'First Citizen:\nBefore we proceed'
    prompt_file = tmp_path / 'prompt.txt'
    prompt_file.write_text(prompt, encoding='utf-8')
    from_file = run_script(capsys, sample.main, sample_args(trained_dir, start=f'FILE:{prompt_file}'))
    assert from_file[0] == 0
    assert from_file[1].startswith(greedy_continuation(trained_dir, prompt, 30) + '\n' + SEPARATOR)


@pytest.mark.parametrize('start, message', [
    ('FILE:{tmp}/missing.txt', 'error: prompt file {tmp}/missing.txt not found'),
    ('price: €', "error: the text contains characters outside the vocabulary: '€'"),
])
def test_bad_prompts_are_one_line_errors(trained_dir, tmp_path, capsys, start, message):
    status, out, err = run_script(capsys, sample.main, sample_args(trained_dir, start=start.format(tmp=tmp_path)))
    assert status == 1 and out == ''
    assert len(err.splitlines()) == 1 and err.startswith(message.format(tmp=tmp_path))


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, 'sample.py', *sample_args(tmp_path / 'nothing')], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ''
    assert result.stderr.splitlines() == [f"error: no checkpoint at {tmp_path / 'nothing' / 'ckpt.pt'}: train a "
                                          f"model first, or point --out_dir at a run's folder"]


def test_compile_wraps_the_step_generation_calls(monkeypatch):
    """A GPT's forward; an encoder-decoder's decode, which translation calls (it never calls forward)."""
    from model import GPT, GPTConfig, Seq2SeqConfig, Seq2SeqTransformer
    compiled = []
    monkeypatch.setattr(torch, 'compile', lambda fn, **kwargs: compiled.append(fn.__name__) or fn)
    sample.compile_generation_step(GPT(GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=1, n_embd=8)))
    sample.compile_generation_step(Seq2SeqTransformer(Seq2SeqConfig(vocab_size=8, n_layer=1, n_head=1, n_embd=8)))
    assert compiled == ['forward', 'decode']
