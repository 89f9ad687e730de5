"""LoRA (lora.py, lora_rank > 0): the first forward is the base model's; training changes the adapters alone;
the checkpoint holds them and its base's path and hash, resumes exactly, samples, exports merged (the same
logits), and refuses a base that changed in one line; for a GPT (from a run or a Hugging Face folder) and an
encoder-decoder here, an encoder classifier in test_encoder_training.py."""
import shutil

import pytest
import torch

import export
import sample
import train
from checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from conftest import needs
from lora import LoRALinear, add_lora, merge_lora
from model import Encoder, EncoderConfig, GPT, GPTConfig, Seq2SeqConfig, Seq2SeqTransformer
from test_train import read_metrics, run_script, tiny_args, training_losses

LORA = dict(lora_rank=4, lora_alpha=8, lora_targets='attn+mlp', learning_rate=1e-2, warmup_iters=0, eval_interval=4)
SAMPLE = ['--device=cpu', '--num_samples=2', '--max_new_tokens=30', '--temperature=1.0', '--seed=5']


def lora_args(data_dir, out_dir, base, **overrides):
    """train.py flags of a LoRA fine-tuning of `base` (its architecture taken from it)."""
    args = tiny_args(data_dir, out_dir, init_from=base, **{**LORA, **overrides})
    return [a for a in args if not a.startswith(('--n_layer', '--n_head', '--n_embd', '--block_size'))]


@pytest.fixture(scope='module')
def base(shakespeare_char_dir, tmp_path_factory):
    """A tiny GPT trained for 4 steps: the base of the LoRA runs."""
    out_dir = tmp_path_factory.mktemp('base')
    train.main(tiny_args(shakespeare_char_dir, out_dir, max_iters=4, learning_rate=1e-2))
    return out_dir


@pytest.fixture(scope='module')
def lora_run(shakespeare_char_dir, base, tmp_path_factory):
    """4 LoRA steps on the base, with dropout."""
    out_dir = tmp_path_factory.mktemp('lora')
    train.main(lora_args(shakespeare_char_dir, out_dir, base, max_iters=4, dropout=0.1))
    return out_dir


