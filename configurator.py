"""Settings for the scripts, nanoGPT style: each script defines its settings as plain module-level variables, which
config files (trusted Python, executed) and `--key=value` flags (Python literals, never executed) override in the order
given: python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False. Unknown keys and values of
the wrong type are one-line errors; `--help` lists the settings with their defaults and the script's comments."""

import ast
import difflib
import io
import os
import sys
import tokenize

from errors import UserError

SETTING_TYPES = (bool, int, float, str, type(None))


def settings_of(namespace):
    """The settings among a module's globals: public names bound to plain values."""
    return {k: v for k, v in namespace.items() if not k.startswith('_') and isinstance(v, SETTING_TYPES)}


def unknown_key(key, settings):
    close = difflib.get_close_matches(key, settings, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown setting '{key}'{hint}")


def checked(key, value, default):
    """`value` for setting `key`, converted to the default's type where that is lossless."""
    if default is None or value is None and isinstance(default, str) or type(value) is type(default):
        return value
    if isinstance(default, float) and type(value) is int:
        return float(value)
    raise UserError(f"setting '{key}' expects {type(default).__name__} (default {default!r}), got {value!r}")


def parse_flag(key, text, default):
    """A flag's value: a Python literal; a bare word is a string when a string is expected."""
    if isinstance(default, bool) and text.lower() in ('true', 'false'):
        return text.lower() == 'true'
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if isinstance(default, str) or default is None:
            return text
        raise UserError(f"setting '{key}' expects {type(default).__name__}, got {text!r}") from None
    if isinstance(default, str) and not isinstance(value, str):
        return text  # e.g. --start=123 is the text "123"
    return value


def run_config_file(path, settings):
    """Execute a config file over the current settings; return the settings it changed."""
    if not os.path.isfile(path):
        raise UserError(f"config file {path} not found (settings are given as --key=value)")
    namespace = dict(settings, __file__=os.path.abspath(path))  # a config can build on another one beside it
    with open(path) as f:
        exec(compile(f.read(), path, 'exec'), namespace)
    changed = {}
    for key, value in settings_of(namespace).items():  # not imports or helpers
        if key not in settings:
            raise UserError(f"{path}: {unknown_key(key, settings)}")
        if value is not settings[key] and value != settings[key]:
            changed[key] = checked(key, value, settings[key])
    return changed


def configure(settings, argv=None, sources=()):
    """Apply config files and --key=value flags from argv to a copy of `settings`; return it and the keys set
    explicitly. `sources`: the files that define the settings, whose comments `--help` (or -h) prints before exiting 0."""
    argv = sys.argv[1:] if argv is None else argv
    if '--help' in argv or '-h' in argv:
        print(help_text(settings, sources, script=os.path.basename(sources[0]) if sources else None))
        sys.exit(0)
    settings, explicit = dict(settings), set()
    for arg in argv:
        if arg.startswith('--'):
            key, sep, text = arg[2:].partition('=')
            if key not in settings:
                raise unknown_key(key, settings)
            if not sep:
                raise UserError(f"flag --{key} needs a value: --{key}=VALUE")
            changed = {key: checked(key, parse_flag(key, text, settings[key]), settings[key])}
        elif arg.endswith('.py'):
            changed = run_config_file(arg, settings)
        else:
            raise UserError(f"unexpected argument {arg!r}: give a config file (config/x.py) or --key=value")
        settings.update(changed)
        explicit |= set(changed)
    return settings, explicit


def documented_settings(path, names):
    """[(name, comment, section)] of the settings in `names` that the file at `path` assigns at its top level
    (`name = value  # comment`) or in a top-level dict(...) call, in the file's order. A section is the block of comment
    lines (dashed lines left out) just above a setting, and carries over to the settings below it until the next one."""
    with open(path, encoding='utf-8') as f:
        source = f.read()
    comments, comment_lines = {}, set()  # line -> comment text; lines holding only a comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip('#').strip()
            if not tok.line[:tok.start[1]].strip():
                comment_lines.add(tok.start[0])
    found = []  # (line, end line, name)
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            found += [(node.lineno, node.end_lineno, target.id) for target in node.targets
                      if isinstance(target, ast.Name) and target.id in names]
            value = node.value
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == 'dict':
                found += [(kw.value.lineno, kw.value.end_lineno, kw.arg) for kw in value.keywords if kw.arg in names]
    result, section = [], ''
    for line, end, name in sorted(found):
        above = []
        while line - len(above) - 1 in comment_lines:
            above.insert(0, comments[line - len(above) - 1])
        above = [text for text in above if text.strip('-')]
        if above:
            section = ' '.join(above)
        comment = next((comments[n] for n in range(line, end + 1) if n in comments and n not in comment_lines), '')
        result.append((name, comment, section))
    return result


def help_text(settings, sources=(), script=None):
    """The settings with their defaults and comments, grouped by the section comments of `sources`."""
    lines = [f"usage: python {script or 'SCRIPT'} [config/FILE.py ...] [--key=value ...]",
             "Settings and their defaults; config files, then flags, override them in the order given."]
    documented = {}  # name -> (comment, section), the first source's
    for path in sources:
        for name, comment, section in documented_settings(path, settings):
            documented.setdefault(name, (comment, section))
    documented.update({name: ('', 'other') for name in settings if name not in documented})
    section = None
    for name, (comment, group) in documented.items():
        if group != section:
            section = group
            lines.append(f"\n# {group}" if group else "")
        flag = f"  --{name}={settings[name]!r}"
        lines.append(f"{flag:<36}  # {comment}" if comment else flag)
    return '\n'.join(lines)


def run_cli(main):
    """Run a script's main(), printing a UserError as one line on stderr with exit status 1."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
