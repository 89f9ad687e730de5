"""export.py on encoders: transformers' RobertaPreLayerNorm gives our logits, its pipelines run."""
import pytest
import torch

import export
from configurator import UserError
from model import Encoder, EncoderConfig
from tokenizer import MaskedLMTokenizer

transformers = pytest.importorskip('transformers')

SENTENCES = ['a gorgeous , witty , seductive movie .', 'the plot is a dull mess .', 'this movie is great fun .',
             'an awful , boring film .', 'a moving and funny story .', 'it is not good at all .'] * 3


@pytest.fixture(scope='module')
def tokenizer():
    return MaskedLMTokenizer.train(SENTENCES, vocab_size=120)


def checkpoint_of(tokenizer, n_classes=0, **options):
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=tokenizer.vocab_size, block_size=24, n_layer=2, n_head=2, n_embd=16,
                           n_classes=n_classes, pad_id=tokenizer.pad_id, **options)
    model = Encoder(config)
    with torch.no_grad():  # clearly non-zero everywhere, so that a misplaced weight shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval(), {'model': model.state_dict(), 'model_args': dict(vars(config)), 'model_type': 'encoder',
                          'iter_num': 1, 'tokenizer': tokenizer.state(), 'label_names': ['neg', 'pos'][:n_classes]}


def padded_batch(tokenizer, texts):
    rows = [[tokenizer.cls_id, *tokenizer.encode(t), tokenizer.sep_id] for t in texts]
    ids = torch.full((len(rows), max(map(len, rows))), tokenizer.pad_id)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    return ids


@pytest.mark.parametrize('options', [dict(), dict(bias=False), dict(mlp='gelu_tanh')],
                         ids=['classic', 'no-bias', 'gelu_tanh'])
def test_masked_lm_export_gives_our_logits_and_fills_masks(tmp_path, tokenizer, options):
    model, checkpoint = checkpoint_of(tokenizer, **options)
    export.export(checkpoint, tmp_path)
    theirs = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(theirs).__name__ == 'RobertaPreLayerNormForMaskedLM'
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    texts = ['this movie is [MASK] .', 'a gorgeous , witty and seductive [MASK] , not a dull mess .']
    ids = padded_batch(tokenizer, texts)
    encoded = hf_tokenizer(texts, padding=True, return_tensors='pt')
    assert torch.equal(encoded['input_ids'], ids)  # the same ids, [CLS] and [SEP] included
    with torch.no_grad():
        ours = model(ids)[0]
        hf = theirs(**encoded).logits
    real = ids != tokenizer.pad_id
    torch.testing.assert_close(hf[real], ours[real], atol=1e-4, rtol=1e-4)
    fills = transformers.pipeline('fill-mask', model=str(tmp_path), top_k=3)('this movie is [MASK] .')
    assert len(fills) == 3 and all(0 < fill['score'] <= 1 for fill in fills)


def test_classifier_export_gives_our_logits_and_labels(tmp_path, tokenizer):
    model, checkpoint = checkpoint_of(tokenizer, n_classes=2)
    export.export(checkpoint, tmp_path)
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    texts = SENTENCES[:4]
    with torch.no_grad():
        ours = model(padded_batch(tokenizer, texts))[0]
        hf = theirs(**hf_tokenizer(texts, padding=True, return_tensors='pt')).logits
    torch.testing.assert_close(hf, ours, atol=1e-4, rtol=1e-4)
    results = transformers.pipeline('text-classification', model=str(tmp_path))(texts)
    assert [r['label'] for r in results] == [['neg', 'pos'][i] for i in ours.argmax(dim=-1).tolist()]


@pytest.mark.parametrize('option, value', [('pos_emb', 'rope'), ('norm', 'rmsnorm'), ('mlp', 'swiglu'),
                                           ('qk_norm', True)])
def test_options_roberta_cannot_express_are_refused_by_name(tmp_path, tokenizer, option, value):
    _, checkpoint = checkpoint_of(tokenizer, **{option: value})
    with pytest.raises(UserError, match=f"{option}=.*has no RoBERTa equivalent"):
        export.export(checkpoint, tmp_path)