@pytest.mark.parametrize('kind', ['gpt', 'seq2seq', 'encoder'])
def test_the_first_forward_is_the_base_models(kind):
    sizes = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=50)
    net = {'gpt': lambda: GPT(GPTConfig(block_size=16, **sizes)),
           'seq2seq': lambda: Seq2SeqTransformer(Seq2SeqConfig(src_block_size=16, tgt_block_size=16, **sizes)),
           'encoder': lambda: Encoder(EncoderConfig(block_size=16, **sizes))}[kind]().eval()
    ids = torch.randint(3, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    batch = (ids, ids) if kind == 'seq2seq' else (ids,)
    before = net(*batch)[0]
    add_lora(net, 4, 8, 'attn+mlp')
    adapters = [m for m in net.modules() if isinstance(m, LoRALinear)]
    assert len(adapters) == {'gpt': 8, 'seq2seq': 8 + 14, 'encoder': 8}[kind]  # 4 a block; a decoder's cross-attention 3 more
    assert torch.equal(net(*batch)[0], before)
    assert {name.rsplit('.', 1)[-1] for name, p in net.named_parameters() if p.requires_grad} == {'lora_A', 'lora_B'}


def test_only_the_adapters_change_and_the_checkpoint_holds_them_and_its_base(base, lora_run):
    checkpoint = load_checkpoint(str(lora_run))
    base_weights = load_checkpoint(str(base))['model']
    assert checkpoint['lora']['base'] == str(base) and len(checkpoint['lora']['base_hash']) == 64
    assert checkpoint['model'] and all(name.endswith(('lora_A', 'lora_B')) for name in checkpoint['model'])
    assert len(checkpoint['optimizer'][0]['state']) == len(checkpoint['model'])  # AdamW's state: the adapters' alone
    trained = model_from_checkpoint(checkpoint, adapters=True)
    state = trained.state_dict()
    for name, weight in base_weights.items():
        assert torch.equal(state[name], weight), name
    assert all(state[name].abs().sum() > 0 for name in checkpoint['model'])  # B has left zero


def test_the_first_evaluation_is_the_bases_last(base, lora_run):
    last = [m for m in read_metrics(base) if 'val_loss' in m][-1]
    first = [m for m in read_metrics(lora_run) if 'val_loss' in m][0]
    assert first['iter'] == 0 and first['val_loss'] == last['val_loss']


def test_a_lora_checkpoint_resumes_exactly(shakespeare_char_dir, base, lora_run, tmp_path):
    train.main(lora_args(shakespeare_char_dir, tmp_path, base, max_iters=2, dropout=0.1))
    train.main(tiny_args(shakespeare_char_dir, tmp_path, init_from='resume', max_iters=4, dropout=0.1, learning_rate=1e-2,
                         warmup_iters=0, eval_interval=4))  # the LoRA settings from the checkpoint
    assert training_losses(tmp_path) == training_losses(lora_run)
    assert load_checkpoint(str(tmp_path))['lora'] == load_checkpoint(str(lora_run))['lora']


def test_sample_py_runs_the_adapters_as_a_full_checkpoint_of_the_merged_model(lora_run, tmp_path, capsys):
    checkpoint = dict(load_checkpoint(str(lora_run)))
    merged = merge_lora(model_from_checkpoint(checkpoint, adapters=True))
    save_checkpoint({**checkpoint, 'model': merged.state_dict(), 'lora': None}, str(tmp_path))
    texts = []
    for out_dir in (lora_run, tmp_path):
        status, out, err = run_script(capsys, sample.main, [f'--out_dir={out_dir}', *SAMPLE])
        assert status == 0, err
        texts.append(out)
    assert texts[0] == texts[1] and len(set(texts[0])) > 10


@needs('transformers')
def test_export_merges_the_adapters_into_a_plain_gpt2_with_the_same_logits(lora_run, tmp_path, capsys):
    import transformers
    status, _, err = run_script(capsys, export.main, [f'--out_dir={lora_run}', f'--to={tmp_path}'])
    assert status == 0, err
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    unmerged = model_from_checkpoint(load_checkpoint(str(lora_run)), adapters=True).eval()
    assert any(isinstance(m, LoRALinear) for m in unmerged.modules())
    ids = torch.randint(0, unmerged.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, unmerged(ids, targets=ids)[0], atol=1e-5, rtol=0)


def test_a_changed_or_missing_base_is_refused_in_one_line(shakespeare_char_dir, base, tmp_path, capsys):
    moved = shutil.copytree(base, tmp_path / 'base')
    run = tmp_path / 'run'
    train.main(lora_args(shakespeare_char_dir, run, moved, max_iters=2))
    checkpoint = dict(load_checkpoint(str(moved)))
    checkpoint['model'] = {name: w + 1e-3 if name.endswith('c_fc.weight') else w for name, w in checkpoint['model'].items()}
    save_checkpoint(checkpoint, str(moved))  # the base trained on: a weight differs
    for main, args in ((sample.main, [f'--out_dir={run}', *SAMPLE]), (export.main, [f'--out_dir={run}']),
                       (train.main, tiny_args(shakespeare_char_dir, run, init_from='resume', max_iters=4))):
        status, out, err = run_script(capsys, main, args)
        assert status == 1 and err == f"error: the LoRA base {moved} is not the model these adapters were trained on " \
                                      f"(its weights differ): restore that model there, or fine-tune again\n"
    shutil.rmtree(moved)
    status, _, err = run_script(capsys, sample.main, [f'--out_dir={run}', *SAMPLE])
    assert status == 1 and err.startswith(f'error: the LoRA base {moved}: no checkpoint at') and err.count('\n') == 1


@pytest.mark.parametrize('flags, message', [
    (dict(lora_rank=4), 'LoRA (lora_rank > 0) fine-tunes a trained model: it needs init_from'),
    (dict(lora_rank=4, init_from='BASE', lora_targets='attn+head'), "and lora_targets 'attn', 'mlp' or 'attn+mlp'"),
    (dict(lora_rank=-1), 'lora_rank must not be negative'),
    (dict(activation_checkpointing='layer'), 'activation_checkpointing must be one of none, block'),
])
def test_bad_settings_are_one_line_errors(shakespeare_char_dir, base, tmp_path, capsys, flags, message):
    flags = {key: str(base) if value == 'BASE' else value for key, value in flags.items()}
    status, _, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, **flags))
    assert status == 1 and message in err and err.count('\n') == 1


