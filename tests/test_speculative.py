"""Speculative decoding (generate.speculative_rows, sample.py --draft): greedy gives plain greedy's tokens, sampling
the model's distribution, rows that keep different counts stay exact, the caches roll back, bad drafts are refused."""
import copy
import math

import pytest
import torch

import generate
import sample
from checkpoint import load_checkpoint
from conftest import switches, widen
from generate import KVCache
from model import GPT, GPTConfig
from test_sample import SEPARATOR, sample_args, trained_dir  # noqa: F401 (a fixture)
from test_train import run_script


def models(pos_emb, vocab_size=32, block_size=24, std=0.3, noise=0.03):
    """A model with wide weights and its draft: the same model with noise on every matrix, so that the draft's
    tokens are often the model's, not always (both kept and rejected tokens happen)."""
    torch.manual_seed(0)
    model = widen(GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32,
                                pos_emb=pos_emb)).eval(), std)
    draft = copy.deepcopy(model)
    with torch.no_grad():
        for p in draft.parameters():
            if p.dim() >= 2:
                p.add_(torch.randn_like(p) * noise)
    return model, draft


def rows_of(pairs):
    """(row, token) pairs, as sample_rows yields them -> {row: its tokens}."""
    rows = {}
    for row, token in pairs:
        rows.setdefault(row, []).append(token)
    return rows


@pytest.mark.parametrize('pos_emb', ['learned', 'rope'])
def test_greedy_speculative_decoding_gives_plain_greedys_tokens(pos_emb):
    """Prompts far from block_size (24), near it, at it and past it; 30 new tokens cross it (the plain sliding window
    after); with and without a stop; 1, 3 and 4 draft tokens a pass."""
    model, draft = models(pos_emb)
    stats = {}
    for length in (1, 6, 19, 22, 24, 25):
        prompt = torch.randint(0, 32, (1, length), generator=torch.Generator().manual_seed(length))
        plain = rows_of(generate.sample_rows(model, prompt, 2, 30, temperature=0.0))
        assert switches(torch.tensor([plain[0]])).item() >= 5  # the output moves: a wrong context would show
        stop = plain[0][12]
        stopped = rows_of(generate.sample_rows(model, prompt, 2, 30, 0.0, is_finished=lambda row, ids: ids[-1] == stop))
        for k in (1, 3, 4):
            assert rows_of(generate.speculative_rows(model, draft, prompt, 2, 30, 0.0, draft_tokens=k, stats=stats)) == plain
            assert rows_of(generate.speculative_rows(model, draft, prompt, 2, 30, 0.0, draft_tokens=k,
                                                     is_finished=lambda row, ids: ids[-1] == stop)) == stopped
    assert 0.5 < stats['accepted'] / stats['passes'] < 2.5  # kept and rejected tokens both happened


def test_sampled_rows_that_cross_block_size_at_different_counts_each_get_max_new_tokens():
    """Sampled rows keep different counts of draft tokens, so they fill their context in different rounds; each
    then goes on with plain steps and still ends at max_new_tokens."""
    model, draft = models('rope')
    prompt = torch.randint(0, 32, (1, 10), generator=torch.Generator().manual_seed(0))
    generators = [torch.Generator().manual_seed(i) for i in range(8)]
    rows = rows_of(generate.speculative_rows(model, draft, prompt, 8, 25, 1.0, generators=generators, draft_tokens=4))
    assert sorted(rows) == list(range(8)) and all(len(tokens) == 25 for tokens in rows.values())


def test_greedy_with_the_model_as_its_own_draft_keeps_every_token():
    model, _ = models('learned')
    stats = {}
    prompt = torch.zeros(1, 1, dtype=torch.long)
    out = rows_of(generate.speculative_rows(model, model, prompt, 1, 20, 0.0, draft_tokens=4, stats=stats))
    assert out == rows_of(generate.sample_rows(model, prompt, 1, 20, 0.0))
    assert stats == {'passes': 4, 'accepted': 16}  # 5 tokens a pass; 20 tokens in 4 passes


