"""configurator.configure: --key=value flags (literals, never executed), config files, errors."""
import re
import subprocess
import sys

import pytest

from configurator import UserError, configure
from conftest import ROOT

SETTINGS = dict(max_iters=2000, learning_rate=3e-3, compile=False, out_dir='out', dataset='shakespeare_char',
                vocab_size=0, start='\n')


@pytest.mark.parametrize('flag, key, expected', [
    ('--max_iters=50', 'max_iters', 50),
    ('--learning_rate=1e-4', 'learning_rate', 1e-4),
    ('--learning_rate=1', 'learning_rate', 1.0),  # an int for a float setting becomes a float
    ('--compile=True', 'compile', True),
    ('--compile=true', 'compile', True),
    ('--compile=False', 'compile', False),
    ('--compile=false', 'compile', False),
    ("--out_dir='out-x'", 'out_dir', 'out-x'),
    ('--out_dir=out-shakespeare', 'out_dir', 'out-shakespeare'),  # a bare word is a string
    ('--dataset=data/my set', 'dataset', 'data/my set'),
    ('--start=123', 'start', '123'),  # digits for a str setting stay text
    ('--start=FILE:prompt.txt', 'start', 'FILE:prompt.txt'),
])
def test_flags_parse_as_literals_of_the_settings_type(flag, key, expected):
    settings, explicit = configure(SETTINGS, [flag])
    assert settings[key] == expected and type(settings[key]) is type(expected)
    assert explicit == {key}
    assert {k: v for k, v in settings.items() if k != key} == {k: v for k, v in SETTINGS.items() if k != key}


def test_flags_are_never_executed(tmp_path):
    marker = tmp_path / 'executed'
    code = f"__import__('os').system('touch {marker}')"
    settings, _ = configure(SETTINGS, [f'--out_dir={code}'])
    assert settings['out_dir'] == code
    with pytest.raises(UserError, match="'max_iters' expects int"):
        configure(SETTINGS, [f'--max_iters={code}'])
    assert not marker.exists()


@pytest.mark.parametrize('flag', ['--max_iters=1.5', '--max_iters=abc', '--compile=1', '--learning_rate=fast',
                                  "--max_iters='10'"])
def test_a_value_of_the_wrong_type_names_the_key(flag):
    key = flag[2:].split('=')[0]
    with pytest.raises(UserError, match=f"setting '{key}' expects"):
        configure(SETTINGS, [flag])


def test_an_unknown_key_names_the_closest_valid_one():
    with pytest.raises(UserError, match="unknown setting 'max_iter'; did you mean 'max_iters'"):
        configure(SETTINGS, ['--max_iter=5'])


@pytest.mark.parametrize('arg, message', [('--max_iters', 'needs a value'), ('max_iters=5', 'unexpected argument')])
def test_malformed_arguments_are_errors(arg, message):
    with pytest.raises(UserError, match=message):
        configure(SETTINGS, [arg])


def test_config_file_then_flags_override_in_order(tmp_path):
    config_file = tmp_path / 'my_config.py'
    config_file.write_text("import math\nmax_iters = 100\nlearning_rate = math.sqrt(1e-6)\nout_dir = 'from-file'\n")
    settings, explicit = configure(SETTINGS, [str(config_file), '--out_dir=from-flag'])
    assert settings['max_iters'] == 100 and settings['learning_rate'] == pytest.approx(1e-3)
    assert settings['out_dir'] == 'from-flag'
    assert explicit == {'max_iters', 'learning_rate', 'out_dir'}
    settings, _ = configure(SETTINGS, ['--out_dir=from-flag', str(config_file)])
    assert settings['out_dir'] == 'from-file'  # the later argument wins


def test_config_file_with_an_unknown_key_names_the_file(tmp_path):
    config_file = tmp_path / 'bad_config.py'
    config_file.write_text('learning_rat = 1e-3\n')
    with pytest.raises(UserError, match=f"{config_file}: unknown setting 'learning_rat'; did you mean 'learning_rate'"):
        configure(SETTINGS, [str(config_file)])


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(UserError, match='config file .*missing.py not found'):
        configure(SETTINGS, [str(tmp_path / 'missing.py')])


def test_train_script_reports_a_typo_in_one_line():
    result = subprocess.run([sys.executable, 'train.py', '--max_iter=5'], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout == ''
    assert result.stderr.splitlines() == ["error: unknown setting 'max_iter'; did you mean 'max_iters'?"]


@pytest.mark.parametrize('path', sorted((ROOT / 'config').glob('*.py')), ids=lambda p: p.name)
def test_every_shipped_config_sets_only_known_settings_of_the_right_types(path):
    import train
    settings, explicit = configure(train.DEFAULTS, [str(path)])
    assert explicit and explicit <= set(train.DEFAULTS)


# ---------------------------------------------------------------------------
# --help

def script_settings(script):
    """(defaults, the source files that define them) of a script's settings."""
    import importlib
    module = importlib.import_module(script)
    if script == 'bench':
        return {**module.train.DEFAULTS, **module.BENCH_DEFAULTS}, [ROOT / 'bench.py', ROOT / 'train.py']
    return module.DEFAULTS, [ROOT / f'{script}.py']


def trailing_comments(paths, names):
    """{setting: its trailing comment} read from the `name = value  # comment` (or `name=value,  # comment`)
    lines above a file's first function or class."""
    comments = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.startswith(('def ', 'class ')):
                break
            match = re.match(r'^\s*(\w+)\s*=[^#]*#\s*(.*)$', line)
            if match and match[1] in names and match[1] not in comments:
                comments[match[1]] = match[2]
    return comments


@pytest.mark.parametrize('script', ['train', 'sample', 'bench', 'export'])
def test_help_lists_every_setting_with_its_default_and_comment(script, capsys):
    from test_train import run_script
    defaults, sources = script_settings(script)
    module = sys.modules[script]
    status, out, err = run_script(capsys, module.main, ['--help'])
    assert status == 0 and err == ''
    lines = out.splitlines()
    comments = trailing_comments(sources, defaults)
    assert len(comments) >= min(2, len(defaults))  # the check below means something
    for name, default in defaults.items():
        line = next((line for line in lines if line.startswith(f'  --{name}=')), None)
        assert line is not None, name
        assert line.startswith(f'  --{name}={default!r}'), line
        if name in comments:
            assert line.rstrip().endswith(f'# {comments[name]}'), (name, line)


def test_help_groups_settings_under_the_section_comments_of_the_file(capsys):
    from test_train import run_script
    import bench
    status, out, _ = run_script(capsys, bench.main, ['--help', '--no_such_setting=1'])  # --help wins
    assert status == 0
    lines = out.splitlines()
    sections = [line for line in lines if line.startswith('# ')]
    assert sections[:4] == ['# benchmark', '# I/O', '# wandb logging', '# data']
    assert '# learning rate schedule: linear warmup, then a cosine (or linear) decay to min_lr' in sections
    assert lines.index('# model') < lines.index("  --n_layer=4") < lines.index('# optimizer')
    assert lines.index('# benchmark') < next(i for i, line in enumerate(lines) if line.startswith('  --warmup_steps=5'))


def test_help_on_the_command_line_exits_with_status_0():
    result = subprocess.run([sys.executable, 'train.py', '--help'], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stderr == ''
    assert result.stdout.startswith('usage: python train.py')
    assert "  --eval_iters=20                     # batches per split in each evaluation" in result.stdout.splitlines()
