"""out_dir/metrics.jsonl, written by train.py, and plot.py, which draws it."""
import json
import math
import sys

import numpy as np
import pytest

import plot
import train
from conftest import needs
from test_train import ITER_LINE, STEP_LINE, read_metrics, run_script, tiny_args

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def printed_losses(out):
    """The (iteration, loss) pairs of train.py's log lines and (iteration, train loss, val loss) of its eval lines."""
    lines = out.splitlines()
    return ([(int(m[1]), float(m[2])) for m in map(ITER_LINE.match, lines) if m],
            [(int(m[1]), float(m[2]), float(m[3])) for m in map(STEP_LINE.match, lines) if m])


def recorded_losses(records):
    """The same pairs and triples from metrics.jsonl, rounded as the log lines print them."""
    return ([(r['iter'], round(r['loss'], 4)) for r in records if 'loss' in r],
            [(r['iter'], round(r['train_loss'], 4), round(r['val_loss'], 4)) for r in records if 'val_loss' in r])


def kinds(records):
    return [(r['iter'], 'eval' if 'val_loss' in r else 'log') for r in records]


@pytest.fixture(scope='module')
def runs(shakespeare_char_dir, tmp_path_factory):
    """Two out_dirs of tiny runs to plot: one interrupted at iteration 10 and resumed, one straight."""
    folder = tmp_path_factory.mktemp('runs')
    common = dict(max_iters=16, log_interval=2, eval_interval=5, warmup_iters=2, lr_decay_iters=16)
    train.main(tiny_args(shakespeare_char_dir, folder / 'resumed', **{**common, 'max_iters': 10}))
    train.main(tiny_args(shakespeare_char_dir, folder / 'resumed', init_from='resume', **common))
    train.main(tiny_args(shakespeare_char_dir, folder / 'straight', learning_rate=1e-2, **common))
    return folder / 'resumed', folder / 'straight'


def test_one_record_per_log_line(shakespeare_char_dir, tmp_path, capsys):
    args = tiny_args(shakespeare_char_dir, tmp_path, max_iters=12, log_interval=3, eval_interval=5)
    status, out, err = run_script(capsys, train.main, args)
    assert status == 0, err
    logs, evals = printed_losses(out)
    assert [i for i, _ in logs] == [3, 6, 9, 12] and [i for i, _, _ in evals] == [0, 5, 10, 12]
    records = read_metrics(tmp_path)
    assert recorded_losses(records) == (logs, evals)
    times = [r['time'] for r in records]
    assert times == sorted(times) and times[0] >= 0


def test_resumed_run_appends_and_continues(runs):
    records = read_metrics(runs[0])
    assert kinds(records) == [(0, 'eval'), (2, 'log'), (4, 'log'), (5, 'eval'), (6, 'log'), (8, 'log'), (10, 'log'),
                              (10, 'eval'),  # the first run ends here; the resumed one evaluates first
                              (10, 'eval'), (12, 'log'), (14, 'log'), (15, 'eval'), (16, 'log'), (16, 'eval')]
    assert records[8]['val_loss'] == records[7]['val_loss']  # the same model on the same eval batches
    times = [r['time'] for r in records]
    assert times == sorted(times)  # wall time goes on from the checkpoint's, not from zero


def test_a_new_run_starts_a_new_file(shakespeare_char_dir, tmp_path, capsys):
    for max_iters, overwrite in ((6, False), (4, True)):  # the second run, from scratch, replaces the first
        assert run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, max_iters=max_iters,
                                                        log_interval=2, overwrite=overwrite))[0] == 0
    assert [r['iter'] for r in read_metrics(tmp_path) if 'loss' in r] == [2, 4]


