"""Issue 40: inputs that once ended in a Python traceback now end in one line starting `error:` (or in the
right behaviour): stop-string escapes, prompt files that are not UTF-8, masked-LM batches with nothing
masked, long inputs under bf16, a vocab_size too small for the data, GPT-2 weights without network (and
from a local folder), empty input files, sample.py --compile on an encoder."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import export
import sample
import train
from checkpoint import load_checkpoint, save_checkpoint
from conftest import ROOT
from model import GPT, Encoder, EncoderConfig, GPTConfig, Seq2SeqConfig, Seq2SeqTransformer
from test_train import read_metrics, run_script, tiny_args
from tokenizer import CharTokenizer, MaskedLMTokenizer, SubwordTokenizer

PHRASES = ['a gorgeous , witty , seductive movie .', 'the plot is a dull mess .', 'this movie is great fun .',
           'an awful , boring film .', 'a moving and funny story .', 'it is not good at all .'] * 3
PAIRS = [('ein hund läuft .', 'a dog runs .'), ('zwei katzen schlafen .', 'two cats sleep .'),
         ('ein mann singt .', 'a man sings .')] * 4
NOT_UTF8 = b'caf\xe9 au lait\n'  # Latin-1


def one_line_error(capsys, main, argv):
    status, out, err = run_script(capsys, main, argv)
    assert status == 1 and len(err.splitlines()) == 1 and err.startswith('error: '), err
    return err


def save(folder, model, kind, tokenizer, **extra):
    save_checkpoint({'model': model.state_dict(), 'model_args': dict(vars(model.config)), 'model_type': kind,
                     'iter_num': 3, 'tokenizer': tokenizer.state(), **extra}, str(folder))
    return folder


@pytest.fixture
def translator_dir(tmp_path):
    tokenizer = SubwordTokenizer.train([s for pair in PAIRS for s in pair], 60)
    torch.manual_seed(0)
    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16,
                                             src_block_size=8, tgt_block_size=8, pad_id=tokenizer.pad_id,
                                             bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id))
    return save(tmp_path / 'translator', model, 'seq2seq', tokenizer)


@pytest.fixture
def classifier_dir(tmp_path):
    tokenizer = MaskedLMTokenizer.train(PHRASES, 120)
    torch.manual_seed(0)
    model = Encoder(EncoderConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16,
                                  n_classes=2, pad_id=tokenizer.pad_id, pos_emb='sinusoidal'))
    return save(tmp_path / 'classifier', model, 'encoder', tokenizer, label_names=['0', '1'])


def sample_args(out_dir, **settings):
    return [f'--out_dir={out_dir}', '--device=cpu', '--dtype=float32', *(f'--{k}={v}' for k, v in settings.items())]


# ---------------------------------------------------------------------------
# 4. Stop strings: escapes as Python string literals read them


def test_stop_escapes_are_read_as_in_python_strings():
    tokenizer = CharTokenizer('abc')
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no DeprecationWarning either
        assert sample.stop_rules('\\n\\n', tokenizer)[1] == ['\n\n']
        assert sample.stop_rules('\\u00e9', tokenizer)[1] == ['é']
        assert sample.stop_rules('\\xff', tokenizer)[1] == ['ÿ']
        assert sample.stop_rules(['é€', 'a\\\\b'], tokenizer)[1] == ['é€', 'a\\b']  # other characters as they are
    for bad in ('C:\\x', '\\', '\\q'):
        with pytest.raises(sample.UserError, match=r"^stop string .*; write a backslash itself as \\\\$"):
            sample.stop_rules(bad, tokenizer)


def test_a_bad_stop_escape_is_a_one_line_error(shakespeare_char_dir, tmp_path, capsys):
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, max_iters=2, eval_interval=2))[0] == 0
    err = one_line_error(capsys, sample.main, sample_args(tmp_path, stop='C:\\x', num_samples=1))
    assert err == "error: stop string 'C:\\x': truncated \\xXX escape; write a backslash itself as \\\\\n"


# ---------------------------------------------------------------------------
# 5. Prompt and reference files that are not UTF-8


def test_files_that_are_not_utf8_are_one_line_errors(shakespeare_char_dir, translator_dir, tmp_path, capsys):
    latin1, good = tmp_path / 'latin1.txt', tmp_path / 'good.txt'
    latin1.write_bytes(NOT_UTF8)
    good.write_text('ein hund läuft .\n', encoding='utf-8')
    gpt = tmp_path / 'gpt'
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, gpt, max_iters=2, eval_interval=2))[0] == 0
    for out_dir in (gpt, translator_dir):
        err = one_line_error(capsys, sample.main, sample_args(out_dir, start=f'FILE:{latin1}', num_samples=1))
        assert err == f'error: prompt file {latin1} is not UTF-8 text (byte 3: invalid continuation byte): save it as UTF-8\n'
    err = one_line_error(capsys, sample.main, sample_args(translator_dir, start=f'FILE:{good}', reference=latin1))
    assert err.startswith(f'error: reference file {latin1} is not UTF-8 text')


# ---------------------------------------------------------------------------
# 6. A masked-LM batch with no masked token counts zero targets and goes on


@pytest.fixture(scope='module')
def mlm_corpus_dir(tmp_path_factory):
    from prepare import mlm_corpus
    raw = tmp_path_factory.mktemp('raw')
    (raw / 'text.txt').write_text('\n'.join(PHRASES * 10) + '\n', encoding='utf-8')
    return mlm_corpus.prepare(out_dir=tmp_path_factory.mktemp('mlm'), input_path=raw, vocab_size=256,
                              val_fraction=0.2, sst2_dir=tmp_path_factory.mktemp('no_sst2'))


def test_masked_lm_batches_with_nothing_masked_weigh_nothing(mlm_corpus_dir, tmp_path, capsys):
    """mask_prob so small that no token is chosen: training steps and evaluations go on (no 0/0)."""
    args = tiny_args(mlm_corpus_dir, tmp_path, model_type='encoder', mask_prob=1e-9, max_iters=4, eval_interval=2,
                     block_size=16)
    status, out, err = run_script(capsys, train.main, args)
    assert status == 0, err
    losses = [r['loss'] for r in read_metrics(tmp_path) if 'loss' in r]
    assert losses == [0.0] * 4  # nothing to guess: no loss, and no gradient
    assert 'step 4: train loss nan, val loss nan' in out  # nothing to score either


# ---------------------------------------------------------------------------
# 7. Inputs longer than the trained length, read whole by computed positions, in bf16 too


@pytest.mark.parametrize('pos_emb', ['sinusoidal', 'rope'])
def test_longer_inputs_than_trained_run_in_bfloat16(pos_emb):
    torch.manual_seed(0)
    encoder = Encoder(EncoderConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16, pos_emb=pos_emb))
    translator = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=40, n_layer=1, n_head=2, n_embd=16, src_block_size=8,
                                                  tgt_block_size=8, pos_emb=pos_emb))
    tokens = torch.randint(5, 40, (2, 20))
    for model in (encoder, translator):
        model.eval().to(torch.bfloat16)  # as sample.py holds the weights on a CPU with bf16
        logits = model(tokens)[0] if model is encoder else model(tokens, tokens[:, :12])[0]
        assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_a_classifier_labels_a_sentence_longer_than_it_was_trained_on_in_bfloat16(classifier_dir, capsys):
    status, out, err = run_script(capsys, sample.main, [*sample_args(classifier_dir, start=' '.join(PHRASES[:4])),
                                                        '--dtype=bfloat16'])
    assert status == 0, err
    assert out.strip().split()[0] in ('0', '1')


# ---------------------------------------------------------------------------
# 10. --vocab_size smaller than the dataset's vocabulary


def test_a_vocab_size_smaller_than_the_datasets_is_refused_before_training(shakespeare_char_dir, tmp_path, capsys):
    err = one_line_error(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, vocab_size=50))
    assert err.startswith('error: --vocab_size=50 is smaller than dataset ') and "vocabulary of 65 tokens" in err
    assert not os.path.exists(tmp_path / 'metrics.jsonl')
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, vocab_size=128, max_iters=2,
                                                    eval_interval=2))[0] == 0  # padding it up is fine


# ---------------------------------------------------------------------------
# 11. GPT-2 weights: one line without network; a local folder in Hugging Face's format works both ways


def test_gpt2_weights_without_network_are_a_one_line_error_naming_the_way_out(tmp_path):
    pytest.importorskip('transformers')
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}  # as a machine without network, without waiting for retries
    (tmp_path / 'bpe').mkdir()  # GPT-2 BPE tokens without a meta.pkl, as prepare/openwebtext.py writes them
    for split in ('train', 'val'):
        torch.randint(50257, (100,), dtype=torch.int32).numpy().astype('uint16').tofile(tmp_path / 'bpe' / f'{split}.bin')
    for script, args in (('sample.py', sample_args(tmp_path, init_from='gpt2', num_samples=1)),
                         ('train.py', tiny_args(tmp_path / 'bpe', tmp_path / 'out', init_from='gpt2'))):
        result = subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: could not download the weights of gpt2 (")
        assert '--init_from=<its folder>' in result.stderr


def test_an_exported_folder_starts_a_run_and_samples_with_the_same_model(shakespeare_char_dir, tmp_path, capsys):
    """export, import, the same logits: a round trip through Hugging Face's format."""
    pytest.importorskip('transformers')
    run, folder, tuned = tmp_path / 'run', tmp_path / 'hf', tmp_path / 'tuned'
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, run, max_iters=4, eval_interval=4))[0] == 0
    assert run_script(capsys, export.main, [f'--out_dir={run}', f'--to={folder}'])[0] == 0
    checkpoint = load_checkpoint(str(run))
    ours = GPT(GPTConfig(**checkpoint['model_args']))
    ours.load_state_dict(checkpoint['model'])
    imported = GPT.from_pretrained(str(folder))
    x = torch.randint(0, 65, (2, 32))
    assert torch.allclose(imported.eval()(x, x)[0], ours.eval()(x, x)[0], atol=1e-5)
    greedy = dict(start='ROMEO:', num_samples=1, max_new_tokens=20, temperature=0, stop='none')
    from_run = run_script(capsys, sample.main, sample_args(run, **greedy))
    from_folder = run_script(capsys, sample.main, sample_args('unused', init_from=folder, **greedy))
    assert from_folder[0] == 0 and from_folder[1] == from_run[1], from_folder[2]
    status, out, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tuned, init_from=str(folder),
                                                                max_iters=2, eval_interval=2))
    assert status == 0, err
    last = [m for m in read_metrics(run) if 'val_loss' in m][-1]
    first = [m for m in read_metrics(tuned) if 'val_loss' in m][0]
    assert first['iter'] == 0 and first['val_loss'] == pytest.approx(last['val_loss'], rel=1e-5)


