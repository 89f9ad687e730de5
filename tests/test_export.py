"""export.py: a checkpoint becomes a Hugging Face folder that transformers loads as GPT-2,
with the same logits and a tokenizer that gives our ids."""
import json
import os

import pytest
import torch

import export
import train
from checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from model import GPT, GPTConfig, Seq2SeqConfig, Seq2SeqTransformer
from test_train import run_script, tiny_args
from tokenizer import tokenizer_from_state

transformers = pytest.importorskip('transformers')

GPT2_BPE = {'kind': 'tiktoken', 'name': 'gpt2'}
CHARS = {'kind': 'char', 'chars': sorted(set('abcdefghijklmnopqrstuvwxyz ,.!?\n'))}
GPT2_FILES = {'vocab.json': '6c7ea1a7e38e3a7f062df639a5b80947f075ffe6',  # tiktoken's cache names of GPT-2's files
              'merges.txt': '6d1cbeee0f20b3d9449abfede4726ed8212e3aee'}
TEXTS = ["Hello world", "ROMEO:\nBut, soft! what light through yonder window breaks?",
         "naïve café — 日本語 😀", "  two  spaces\n\n\ttab", "Wait , what ? I do n't know .",
         "The end.<|endoftext|>Next"]


def save_random_checkpoint(out_dir, tokenizer, model_class=GPT, config_class=GPTConfig, model_type='gpt', **args):
    """A tiny untrained model whose every weight is non-trivial (biases are not zero, norm gains not one)."""
    torch.manual_seed(0)
    model = model_class(config_class(**{'n_layer': 2, 'n_head': 2, 'n_embd': 32, **args}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint({'model': model.state_dict(), 'model_args': dict(vars(model.config)), 'iter_num': 0,
                     'model_type': model_type, 'tokenizer': tokenizer}, str(out_dir))
    return model


def export_to(out_dir, folder):
    export.main([f'--out_dir={out_dir}', f'--to={folder}'])
    return folder


def logits_of_both(out_dir, folder, ids):
    ours = model_from_checkpoint(load_checkpoint(str(out_dir))).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return ours(ids, targets=ids)[0], theirs(ids).logits


@pytest.fixture(scope='module')
def char_export(shakespeare_char_dir, tmp_path_factory):
    """(out_dir, export folder) of a short character-level training run, exported to the default folder."""
    out_dir = tmp_path_factory.mktemp('char_run')
    train.main(tiny_args(shakespeare_char_dir, out_dir, max_iters=10, learning_rate=1e-2, warmup_iters=2))
    export.main([f'--out_dir={out_dir}'])
    return out_dir, out_dir / 'hf'


@pytest.fixture(scope='module')
def bpe_export(tmp_path_factory, gpt2_bpe):
    """(out_dir, export folder) of a GPT-2 BPE model with the padded vocabulary of 50304."""
    out_dir = tmp_path_factory.mktemp('bpe_run')
    save_random_checkpoint(out_dir, GPT2_BPE, vocab_size=50304, block_size=16)
    return out_dir, export_to(out_dir, tmp_path_factory.mktemp('bpe_hf'))


@pytest.fixture(params=['char_export', 'bpe_export'])
def exported(request):
    return request.getfixturevalue(request.param)


def test_folder_holds_safetensors_and_a_gpt2_config(exported):
    out_dir, folder = exported
    args = load_checkpoint(str(out_dir))['model_args']
    assert (folder / 'model.safetensors').stat().st_size > 0
    config = json.loads((folder / 'config.json').read_text())
    assert config['model_type'] == 'gpt2' and config['activation_function'] == {'gelu': 'gelu', 'gelu_tanh': 'gelu_new'}[args['mlp']]
    assert (config['n_positions'], config['n_embd'], config['n_layer'], config['n_head'], config['vocab_size']) == (
        args['block_size'], args['n_embd'], args['n_layer'], args['n_head'], args['vocab_size'])


def test_transformers_gives_our_logits(exported):
    out_dir, folder = exported
    vocab_size = load_checkpoint(str(out_dir))['model_args']['vocab_size']
    ids = torch.randint(0, vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    ours, theirs = logits_of_both(out_dir, folder, ids)
    assert theirs.shape == ours.shape == (2, 16, vocab_size)
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=0)


@pytest.mark.parametrize('bias', [True, False])
def test_bias_and_tied_embeddings_export_exactly(tmp_path, bias):
    save_random_checkpoint(tmp_path / 'run', CHARS, vocab_size=40, block_size=8, bias=bias)
    folder = export_to(tmp_path / 'run', tmp_path / 'hf')
    assert json.loads((folder / 'config.json').read_text())['tie_word_embeddings'] is True
    ids = torch.randint(0, 40, (3, 8), generator=torch.Generator().manual_seed(1))
    ours, theirs = logits_of_both(tmp_path / 'run', folder, ids)
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=0)


def test_char_tokenizer_round_trips_our_ids(char_export):
    out_dir, folder = char_export
    ours = tokenizer_from_state(load_checkpoint(str(out_dir))['tokenizer'])
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    text = TEXTS[1] + "\n\n  It is the east, and Juliet is the sun."
    ids = theirs(text)['input_ids']
    assert ids == ours.encode(text)
    assert theirs.decode(ids) == text


def test_bpe_tokenizer_gives_tiktokens_ids(bpe_export, gpt2_bpe):
    _, folder = bpe_export
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert type(theirs).__name__ in ('GPT2TokenizerFast', 'GPT2Tokenizer')  # 'Fast' dropped in transformers 5
    ours = gpt2_bpe
    for text in TEXTS:
        ids = theirs(text)['input_ids']
        assert ids == ours.encode(text), text
        assert theirs.decode(ids) == text


@pytest.mark.parametrize('name', GPT2_FILES)
def test_bpe_files_equal_gpt2s(bpe_export, name):
    """vocab.json and merges.txt rebuilt from tiktoken's ranks are GPT-2's published files."""
    original = os.path.join(os.environ['TIKTOKEN_CACHE_DIR'], GPT2_FILES[name])
    if not os.path.exists(original):
        pytest.skip(f'{original} not in the tiktoken cache')
    ours = (bpe_export[1] / name).read_text(encoding='utf-8')
    with open(original, encoding='utf-8') as f:
        reference = f.read()
    if name == 'vocab.json':
        assert json.loads(ours) == json.loads(reference)
    else:
        assert ours.split() == reference.split()


def test_pipeline_continues_a_prompt_as_our_model_does(exported):
    out_dir, folder = exported
    generator = transformers.pipeline('text-generation', model=str(folder))
    prompt = 'ROMEO:'
    text = generator(prompt, max_new_tokens=5, do_sample=False)[0]['generated_text']
    ours = model_from_checkpoint(load_checkpoint(str(out_dir))).eval()
    prompt_ids = generator.tokenizer(prompt, return_tensors='pt')['input_ids']
    greedy = ours.generate(prompt_ids, 5, temperature=0)[0, prompt_ids.size(1):]
    assert text == prompt + generator.tokenizer.decode(greedy)


@pytest.mark.parametrize('args, named', [
    (dict(pos_emb='rope'), "pos_emb='rope'"),
    (dict(pos_emb='sinusoidal'), "pos_emb='sinusoidal'"),
    (dict(mlp='swiglu'), "mlp='swiglu'"),
    (dict(norm='rmsnorm'), "norm='rmsnorm'"),
    (dict(qk_norm=True), "qk_norm=True"),
])
def test_refuses_what_gpt2_cannot_express(tmp_path, capsys, args, named):
    save_random_checkpoint(tmp_path / 'run', CHARS, vocab_size=40, block_size=8, **args)
    status, _, err = run_script(capsys, export.main, [f'--out_dir={tmp_path / "run"}', f'--to={tmp_path / "hf"}'])
    assert status == 1
    assert err.startswith('error: ') and err.count('\n') == 1 and named in err
    assert not (tmp_path / 'hf').exists()  # refused before writing anything


@pytest.mark.parametrize('model_type, tokenizer, named', [
    ('seq2seq', CHARS, 'model_type=seq2seq'),
    ('gpt', {'kind': 'tiktoken', 'name': 'cl100k_base'}, 'cl100k_base'),
])
def test_refuses_other_models_and_tokenizers(tmp_path, capsys, model_type, tokenizer, named):
    classes = (Seq2SeqTransformer, Seq2SeqConfig) if model_type == 'seq2seq' else (GPT, GPTConfig)
    save_random_checkpoint(tmp_path / 'run', tokenizer, *classes, model_type=model_type, vocab_size=40)
    status, _, err = run_script(capsys, export.main, [f'--out_dir={tmp_path / "run"}', f'--to={tmp_path / "hf"}'])
    assert status == 1
    assert err.startswith('error: ') and err.count('\n') == 1 and named in err


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    status, _, err = run_script(capsys, export.main, [f'--out_dir={tmp_path}'])
    assert status == 1 and err.startswith('error: no checkpoint at') and err.count('\n') == 1
