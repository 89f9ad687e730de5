"""generate.py and sample.py's GPT side: stopping, batched samples, per-row seeds, streaming."""
from types import SimpleNamespace

import pytest
import torch

import generate
import sample
from conftest import switches, widen
from generate import KVCache
from model import GPT, GPTConfig
from test_sample import SEPARATOR, sample_args, trained_dir  # noqa: F401 (a fixture)
from test_train import run_script
from tokenizer import CharTokenizer

EOT = 50256


class ScriptedModel:
    """A stand-in GPT that writes a fixed script of token ids after its prompt, whatever it reads:
    enough to drive the generation loop and the printing through known tokens."""

    def __init__(self, script, vocab_size=50304, block_size=64):
        self.script, self.vocab_size = script, vocab_size
        self.config = SimpleNamespace(block_size=block_size)
        self.prompt_len = None

    def __call__(self, tokens, cache=None):
        end = tokens.size(1) + (cache.pos if cache is not None else 0)
        if self.prompt_len is None:
            self.prompt_len = end
        if cache is not None:
            cache.pos = end
        logits = torch.full((tokens.size(0), 1, self.vocab_size), -100.0)
        logits[:, :, self.script[min(end - self.prompt_len, len(self.script) - 1)]] = 100.0
        return logits, None


def printed(capsys, script, stop, tokenizer, max_new_tokens=20, num_samples=1):
    """stdout of sample.py's printing of `script` under the `stop` setting."""
    cfg = SimpleNamespace(max_new_tokens=max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, seed=0, stop=stop,
                          num_samples=num_samples, batch_size=num_samples)
    capsys.readouterr()
    sample.generate_text(cfg, ScriptedModel(script), tokenizer, 'x', 'cpu')
    return capsys.readouterr().out


def test_stops_at_the_end_of_text_token_by_default(capsys, gpt2_bpe):
    script = gpt2_bpe.encode(' one document') + [EOT] + gpt2_bpe.encode(' the next one')
    assert printed(capsys, script, None, gpt2_bpe) == ' one document\n' + SEPARATOR + '\n'


@pytest.mark.parametrize('stop', ['', 'none'])
def test_stop_off_runs_to_max_new_tokens_as_nanogpt(capsys, gpt2_bpe, stop):
    script = gpt2_bpe.encode(' one') + [EOT] + gpt2_bpe.encode(' two three four five six seven')
    out = printed(capsys, script, stop, gpt2_bpe, max_new_tokens=6)
    assert out == gpt2_bpe.decode(script[:6]) + '\n' + SEPARATOR + '\n'


def test_stops_at_a_string_split_across_two_tokens_and_prints_nothing_after_it(capsys, gpt2_bpe):
    script = gpt2_bpe.encode('first line\n\nsecond line\n\nthird')
    assert 628 not in script  # '\n\n' comes as two '\n' tokens here: the stop spans them
    assert printed(capsys, script, '\\n\\n', gpt2_bpe) == 'first line\n' + SEPARATOR + '\n'
    assert printed(capsys, script, ['THE END', 'second'], gpt2_bpe) == 'first line\n\n\n' + SEPARATOR + '\n'


def test_a_multi_byte_character_split_across_tokens_is_printed_whole(capsys, gpt2_bpe):
    script = gpt2_bpe.encode('日本 and 日本') + [EOT]
    out = printed(capsys, script, None, gpt2_bpe)
    assert out == '日本 and 日本\n' + SEPARATOR + '\n' and '\ufffd' not in out
    assert printed(capsys, script, '本 and', gpt2_bpe) == '日\n' + SEPARATOR + '\n'


def test_streaming_holds_back_what_may_begin_a_stop_string():
    tokenizer = CharTokenizer('abcdefgh')
    s = sample.Sample(tokenizer, None, ['cde'])
    shown = []
    for ch in 'abcdcdefg':
        s.add(tokenizer.encode(ch)[0])
        shown.append(s.printable())
    assert shown[:5] == ['a', 'ab', 'ab', 'ab', 'abcd']  # 'c', then 'cd', may begin 'cde': held back until they cannot
    assert s.finished and s.text() == 'abcd' and shown[-1] == 'abcd'
    assert all(later.startswith(earlier) for earlier, later in zip(shown, shown[1:]))