@pytest.mark.parametrize('pos_emb', ['learned', 'rope'])
def test_rows_that_keep_different_counts_each_stay_exact(pos_emb, monkeypatch):
    """Sampled rows of one batch keep different numbers of draft tokens (the caches hold rows of different lengths):
    each row's tokens are those it gets alone, from the same seed, where all is in step."""
    model, draft = models(pos_emb, block_size=64)
    ragged = []
    roll_back = KVCache.roll_back
    monkeypatch.setattr(KVCache, 'roll_back', lambda self, lengths: ragged.append(len(set(lengths.tolist())) > 1)
                        or roll_back(self, lengths))
    prompt = torch.tensor([[1, 2, 3]])
    generators = [torch.Generator().manual_seed(i) for i in range(6)]
    batch = rows_of(generate.speculative_rows(model, draft, prompt, 6, 20, 1.0, generators=generators))
    assert any(ragged)
    for row in range(6):
        alone = generate.speculative_rows(model, draft, prompt, 1, 20, 1.0, generators=[torch.Generator().manual_seed(row)])
        assert rows_of(alone)[0] == batch[row]
    assert len({tuple(ids) for ids in batch.values()}) == 6


@pytest.mark.parametrize('pos_emb', ['learned', 'rope'])
def test_rows_of_different_lengths_read_their_own_history(pos_emb):
    """After a roll back to other lengths per row, new tokens get each row's positions and read only its history:
    the logits of a plain forward of each row's whole text. Nothing is copied."""
    model, _ = models(pos_emb)
    tokens = torch.randint(0, 32, (3, 13), generator=torch.Generator().manual_seed(0))
    cache = KVCache(24)
    model(tokens[:, :10], cache=cache)
    buffers = [k.data_ptr() for k, _ in cache.self_kv.values()]
    lengths = torch.tensor([4, 7, 10])
    cache.roll_back(lengths)
    new = torch.stack([tokens[row, length:length + 3] for row, length in enumerate(lengths.tolist())])
    logits = model(new, cache=cache, all_logits=True)[0]
    for row, length in enumerate(lengths.tolist()):
        alone = model(tokens[row:row + 1, :length + 3], all_logits=True)[0][0, -3:]
        torch.testing.assert_close(logits[row], alone, rtol=1e-4, atol=1e-4)
    assert torch.equal(cache.lengths, lengths + 3) and cache.pos == 13
    assert [k.data_ptr() for k, _ in cache.self_kv.values()] == buffers
    cache.roll_back(torch.tensor([5, 5, 5]))  # rows in step again: the plain path
    assert cache.lengths is None and cache.pos == 5


@torch.no_grad()
def first_tokens_probabilities(model, prompt, n, temperature, top_k, top_p):
    """The model's own probability of each sequence of n first tokens (V ** n of them, in order), by the chain rule."""
    V = model.config.vocab_size
    sequences = torch.cartesian_prod(*[torch.arange(V)] * n).view(-1, n)
    logits = model(torch.cat((prompt.expand(len(sequences), -1), sequences), dim=1), all_logits=True)[0]
    probs = generate.token_probabilities(logits[:, prompt.size(1) - 1:-1], temperature, top_k, top_p)
    return probs.gather(-1, sequences[..., None])[..., 0].prod(dim=1)


def chi_square_and_bound(counts, expected, z=3.719):
    """Pearson's chi-square of counts against expected counts (cells under 5 merged), and its 1 - 1e-4 quantile
    (z: the normal's) by Wilson and Hilferty's approximation."""
    small = expected < 5
    counts = torch.cat((counts[~small], counts[small].sum()[None]))
    expected = torch.cat((expected[~small], expected[small].sum()[None]))
    chi2 = float(((counts - expected) ** 2 / expected.clamp(min=1e-9)).sum())
    df = len(counts) - 1
    return chi2, df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def always_accept(p, q, drafted, generators=None):
    """A broken rule: every draft token kept, then a token drawn from p."""
    B, k = drafted.shape
    return torch.full((B,), k), generate.draw(p[:, k], generators)


def rejected_from_p(p, q, drafted, generators=None):
    """A broken rule: a rejected token replaced by a draw from p instead of max(0, p - q)."""
    kept, _ = SPECULATIVE_ACCEPT(p, q, drafted, generators)
    return kept, generate.draw(p[torch.arange(len(kept)), kept], generators)


SPECULATIVE_ACCEPT = generate.speculative_accept