def test_a_resumed_run_keeps_its_lora_settings(shakespeare_char_dir, lora_run, tmp_path, capsys):
    run = shutil.copytree(lora_run, tmp_path / 'run')
    status, _, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, run, init_from='resume',
                                                              max_iters=6, lora_rank=8))
    assert status == 1 and "--lora_rank=8 differs from the checkpoint's 4" in err


@needs('transformers')
def test_lora_on_gpt2_weights_in_a_hugging_face_folder(shakespeare_char_dir, base, tmp_path, capsys):
    """init_from=<a folder of GPT-2 weights> (export.py's): the base recorded is the folder; sampling reads it."""
    status, _, err = run_script(capsys, export.main, [f'--out_dir={base}', f'--to={tmp_path / "hf"}'])
    assert status == 0, err
    train.main(tiny_args(shakespeare_char_dir, tmp_path / 'run', init_from=tmp_path / 'hf',
                         **{**LORA, 'max_iters': 2, 'lora_targets': 'mlp'}))
    checkpoint = load_checkpoint(str(tmp_path / 'run'))
    assert checkpoint['lora']['base'] == str(tmp_path / 'hf')
    assert {name.split('.')[-2] for name in checkpoint['model']} == {'c_fc', 'c_proj'}
    status, out, err = run_script(capsys, sample.main, [f'--out_dir={tmp_path / "run"}', *SAMPLE])
    assert status == 0 and len(set(out)) > 10, err


def test_lora_on_an_encoder_decoder(multi30k_dir, tmp_path, capsys):
    common = dict(model_type='seq2seq', n_layer=1, batch_size=8, bleu_sentences=0, max_iters=2)
    train.main(tiny_args(multi30k_dir, tmp_path / 'base', **common))
    train.main(tiny_args(multi30k_dir, tmp_path / 'run', init_from=tmp_path / 'base', **{**common, **LORA}))
    checkpoint = load_checkpoint(str(tmp_path / 'run'))
    assert {name.split('.')[-2] for name in checkpoint['model']} == {'c_attn', 'c_q', 'c_kv', 'c_proj', 'c_fc'}
    adapted = model_from_checkpoint(checkpoint, adapters=True).state_dict()
    for name, weight in load_checkpoint(str(tmp_path / 'base'))['model'].items():
        assert torch.equal(adapted[name], weight), name
    status, out, err = run_script(capsys, sample.main, [f'--out_dir={tmp_path / "run"}', '--device=cpu',
                                                        '--start=Zwei Hunde spielen im Schnee.'])
    assert status == 0 and out.strip(), err


def test_a_lora_run_starts_another_run_merged_whole_or_as_the_next_base(shakespeare_char_dir, lora_run, tmp_path):
    """init_from=<a LoRA run's out_dir>: its merged weights, trained whole, or frozen under new adapters."""
    last = [m for m in read_metrics(lora_run) if 'val_loss' in m][-1]
    for name, lora_rank in (('whole', 0), ('again', 2)):
        train.main(lora_args(shakespeare_char_dir, tmp_path / name, lora_run, max_iters=2, lora_rank=lora_rank))
        first = [m for m in read_metrics(tmp_path / name) if 'val_loss' in m][0]
        assert first['val_loss'] == pytest.approx(last['val_loss'], rel=1e-5)
    whole, again = load_checkpoint(str(tmp_path / 'whole')), load_checkpoint(str(tmp_path / 'again'))
    assert whole['lora'] is None and not any('lora_' in name for name in whole['model'])
    assert 'transformer.h.0.mlp.c_fc.weight' in whole['model'] and len(whole['optimizer'][0]['state']) > 8
    assert again['lora']['base'] == str(lora_run) and all('lora_' in name for name in again['model'])
