"""train.py with model_type='encoder': masked-language-model pretraining on a small corpus, fine-tuning
a classifier on SST-2 from it (init_from=<out_dir>), exact resumption of both stages, sample.py on
the result; and init_from=<out_dir> for GPT (fine-tuning one's own model) and its errors."""
import gzip
import shutil

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import model
import sample
import train
from checkpoint import load_checkpoint, model_from_checkpoint
from configurator import configure
from data import LabelledSentences, MaskedSentences
from prepare import mlm_corpus, sst2
from test_encoder import SST2, needs_mirrors, review_lines
from test_train import read_metrics, run_script, tiny_args, training_losses

pytestmark = needs_mirrors

TINY = dict(model_type='encoder', n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8, eval_iters=2,
            learning_rate=3e-3, warmup_iters=5, weight_decay=0.01)


@pytest.fixture(scope='module')
def corpus_dir(tmp_path_factory):
    """1,500 sentences of the movie reviews, prepared by prepare/mlm_corpus.py with a small vocabulary."""
    pytest.importorskip('tokenizers')
    raw = tmp_path_factory.mktemp('raw')
    (raw / 'reviews.txt').write_text('\n'.join(review_lines(1500)) + '\n', encoding='utf-8')
    return mlm_corpus.prepare(out_dir=tmp_path_factory.mktemp('corpus'), input_path=raw, vocab_size=400,
                              val_fraction=0.05, sst2_dir=SST2)


@pytest.fixture(scope='module')
def sst2_dir(corpus_dir, tmp_path_factory):
    """SST-2 in the corpus's vocabulary: its first 128 train sentences (few enough for a tiny model to
    learn in seconds) and the whole dev split (872 sentences)."""
    raw = tmp_path_factory.mktemp('sst2_raw')
    with gzip.open(SST2 / 'train.tsv.gz', 'rt', encoding='utf-8') as f:
        (raw / 'train.tsv').write_text(''.join(f.readlines()[:129]), encoding='utf-8')  # the header and 128
    shutil.copy(SST2 / 'dev.tsv.gz', raw / 'dev.tsv.gz')
    return sst2.prepare(out_dir=tmp_path_factory.mktemp('sst2'), input_path=raw, tokenizer_from=corpus_dir)


def mlm_args(corpus_dir, out_dir, **overrides):
    return tiny_args(corpus_dir, out_dir, **{**TINY, 'mask_prob': 0.3, 'learning_rate': 1e-2, 'max_iters': 30,
                                              'lr_decay_iters': 30,
                                              'eval_interval': 15, **overrides})


def finetune_args(sst2_dir, out_dir, source, **overrides):
    settings = {**TINY, 'init_from': str(source), 'dropout': 0.1, 'max_iters': 30, 'lr_decay_iters': 30,
                'eval_interval': 15, **overrides}
    taken = tuple(f'--{key}=' for key in ('n_layer', 'n_head', 'n_embd', 'block_size') if key not in overrides)
    return [arg for arg in tiny_args(sst2_dir, out_dir, **settings) if not arg.startswith(taken)]  # from the source


@pytest.fixture(scope='module')
def pretrained(corpus_dir, tmp_path_factory):
    """The out_dir of a tiny masked-language model trained for 30 steps."""
    out_dir = tmp_path_factory.mktemp('mlm')
    train.main(mlm_args(corpus_dir, out_dir, eval_iters=8))  # ~600 masked tokens: an accuracy that is not noise
    return out_dir


def evaluations(out_dir):
    return [m for m in read_metrics(out_dir) if 'val_loss' in m]


def test_masked_lm_pretraining_learns_and_logs_masked_accuracy(pretrained):
    evals = evaluations(pretrained)
    assert [m['iter'] for m in evals] == [0, 15, 30]
    assert evals[-1]['val_loss'] < evals[0]['val_loss'] - 0.3
    assert all(0.0 <= m['val_acc'] <= 1.0 for m in evals) and evals[-1]['val_acc'] > evals[0]['val_acc']
    losses = training_losses(pretrained)
    assert sum(losses[i] for i in range(26, 31)) < sum(losses[i] for i in range(1, 6))
    checkpoint = load_checkpoint(str(pretrained))
    assert checkpoint['model_type'] == 'encoder' and checkpoint['model_args']['n_classes'] == 0
    assert 'label_names' not in checkpoint


