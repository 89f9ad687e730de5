"""sample.py on encoder checkpoints: [MASK] fills of a masked-language model, labels of a classifier."""
import pytest
import torch

import generate
import sample
from checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from conftest import widen
from model import Encoder, EncoderConfig
from test_train import run_script
from tokenizer import MaskedLMTokenizer

SENTENCES = ['a gorgeous , witty , seductive movie .', 'the plot is a dull mess .', 'this movie is great fun .',
             'an awful , boring film .', 'a moving and funny story .', 'it is not good at all .'] * 3


@pytest.fixture(scope='module')
def tokenizer():
    pytest.importorskip('tokenizers')
    return MaskedLMTokenizer.train(SENTENCES, vocab_size=120)


def write_checkpoint(out_dir, tokenizer, n_classes, **extra):
    """A random encoder's checkpoint; its weights wide, so that its labels differ from sentence to sentence."""
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                           n_classes=n_classes, pad_id=tokenizer.pad_id)
    model = widen(Encoder(config), std=1.0)
    save_checkpoint({'model': model.state_dict(), 'model_args': dict(vars(config)), 'model_type': 'encoder',
                     'iter_num': 7, 'tokenizer': tokenizer.state(), 'elapsed': 60.0, **extra}, out_dir)
    return model.eval()


def args(out_dir, **settings):
    return [f'--out_dir={out_dir}', '--device=cpu', '--dtype=float32', *[f'--{k}={v}' for k, v in settings.items()]]


@pytest.fixture
def classifier_dir(tmp_path, tokenizer):
    write_checkpoint(tmp_path, tokenizer, 2, label_names=['negative', 'positive'])
    return tmp_path


def own_labels(out_dir, tokenizer, sentences):
    """(label name, probability) of each sentence, read alone by the checkpoint's model: what sample.py must print."""
    checkpoint = load_checkpoint(str(out_dir))
    model = model_from_checkpoint(checkpoint).eval()
    labels = []
    for sentence in sentences:
        with torch.no_grad():
            logits, _ = model(torch.tensor([[tokenizer.cls_id, *tokenizer.encode(sentence), tokenizer.sep_id]]))
        p = logits[0].softmax(dim=-1)
        labels.append((checkpoint['label_names'][int(p.argmax())], float(p.max())))
    return labels


def test_fill_mask_prints_the_likeliest_tokens_of_each_mask(tmp_path, tokenizer, capsys):
    model = write_checkpoint(tmp_path, tokenizer, 0)
    status, out, err = run_script(capsys, sample.main, args(tmp_path, start='this movie is [MASK] , [MASK] .', fills=3))
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == 'this movie is [MASK] , [MASK] .' and len(lines) == 3
    assert lines[1].startswith('  [MASK] 1: ') and lines[2].startswith('  [MASK] 2: ')
    fills = generate.fill_masks(model, tokenizer, 'this movie is [MASK] , [MASK] .', k=3)
    assert len(fills) == 2 and all(len(f) == 3 for f in fills)
    probabilities = [p for _, p in fills[0]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1


def test_a_file_gets_exactly_one_label_per_line_and_the_accuracy(classifier_dir, tokenizer, tmp_path, capsys):
    sentences = tmp_path / 'sentences.txt'
    sentences.write_text('\n'.join(SENTENCES) + '\n')
    status, out, err = run_script(capsys, sample.main, args(classifier_dir, start=f'FILE:{sentences}'))
    assert status == 0, err
    labels = out.splitlines()
    assert labels == [label for label, _ in own_labels(classifier_dir, tokenizer, SENTENCES)]
    assert set(labels) == {'negative', 'positive'}  # both: a label printed for the wrong line would show
    references = tmp_path / 'labels.txt'
    references.write_text('\n'.join(['positive', 'negative'] * (len(SENTENCES) // 2)) + '\n')
    status, out2, err = run_script(capsys, sample.main, args(classifier_dir, start=f'FILE:{sentences}',
                                                             reference=str(references)))
    assert status == 0 and out2 == out
    correct = sum(a == b for a, b in zip(labels, references.read_text().splitlines()))
    assert err.startswith(f"accuracy {100 * correct / len(labels):.2f}% ({correct}/{len(labels)}) | ")
    assert 'parameters' in err and 'trained 1.0 min' in err


@pytest.mark.parametrize('sentence', SENTENCES[:4])
def test_one_sentence_gets_its_label_and_probability(classifier_dir, tokenizer, capsys, sentence):
    status, out, _ = run_script(capsys, sample.main, args(classifier_dir, start=sentence))
    assert status == 0
    label, probability = out.strip().removesuffix(')').split(' (probability ')
    expected_label, expected_probability = own_labels(classifier_dir, tokenizer, [sentence])[0]
    assert label == expected_label and float(probability) == pytest.approx(expected_probability, abs=1e-3)


def test_labels_do_not_depend_on_the_batch(classifier_dir, tokenizer):
    model = write_checkpoint(classifier_dir, tokenizer, 2)
    alone = [generate.label_sentences(model, tokenizer, [s])[0] for s in SENTENCES[:6]]
    together = generate.label_sentences(model, tokenizer, SENTENCES[:6], batch_size=4)
    assert [label for label, _ in alone] == [label for label, _ in together]
    for (_, p), (_, q) in zip(alone, together):
        assert p == pytest.approx(q, abs=1e-5)


@pytest.mark.parametrize('kind, start, reference, message', [
    ('classifier', 'this movie is [MASK] .', None, "the text has a [MASK], but this checkpoint is a classifier"),
    ('classifier', 'FILE:{tmp}/s.txt', 'x\ny\nz\n', "{tmp}/ref.txt has 3 lines but 2 sentences are to be labelled"),
    ('classifier', 'FILE:{tmp}/s.txt', '1\npositive\n', "{tmp}/ref.txt has labels the model does not know: 'positive'"),
    ('classifier', 'FILE:{tmp}/empty.txt', None, "line 2 of {tmp}/empty.txt is empty"),
    ('mlm', 'a fine movie .', None, "the text has no [MASK]: this masked-language model fills [MASK]s"),
    ('mlm', 'a [MASK] movie .', '1\n', "this checkpoint is a masked-language model: it has no labels"),
])
def test_bad_input_is_a_one_line_error(tmp_path, tokenizer, capsys, kind, start, reference, message):
    out_dir = tmp_path / 'out'
    write_checkpoint(out_dir, tokenizer, 2 if kind == 'classifier' else 0, label_names=['0', '1'])
    (tmp_path / 's.txt').write_text('a fine movie .\na dull one .\n')
    (tmp_path / 'empty.txt').write_text('a fine movie .\n\nfine .\n')
    settings = dict(start=start.format(tmp=tmp_path))
    if reference is not None:
        (tmp_path / 'ref.txt').write_text(reference)
        settings['reference'] = str(tmp_path / 'ref.txt')
    status, out, err = run_script(capsys, sample.main, args(out_dir, **settings))
    assert status == 1 and out == '', (out, err)
    assert len(err.splitlines()) == 1 and err.startswith('error: ' + message.format(tmp=tmp_path)), err