def test_plot_keeps_the_last_record_of_each_iteration(tmp_path, capsys):
    """A run resumed from an older checkpoint logs some iterations again: the later records count.
    A line cut short (a run killed while writing it) is skipped with a warning."""
    lines = [{'iter': 0, 'time': 0.0, 'train_loss': 4.0, 'val_loss': 4.1}, {'iter': 1, 'time': 1.0, 'loss': 3.9},
             {'iter': 2, 'time': 2.0, 'loss': 3.8}, {'iter': 1, 'time': 1.5, 'loss': 3.7},
             {'iter': 2, 'time': 2.5, 'loss': 3.6}, {'iter': 2, 'time': 2.6, 'train_loss': 3.5, 'val_loss': 3.4}]
    text = ''.join(json.dumps(line) + '\n' for line in lines)
    (tmp_path / 'metrics.jsonl').write_text(text + text[:20])
    logs, evals = plot.read_metrics(str(tmp_path))
    assert logs == [lines[3], lines[4]]
    assert evals == [lines[0], lines[5]]
    assert capsys.readouterr().err == f"warning: skipped 1 unreadable line(s) of {tmp_path / 'metrics.jsonl'}\n"


@needs('matplotlib')
def test_plot_writes_a_png_of_two_runs(runs, tmp_path, capsys):
    output = tmp_path / 'loss.png'
    status, out, err = run_script(capsys, plot.main, [str(folder) for folder in runs] + [f'--output={output}'])
    assert status == 0, err
    assert out == f'wrote {output}\n'
    assert output.read_bytes().startswith(PNG_MAGIC) and output.stat().st_size > 10_000


@pytest.mark.parametrize('argv, message', [
    (['{tmp}'], 'metrics.jsonl not found'),
    ([], 'the following arguments are required'),
    (['{tmp}', '--colour=red'], 'unrecognized arguments: --colour=red'),
])
def test_plot_errors_are_one_line(tmp_path, capsys, argv, message):
    status, _, err = run_script(capsys, plot.main, [arg.format(tmp=tmp_path) for arg in argv])
    assert status == 1
    assert err.startswith('error: ') and err.count('\n') == 1 and message in err


def test_plot_without_matplotlib_says_how_to_install_it(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # `import matplotlib` raises ImportError
    status, _, err = run_script(capsys, plot.main, [str(runs[1]), f'--output={tmp_path / "x.png"}'])
    assert status == 1 and err == 'error: plotting needs matplotlib: pip install matplotlib\n'


# ---------------------------------------------------------------------------
# Bits per byte: one scale for every tokenizer


def val_records(out_dir):
    return [m for m in read_metrics(out_dir) if 'val_loss' in m]


def test_bits_per_byte_of_a_character_model_is_its_loss_over_ln2(shakespeare_char_dir, tmp_path, capsys):
    """tiny Shakespeare is ASCII: one character, one byte, one token."""
    status, out, err = run_script(capsys, train.main, tiny_args(shakespeare_char_dir, tmp_path, max_iters=4,
                                                                eval_interval=2))
    assert status == 0, err
    records = val_records(tmp_path)
    assert len(records) == 3
    for record in records:
        assert record['val_bpb'] == pytest.approx(record['val_loss'] / math.log(2), rel=1e-12)
    assert ', val bpb ' in out


def test_bits_per_byte_of_a_bpe_model_follows_its_tokens_per_byte(shakespeare_bpe_dir, gpt2_bpe, tmp_path, capsys):
    out_dir = tmp_path / 'out'
    status, _, err = run_script(capsys, train.main, tiny_args(shakespeare_bpe_dir, out_dir, max_iters=2,
                                                              eval_interval=2))
    assert status == 0, err
    val = np.fromfile(shakespeare_bpe_dir / 'val.bin', dtype=np.uint16)
    text_bytes = len(gpt2_bpe.decode(val.tolist()).encode('utf-8'))
    assert 0.2 < len(val) / text_bytes < 0.4  # GPT-2 BPE: ~3-4 bytes a token on English
    for record in val_records(out_dir):
        assert record['val_bpb'] == pytest.approx(record['val_loss'] * len(val) / text_bytes / math.log(2), rel=1e-12)