@pytest.mark.parametrize('pack_sentences', [True, False])
def test_tokens_per_second_count_every_token_read_not_only_the_masked_ones(corpus_dir, sst2_dir, pack_sentences):
    """tok/s and MFU count the tokens a batch feeds the encoder: whole rows for masked-LM (about
    1/mask_prob times the tokens the loss counts), [CLS] sentence [SEP] for a classifier."""
    generator = torch.Generator().manual_seed(0)
    data = MaskedSentences(corpus_dir, 32, 'cpu', mask_prob=0.3, pack_sentences=pack_sentences)
    rows = data.draw('train', 64, generator)
    inputs, targets = data.batch('train', rows)[:2]
    assert data.num_inputs('train', rows) == int((inputs != data.pad_id).sum())
    assert data.num_targets('train', rows) == int((targets != -1).sum()) < 0.45 * data.num_inputs('train', rows)
    labelled = LabelledSentences(sst2_dir, 16, 'cpu', pack_sentences=pack_sentences)
    rows = labelled.draw('train', 64, generator)
    tokens = labelled.batch('train', rows)[0]
    assert labelled.num_inputs('train', rows) == int((tokens != labelled.pad_id).sum())
    assert labelled.num_targets('train', rows) == 64


def test_masked_lm_mfu_counts_the_vocabulary_matrix_at_the_masked_share(corpus_dir, tmp_path):
    config, explicit = configure(train.DEFAULTS, mlm_args(corpus_dir, tmp_path, mask_prob=0.3), sources=[train.__file__])
    trainer = train.Trainer(train.Settings(**config), explicit)
    expected = trainer.raw_model.flops_per_token(mask_prob=0.3) * 1000 / 0.5 / trainer.peak
    assert trainer.mfu(1000, 0.5) == pytest.approx(expected)
    assert expected < trainer.raw_model.flops_per_token(mask_prob=1.0) * 1000 / 0.5 / trainer.peak


def test_finetuning_loads_the_body_with_a_fresh_head_and_optimizer(pretrained, sst2_dir, tmp_path):
    config, explicit = configure(train.DEFAULTS, finetune_args(sst2_dir, tmp_path / 'ft', pretrained),
                                 sources=[train.__file__])
    tuned = train.Trainer(train.Settings(**config), explicit)
    config, explicit = configure(train.DEFAULTS, finetune_args(sst2_dir, tmp_path / 'new', pretrained,
                                                               init_from='scratch', n_layer=2, n_head=2, n_embd=32,
                                                               block_size=32), sources=[train.__file__])
    fresh = train.Trainer(train.Settings(**config), explicit)
    assert tuned.iter_num == 0 and tuned.best_val_loss == float('inf')
    assert all(not opt.state for opt in tuned.optimizers)  # no optimizer state: it starts fresh
    source = load_checkpoint(str(pretrained))['model']
    state, new = tuned.raw_model.state_dict(), fresh.raw_model.state_dict()
    assert tuned.raw_model.config.n_classes == 2 and tuned.cfg.n_embd == 32  # the architecture of the source
    for name, weight in state.items():
        if name.startswith('classifier.'):  # the head as a new model's (the same seed), not trained
            assert torch.equal(weight, new[name]), name
        else:
            assert torch.equal(weight, source[name]), name


def test_finetuning_learns_logs_accuracy_on_the_whole_dev_set_and_samples(pretrained, sst2_dir, tmp_path, capsys):
    out_dir = tmp_path / 'ft'
    status, out, err = run_script(capsys, train.main, finetune_args(sst2_dir, out_dir, pretrained, max_iters=100,
                                                                     lr_decay_iters=100, eval_interval=50,
                                                                     batch_size=16))
    assert status == 0, err
    assert f'initialised from {pretrained}/ckpt.pt (iteration 30) (its body: the head starts fresh)' in out
    steps = [line for line in out.splitlines() if line.startswith('step ')]
    assert len(steps) == 3 and all(', val acc ' in line and line.endswith('%') for line in steps)
    evals = evaluations(out_dir)
    assert [m['iter'] for m in evals] == [0, 50, 100]  # a fresh step count and fresh metrics
    assert evals[-1]['train_loss'] < evals[0]['train_loss'] - 0.3  # it learns (the train sentences: 128 are few)
    assert 0 <= evals[-1]['val_loss'] and 0 <= evals[-1]['val_acc'] <= 1
    assert all(round(m['val_acc'] * 872) == pytest.approx(m['val_acc'] * 872, abs=1e-6) for m in evals)  # all 872
    checkpoint = load_checkpoint(str(out_dir))
    assert checkpoint['label_names'] == ['0', '1'] and checkpoint["iter_num"] == 100

    sentences, labels = tmp_path / 'x.txt', tmp_path / 'y.txt'
    sentences.write_text(''.join((sst2_dir / 'val.txt').read_text().splitlines(keepends=True)[:25]))
    labels.write_text(''.join((sst2_dir / 'val.labels.txt').read_text().splitlines(keepends=True)[:25]))
    status, out, err = run_script(capsys, sample.main, [f'--out_dir={out_dir}', f'--start=FILE:{sentences}',
                                                        f'--reference={labels}', '--device=cpu'])
    assert status == 0, err
    assert len(out.splitlines()) == 25 and set(out.split()) <= {'0', '1'}
    assert 'accuracy ' in err and "100 iterations" in err