def test_a_downloaded_gpt2_folder_is_read_with_gpt2s_tokenizer(tmp_path, capsys):
    """A folder as transformers' save_pretrained writes GPT-2 (random weights here, small): sample.py reads it."""
    transformers = pytest.importorskip('transformers')
    from conftest import SHARED
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32))
    hf.save_pretrained(tmp_path)
    cache = SHARED / 'tiktoken_cache'
    if not cache.is_dir():
        pytest.skip('tiktoken cache mirror absent')
    (tmp_path / 'vocab.json').write_bytes((cache / '6c7ea1a7e38e3a7f062df639a5b80947f075ffe6').read_bytes())
    assert len(json.loads((tmp_path / 'vocab.json').read_text())) == 50257
    status, out, err = run_script(capsys, sample.main, sample_args('unused', init_from=tmp_path, start='Hello',
                                                                   num_samples=1, max_new_tokens=5, stop='none'))
    assert status == 0 and out.strip(), err


# ---------------------------------------------------------------------------
# 12. An empty input file: nothing to translate or label


def test_an_empty_input_file_is_a_one_line_error(translator_dir, classifier_dir, tmp_path, capsys):
    empty = tmp_path / 'empty.txt'
    empty.write_text('')
    for out_dir, what in ((translator_dir, 'translate'), (classifier_dir, 'label')):
        err = one_line_error(capsys, sample.main, sample_args(out_dir, start=f'FILE:{empty}', reference=empty))
        assert err == f'error: {empty} is empty: there is no sentence to {what}\n'


# ---------------------------------------------------------------------------
# 13. sample.py --compile on an encoder


def test_compile_on_an_encoder_compiles_its_forward(classifier_dir, capsys, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, 'compile', lambda fn, **kwargs: compiled.append(fn.__name__) or fn)
    status, out, err = run_script(capsys, sample.main, sample_args(classifier_dir, start='a witty movie .',
                                                                   compile=True))
    assert status == 0, err
    assert compiled == ['forward'] and out.startswith(('0 (probability', '1 (probability'))