@pytest.mark.parametrize('temperature, top_k, top_p', [(1.0, None, None), (0.8, 3, 0.9)])
def test_sampled_tokens_have_the_models_distribution(temperature, top_k, top_p, monkeypatch):
    """The first 3 tokens of 4,000 samples (a seed each, one batch, 2 draft tokens a pass: kept, rejected and
    bonus tokens all occur), over a vocabulary of 4: their 64 sequences' counts match the model's own
    probabilities (chi-square under its 1 - 1e-4 quantile); with the rule broken (two ways) they do not."""
    model, draft = models('rope', vocab_size=4, std=0.15, noise=0.3)
    prompt = torch.tensor([[0, 1, 2]])
    expected = 4000 * first_tokens_probabilities(model, prompt, 3, temperature, top_k, top_p)

    def counts():
        generators = [torch.Generator().manual_seed(seed) for seed in range(4000)]
        rows = rows_of(generate.speculative_rows(model, draft, prompt, 4000, 3, temperature, top_k, top_p, generators,
                                                 draft_tokens=2))
        cells = torch.tensor([(ids[0] * 4 + ids[1]) * 4 + ids[2] for ids in rows.values()])
        return torch.bincount(cells, minlength=64).float()

    chi2, bound = chi_square_and_bound(counts(), expected)
    assert chi2 < bound
    for broken in (always_accept, rejected_from_p):
        monkeypatch.setattr(generate, 'speculative_accept', broken)
        chi2, bound = chi_square_and_bound(counts(), expected)
        assert chi2 > 3 * bound


# ---------------------------------------------------------------------------
# sample.py --draft


@pytest.fixture(scope='module')
def draft_dir(trained_dir, tmp_path_factory):  # noqa: F811
    """The trained model with noise on its matrices: a draft whose tokens are often, not always, the model's."""
    checkpoint = load_checkpoint(str(trained_dir))
    torch.manual_seed(0)
    checkpoint['model'] = {name: w + 0.05 * torch.randn_like(w) if w.dim() >= 2 else w
                           for name, w in checkpoint['model'].items()}
    out = tmp_path_factory.mktemp('draft')
    torch.save(checkpoint, out / 'ckpt.pt')
    return out


def test_sample_py_with_a_draft_prints_the_same_greedy_samples(trained_dir, draft_dir, capsys):  # noqa: F811
    """40 new tokens cross the block (32); a stop string cuts one sample."""
    for stop in ('none', 'e'):
        args = sample_args(trained_dir, start='ROMEO:', max_new_tokens=40, stop=stop)
        plain = run_script(capsys, sample.main, args)
        assert plain[0] == 0 and len(plain[1]) > 2 * len(SEPARATOR)
        assert run_script(capsys, sample.main, args + [f'--draft={draft_dir}', '--draft_tokens=3']) == plain


def saved_draft(trained_dir, tmp_path, **changes):  # noqa: F811
    """A copy of the trained checkpoint with `changes`; model_args changes get fresh weights of that shape."""
    checkpoint = load_checkpoint(str(trained_dir))
    args = {**checkpoint['model_args'], **changes.pop('model_args', {})}
    if args != checkpoint['model_args']:
        checkpoint['model_args'], checkpoint['model'] = args, GPT(GPTConfig(**args)).state_dict()
    checkpoint.update(changes)
    torch.save(checkpoint, tmp_path / 'ckpt.pt')
    return tmp_path


@pytest.mark.parametrize('changes, message', [
    (dict(tokenizer={'kind': 'char', 'chars': list('abc')}), 'was trained with another tokenizer or vocabulary'),
    (dict(model_args={'vocab_size': 100}), 'was trained with another tokenizer or vocabulary'),
    (dict(model_type='seq2seq'), "holds model_type='seq2seq': a draft must be a GPT"),
    (dict(model_type='encoder'), "holds model_type='encoder': a draft must be a GPT"),
    (dict(model_args={'block_size': 16}), 'reads 16 tokens, fewer than the model\'s 32: a draft must read as many'),
])
def test_bad_drafts_are_one_line_errors(trained_dir, tmp_path, capsys, changes, message):  # noqa: F811
    draft = saved_draft(trained_dir, tmp_path, **changes)
    status, out, err = run_script(capsys, sample.main, sample_args(trained_dir, draft=str(draft)))
    assert status == 1 and out == ''
    assert len(err.splitlines()) == 1 and err.startswith(f"error: --draft={draft} {message}")


def test_a_draft_for_a_model_that_is_no_gpt_is_a_one_line_error(trained_dir, tmp_path, capsys):  # noqa: F811
    from dataclasses import asdict
    from model import Seq2SeqConfig, Seq2SeqTransformer
    config = Seq2SeqConfig(vocab_size=65, n_layer=1, n_head=1, n_embd=8)
    torch.save({'model': Seq2SeqTransformer(config).state_dict(), 'model_args': asdict(config), 'iter_num': 0,
                'model_type': 'seq2seq', 'tokenizer': load_checkpoint(str(trained_dir))['tokenizer']}, tmp_path / 'ckpt.pt')
    status, out, err = run_script(capsys, sample.main, sample_args(tmp_path, draft=str(trained_dir)))
    assert (status, out) == (1, '') and err == (f"error: --draft={trained_dir}: speculative decoding is for a GPT's "
                                                f"sampling, and this model is not a GPT\n")