def test_finetuning_on_packed_sentences_takes_the_steps_of_one_sentence_a_row(pretrained, sst2_dir, tmp_path, capsys):
    """pack_sentences (the default) only spares the padding: without dropout, the same losses step by step."""
    runs = {pack: tmp_path / str(pack) for pack in (True, False)}
    for pack, out_dir in runs.items():
        args = finetune_args(sst2_dir, out_dir, pretrained, dropout=0.0, max_iters=10, pack_sentences=pack)
        assert run_script(capsys, train.main, args)[0] == 0
    packed, padded = training_losses(runs[True]), training_losses(runs[False])
    assert sorted(packed) == list(range(1, 11)) and packed == pytest.approx(padded, abs=1e-5)
    assert packed[10] != pytest.approx(packed[1], abs=1e-3)  # the steps moved the weights


@pytest.mark.parametrize('stage', ['pretraining', 'finetuning'])
def test_both_stages_resume_exactly(stage, corpus_dir, sst2_dir, pretrained, tmp_path, capsys):
    def args(out_dir, **settings):
        settings = {'max_iters': 12, 'lr_decay_iters': 12, 'eval_interval': 6, **settings}
        if stage == 'pretraining':
            return mlm_args(corpus_dir, out_dir, **settings)
        return finetune_args(sst2_dir, out_dir, pretrained, **settings)
    straight, split = tmp_path / 'straight', tmp_path / 'split'
    assert run_script(capsys, train.main, args(straight))[0] == 0
    assert run_script(capsys, train.main, args(split, max_iters=6))[0] == 0
    status, out, err = run_script(capsys, train.main, args(split, init_from='resume'))
    assert status == 0, err
    assert f'resuming from {split}/ckpt.pt at iteration 6' in out
    expected, resumed = training_losses(straight), training_losses(split)
    assert [resumed[i] for i in range(7, 13)] == [expected[i] for i in range(7, 13)]  # bit-identical
    accuracies = [{m['iter']: m['val_acc'] for m in evaluations(out_dir)} for out_dir in (split, straight)]
    assert accuracies[0] == accuracies[1] and sorted(accuracies[0]) == [0, 6, 12]


def test_gpt_finetunes_from_another_runs_out_dir(shakespeare_char_dir, tmp_path, capsys):
    source, tuned = tmp_path / 'source', tmp_path / 'tuned'
    assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, source, max_iters=10))[0] == 0
    args = tiny_args(shakespeare_char_dir, tuned, max_iters=4, learning_rate=1e-4, init_from=str(source))
    args = [a for a in args if not a.startswith(('--n_layer', '--n_head', '--n_embd', '--block_size'))]
    status, out, err = run_script(capsys, train.main, args)
    assert status == 0, err
    assert f'initialised from {source}/ckpt.pt (iteration 10)' in out
    first = evaluations(tuned)[0]
    last_of_source = evaluations(source)[-1]
    assert first['iter'] == 0
    # the same evaluation batches: the source model's own losses, so its weights were loaded whole
    assert first['val_loss'] == last_of_source['val_loss'] and first['train_loss'] == last_of_source['train_loss']
    assert load_checkpoint(str(tuned))['iter_num'] == 4


def test_init_from_refuses_another_tokenizer_or_architecture(pretrained, sst2_dir, tmp_path, capsys):
    other = sst2.prepare(out_dir=tmp_path / 'sst2_own_vocab', input_path=SST2, tokenizer_from=None, vocab_size=300)
    status, out, err = run_script(capsys, train.main, finetune_args(other, tmp_path / 'ft', pretrained))
    assert status == 1
    assert err.count('\n') == 1 and 'another tokenizer' in err
    status, out, err = run_script(capsys, train.main, finetune_args(sst2_dir, tmp_path / 'ft', pretrained, n_layer=3))
    assert status == 1
    assert err.count('\n') == 1 and '--n_layer=3 differs from the checkpoint' in err
    status, out, err = run_script(capsys, train.main, finetune_args(other, tmp_path / 'ft', tmp_path / 'nothing'))
    assert status == 1
    assert err.count('\n') == 1 and 'has no ckpt.pt or ckpt.dcp' in err