def test_each_row_stops_on_its_own_and_leaves_the_batch():
    model = GPT(GPTConfig(vocab_size=16, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    free = {}
    for row, token in generate.sample_rows(model, prompt, 3, 30, 1.0, generators=generators):
        free.setdefault(row, []).append(token)
    stop_token = free[0][5]  # row 0 ends at its 6th token; rows that never draw it run to the end
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    seen, rows_per_step = {}, []
    for row, token in generate.sample_rows(model, prompt, 3, 30, 1.0, generators=generators,
                                           is_finished=lambda row, ids: ids[-1] == stop_token):
        seen.setdefault(row, []).append(token)
        if row == 0 or not rows_per_step or rows_per_step[-1][-1] >= row:
            rows_per_step.append([])
        rows_per_step[-1].append(row)
    for row in range(3):
        cut = free[row].index(stop_token) + 1 if stop_token in free[row] else 30
        assert seen[row] == free[row][:cut]  # the same tokens as without stopping, up to the stop
    assert len(seen[0]) == 6 and max(len(ids) for ids in seen.values()) > 6
    assert 0 not in sum(rows_per_step[6:], [])  # a finished row takes no part in later steps


def test_a_batch_of_greedy_rows_equals_each_row_alone():
    torch.manual_seed(0)
    model = widen(GPT(GPTConfig(vocab_size=32, block_size=24, n_layer=2, n_head=2, n_embd=32)).eval())
    prompts = torch.randint(0, 32, (3, 5), generator=torch.Generator().manual_seed(1))
    batched = model.generate(prompts, 25, temperature=0)  # 30 > block_size: crosses the window too
    for row in range(3):
        assert torch.equal(batched[row], model.generate(prompts[row:row + 1], 25, temperature=0)[0])
    # each row's output moves from token to token, and the rows differ: a row given another's context shows
    assert switches(batched[:, 5:]).min() >= 5 and len({tuple(row.tolist()) for row in batched[:, 5:]}) == 3
    rows = {}
    for row, token in generate.sample_rows(model, prompts[:1], 4, 25, temperature=0.0):
        rows.setdefault(row, []).append(token)
    assert all(ids == batched[0, 5:].tolist() for ids in rows.values())


def test_the_prompt_is_read_once_for_all_rows(monkeypatch):
    model = GPT(GPTConfig(vocab_size=16, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    widths = []
    forward = GPT.forward

    def counting(self, idx, targets=None, cache=None):
        widths.append(tuple(idx.shape))
        return forward(self, idx, targets, cache)

    monkeypatch.setattr(GPT, 'forward', counting)
    list(generate.sample_rows(model, torch.zeros(1, 7, dtype=torch.long), 5, 4, temperature=0.0))
    assert widths == [(1, 7), (5, 1), (5, 1), (5, 1)]


def test_the_same_seed_gives_the_same_samples_whatever_the_batch_size(trained_dir, capsys):  # noqa: F811
    outputs = []
    for batch_size in (1, 3, 10):
        status, out, err = run_script(capsys, sample.main, sample_args(
            trained_dir, num_samples=10, temperature=0.9, batch_size=batch_size, max_new_tokens=25))
        assert status == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1] == outputs[2]
    samples = outputs[0].split(SEPARATOR + '\n')[:-1]
    assert len(samples) == 10 and len(set(samples)) > 5


def test_a_draw_is_torch_multinomials_for_the_same_generator():
    """sample_next_token's batched draw picks the token torch.multinomial(probs, 1) would pick,
    row by row with per-row generators and for the whole batch with the global generator."""
    logits = torch.randn(6, 50) * 3
    logits[:, 7] = float('-inf')  # a token that may never be drawn
    probs = torch.softmax(logits / 0.7, dim=-1)
    for seed in range(20):
        expected = torch.cat([torch.multinomial(p[None], 1, generator=torch.Generator().manual_seed(seed + i))
                              for i, p in enumerate(probs)])
        generators = [torch.Generator().manual_seed(seed + i) for i in range(6)]
        assert torch.equal(generate.sample_next_token(logits, 0.7, generators=generators), expected)
        torch.manual_seed(seed)
        expected = torch.multinomial(probs, 1)
        torch.manual_seed(seed)
        assert torch.equal(generate.sample_next_token(logits, 0.7), expected)


def test_the_first_sample_is_nanogpts_for_the_same_seed(trained_dir, capsys):  # noqa: F811
    """Sample 0 draws from a generator seeded with `seed`, as nanoGPT's first sample after torch.manual_seed."""
    status, out, _ = run_script(capsys, sample.main, sample_args(trained_dir, num_samples=1, temperature=0.9,
                                                                 top_k=5, start='ROMEO:', seed=7))
    from checkpoint import load_checkpoint, model_from_checkpoint
    from tokenizer import tokenizer_from_state
    checkpoint = load_checkpoint(str(trained_dir))
    model = model_from_checkpoint(checkpoint).eval()
    tokenizer = tokenizer_from_state(checkpoint['tokenizer'])
    idx = torch.tensor([tokenizer.encode('ROMEO:')])
    torch.manual_seed(7)
    expected = tokenizer.decode(model.generate(idx, 30, temperature=0.9, top_k=5)[0, idx.size(1):].tolist())
    assert status == 0 and out == expected + '\n' + SEPARATOR + '\n'


def test_a_prompt_longer_than_the_block_is_cropped_with_a_warning(trained_dir, capsys):  # noqa: F811
    status, out, err = run_script(capsys, sample.main, sample_args(trained_dir, start='ab' * 40, num_samples=1))
    assert status == 0 and out.endswith(SEPARATOR + '\n')
    assert err.splitlines() == ["warning: the prompt has 80 tokens, more than the model's block_size of 32: "
                                "the model reads its last 32 tokens"]


def test_kv_cache_select_keeps_and_copies_rows():
    cache = KVCache(max_len=4)
    k = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)
    cache.reserve(3)
    cache.append('layer', k, -k)
    cache.select(torch.tensor([1, 1, 0]))
    keys, values = cache.self_kv['layer']
    assert torch.equal(keys[:, :, :3], k[[1, 1, 0]]) and torch.equal(values[:, :, :3], -k[[1, 1, 0]])
