"""bench.py on a tiny model: what it reports and how it reports it (never how fast it is)."""
import json

import pytest

import bench
from configurator import UserError
from test_sample import trained_dir  # noqa: F401 (a fixture)

TINY = ['--device=cpu', '--dtype=float32', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16',
        '--batch_size=4', '--gradient_accumulation_steps=2', '--warmup_steps=1', '--measure_steps=2',
        '--sample_tokens=40']
TRAINING_KEYS = {'tokens_per_iter', 'ms_per_iter', 'tokens_per_sec', 'mfu', 'peak_flops', 'peak_memory_mib',
                 'trained_params', 'optimizer_state_bytes'}
SAMPLING_KEYS = {'sample_cache_tokens_per_sec', 'sample_no_cache_tokens_per_sec', 'sample_cache_speedup',
                 'sample_one_row_tokens_per_sec', 'sample_batched_tokens_per_sec', 'sample_batched_speedup'}


@pytest.mark.parametrize('real_data', [True, False])
def test_json_output_reports_training_and_sampling(shakespeare_char_dir, capsys, real_data):
    results = bench.main([f'--dataset={shakespeare_char_dir}', *TINY, f'--real_data={real_data}', '--json=True'])
    printed = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON object
    assert printed == results
    for key in TRAINING_KEYS | SAMPLING_KEYS:
        assert results[key] > 0, key
    assert results['tokens_per_iter'] == 4 * 16 * 2  # batch x block x accumulation steps
    assert results['sample_new_tokens'] == 15  # 40 asked, cut to block_size - 1
    assert results['sample_rounds'] == 3
    assert results['params'] > 0 and results['device'] == 'cpu' and results['dtype'] == 'float32'
    assert results['real_data'] is real_data and results['peak_memory_kind'] == 'RSS above idle'
    assert results['sample_same_tokens'] is True  # the KV cache's tokens are the full recomputation's


def test_table_output_and_skipped_parts(shakespeare_char_dir, tmp_path, capsys):
    metrics = tmp_path / 'metrics.jsonl'  # an earlier run's: bench must leave out_dir alone
    metrics.write_text('{"iter": 10}\n')
    results = bench.main([f'--dataset={shakespeare_char_dir}', f'--out_dir={tmp_path}', *TINY, '--measure_steps=0'])
    assert [p.name for p in tmp_path.iterdir()] == ['metrics.jsonl'] and metrics.read_text() == '{"iter": 10}\n'
    out = capsys.readouterr().out
    assert 'KV cache' in out and 'speedup' in out and 'tokens/s' in out
    assert 'MFU' not in out and not TRAINING_KEYS & results.keys()  # measure_steps=0: no training measured
    assert SAMPLING_KEYS <= results.keys()


def test_speculative_decoding_against_plain(shakespeare_char_dir, trained_dir, capsys):  # noqa: F811
    """--draft: the batch's tokens/s by speculative decoding and plain, greedy and at temperature 0.8, and how
    many draft tokens a pass kept (the draft: another model of the same characters, block 32)."""
    results = bench.main([f'--dataset={shakespeare_char_dir}', *TINY, '--measure_steps=0', f'--draft={trained_dir}',
                          '--draft_tokens=3', '--sample_rounds=1'])
    for name in ('greedy', 't0.8'):
        assert results[f'spec_{name}_tokens_per_sec'] > 0 and results[f'spec_{name}_plain_tokens_per_sec'] > 0
        assert 0 <= results[f'spec_{name}_accepted_per_pass'] <= 3
    assert results['spec_same_tokens'] is True and results['draft_tokens'] == 3
    assert 'draft tokens kept per pass' in capsys.readouterr().out


@pytest.mark.parametrize('flag', ['--measure_steps=-1', '--sample_tokens=-5', '--warmup_step=3', '--sample_rounds=0',
                                  '--draft_tokens=0'])
def test_bad_settings_are_user_errors(flag):
    with pytest.raises(UserError):
        bench.main(['--device=cpu', flag])


def test_peak_memory_of_a_step_shrinks_with_activation_checkpointing(shakespeare_char_dir, tmp_path):
    """A step's peak resident memory above its idle level, with and without checkpointed blocks (the activations
    of 8 blocks of 64 x 256 x 64 floats: ~620 MiB against ~280, where a checkpointing that kept the activations would
    give ~1x; 1.5x leaves room for the allocator's noise on a loaded machine); the parameters trained, their state."""
    args = [f'--dataset={shakespeare_char_dir}', *TINY, '--n_layer=8', '--n_embd=64', '--block_size=256',
            '--batch_size=64', '--gradient_accumulation_steps=1', '--sample_tokens=0', '--measure_steps=1']
    plain, checkpointed = (bench.main([*args, f'--activation_checkpointing={setting}', '--json=True'])
                           for setting in ('none', 'block'))
    assert plain['peak_memory_mib'] > 1.5 * checkpointed['peak_memory_mib'] > 0
    every = plain['params'] + 256 * 64  # params leaves the learned positions out, as GPT-2's counts do
    assert plain['trained_params'] == checkpointed['trained_params'] == every
    assert plain['optimizer_state_bytes'] == pytest.approx(2 * 4 * every, rel=1e-3)  # AdamW: two float32 moments a weight