# ---------------------------------------------------------------------------
# Steps that never wait for the device


class DeviceWaits(TorchDispatchMode):
    """Counts the ops after which the host must wait for the device: a value read back (.item()), or a
    shape that depends on values (nonzero, indexing by a boolean mask, masked_select)."""
    WAITS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
             torch.ops.aten.masked_select.default}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default) and any(
            index is not None and index.dtype == torch.bool for index in args[1])
        self.count += func in self.WAITS or boolean_index
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('stage', ['pretraining', 'finetuning'])
def test_encoder_steps_do_not_wait_for_the_device(corpus_dir, sst2_dir, pretrained, tmp_path, capsys, monkeypatch,
                                                  stage):
    """The forward and backward passes of a masked-LM step and of a packed classifier's: on a GPU, a
    boolean-mask index (the masked tokens, the [CLS]s) would make every micro-step wait for the device."""
    waits, steps = DeviceWaits(), []
    real_forward, real_backward = model.Encoder.forward, train.Trainer.backward

    def forward(self, *args, **kwargs):
        with waits:
            return real_forward(self, *args, **kwargs)

    def backward(self, loss):
        with waits:
            real_backward(self, loss)
        steps.append(waits.count)
    monkeypatch.setattr(model.Encoder, 'forward', forward)
    monkeypatch.setattr(train.Trainer, 'backward', backward)
    args = mlm_args(corpus_dir, tmp_path, max_iters=6, eval_interval=100) if stage == 'pretraining' else \
        finetune_args(sst2_dir, tmp_path, pretrained, max_iters=6, eval_interval=100, pack_sentences=True)
    status, out, err = run_script(capsys, train.main, args)
    assert status == 0, err
    assert len(steps) == 6 and steps[-1] == 0


def test_lora_finetunes_a_classifier_adapters_and_fresh_head_alone(pretrained, sst2_dir, tmp_path, capsys):
    """LoRA on the masked-LM's body: the adapters and the new classifier head train, the body stays as it was;
    the checkpoint holds those alone, and sample.py labels with the body, the adapters and the head together."""
    out_dir = tmp_path / 'lora'
    status, out, err = run_script(capsys, train.main, finetune_args(sst2_dir, out_dir, pretrained, max_iters=10,
                                                                     lora_rank=4, lora_targets='attn+mlp'))
    assert status == 0, err
    checkpoint = load_checkpoint(str(out_dir))
    assert {name.split('.')[0] if name.startswith('classifier.') else name.rsplit('.', 1)[-1]
            for name in checkpoint['model']} == {'classifier', 'lora_A', 'lora_B'}
    body = {name: w for name, w in load_checkpoint(str(pretrained))['model'].items() if not name.startswith('mlm_head.')}
    adapted = model_from_checkpoint(checkpoint, adapters=True).state_dict()
    for name, weight in body.items():
        assert torch.equal(adapted[name], weight), name
    status, out, err = run_script(capsys, sample.main, [f'--out_dir={out_dir}', '--device=cpu',
                                                        '--start=a gorgeous , witty , seductive movie .'])
    assert status == 0 and 'probability' in out, err


def test_a_lora_masked_lm_run_gives_a_classifier_its_merged_body(corpus_dir, pretrained, sst2_dir, tmp_path):
    """LoRA on the masked-LM task itself (its head trains afresh), then init_from=<that run>: the body merged."""
    train.main(mlm_args(corpus_dir, tmp_path / 'mlm', init_from=pretrained, max_iters=4, lora_rank=2))
    merged = model_from_checkpoint(load_checkpoint(str(tmp_path / 'mlm'))).state_dict()
    config, explicit = configure(train.DEFAULTS, finetune_args(sst2_dir, tmp_path / 'ft', tmp_path / 'mlm'),
                                 sources=[train.__file__])
    state = train.Trainer(train.Settings(**config), explicit).raw_model.state_dict()
    body = [name for name in state if not name.startswith('classifier.')]
    assert any('attn.c_attn' in name for name in body)
    for name in body:
        assert torch.equal(state[name], merged[name]), name
