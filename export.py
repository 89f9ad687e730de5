"""
Export a trained GPT to a Hugging Face folder, for the transformers ecosystem:

    python export.py --out_dir=out-shakespeare-char --to=hf-shakespeare-char

The folder holds the weights (model.safetensors), config.json and the tokenizer, so that

    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    model = AutoModelForCausalLM.from_pretrained('hf-shakespeare-char')
    tokenizer = AutoTokenizer.from_pretrained('hf-shakespeare-char')
    print(pipeline('text-generation', model='hf-shakespeare-char')('ROMEO:', max_new_tokens=100))

work. Our GPT with its default architecture is GPT-2, so the export is exact (the same logits);
the modern options (RoPE, RMSNorm, SwiGLU, ...) have no GPT-2 equivalent and are refused.
"""

import json
import os
import sys

import torch

from checkpoint import load_checkpoint, model_from_checkpoint, tokenizer_state
from configurator import UserError, configure, run_cli, settings_of
from model import HF_ACTIVATIONS, HF_TRANSPOSED
from tokenizer import TiktokenTokenizer

# our mlp -> transformers' activation_function: model.py's table read backwards, its first name for each
HF_ACTIVATION = {ours: theirs for theirs, ours in reversed(HF_ACTIVATIONS.items())}

# -----------------------------------------------------------------------------
out_dir = 'out'  # the training run whose ckpt.pt is exported
to = ''  # the folder to write; '' = <out_dir>/hf
# -----------------------------------------------------------------------------
DEFAULTS = settings_of(globals())

GPT2_ARCHITECTURE = {'pos_emb': ('learned',), 'norm': ('layernorm',), 'qk_norm': (False,), 'mlp': ('gelu', 'gelu_tanh')}
GPT2_ENCODINGS = ('gpt2', 'r50k_base')  # tiktoken's names for GPT-2's BPE (the same ranks)


def import_transformers():
    try:
        import transformers  # imported here so that the rest of the project does not need it
    except ImportError:
        raise UserError("export needs transformers: pip install transformers") from None
    return transformers


def check_exportable(checkpoint, trained_tokenizer):
    """A one-line UserError naming the setting when transformers' GPT-2 cannot express the model."""
    kind = checkpoint.get('model_type', 'gpt')
    if kind != 'gpt':
        raise UserError(f"model_type={kind}: only gpt (decoder-only) models can be exported as GPT-2")
    args = checkpoint['model_args']
    for key, allowed in GPT2_ARCHITECTURE.items():
        if args.get(key, allowed[0]) not in allowed:
            raise UserError(f"{key}={args[key]!r} has no GPT-2 equivalent (GPT-2 needs {key}="
                            f"{' or '.join(map(repr, allowed))}): this checkpoint cannot be exported")
    if args.get('n_kv_head', 0) not in (0, args['n_head']):
        raise UserError(f"n_kv_head={args['n_kv_head']} (grouped-query attention) has no GPT-2 equivalent "
                        f"(GPT-2 needs n_kv_head=0 or n_head={args['n_head']}): this checkpoint cannot be exported")
    kind, name = trained_tokenizer.get('kind'), trained_tokenizer.get('name')
    if kind != 'char' and not (kind == 'tiktoken' and name in GPT2_ENCODINGS):
        raise UserError(f"the checkpoint's tokenizer ({name or kind}) cannot be exported: only character-level "
                        f"and GPT-2 BPE tokenizers can")


# ---------------------------------------------------------------------------
# The model


def hf_config(args, eot_token):
    transformers = import_transformers()
    dropout = args.get('dropout', 0.0)  # used only if the exported model is trained further
    return transformers.GPT2Config(
        vocab_size=args['vocab_size'], n_positions=args['block_size'], n_embd=args['n_embd'],
        n_layer=args['n_layer'], n_head=args['n_head'], activation_function=HF_ACTIVATION[args.get('mlp', 'gelu')],
        layer_norm_epsilon=1e-5, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        tie_word_embeddings=args.get('tie_embeddings', True), bos_token_id=eot_token, eos_token_id=eot_token)


def hf_state_dict(model, hf_state):
    """Our weights under transformers' GPT-2 names: the same names, a few matrices transposed
    (they are Conv1D there), and zeros for the biases a bias=False model lacks (exact: a zero
    bias adds nothing)."""
    ours = model.state_dict()
    state = {}
    for name, hf_tensor in hf_state.items():
        if name not in ours and name.endswith('.bias') and name.removesuffix('.bias') + '.weight' in ours:
            state[name] = torch.zeros_like(hf_tensor)
        else:
            state[name] = ours[name].t().contiguous() if name.endswith(HF_TRANSPOSED) else ours[name]
    return state


def save_model(checkpoint, folder, eot_token):
    transformers = import_transformers()
    model = model_from_checkpoint(checkpoint, 'gpt')
    hf_model = transformers.GPT2LMHeadModel(hf_config(checkpoint['model_args'], eot_token))
    hf_model.load_state_dict(hf_state_dict(model, hf_model.state_dict()))  # strict: every weight is set
    hf_model.save_pretrained(folder)  # config.json, model.safetensors, generation_config.json


# ---------------------------------------------------------------------------
# The tokenizer


def byte_to_unicode():
    """GPT-2's vocabulary files spell each byte as a printable character: the printable ASCII and
    Latin-1 bytes as themselves, the others (controls, space, ...) as chr(256), chr(257), ...
    in byte order. So a space is 'Ġ' (chr(288)) and a newline 'Ċ'."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def merged_pair(token, ranks):
    """The two tokens whose merge made `token`: BPE replayed on its bytes with only the merges
    learned before it (lower ranks) ends in exactly two parts."""
    parts = [bytes([b]) for b in token]
    while True:
        candidates = [(ranks.get(a + b, len(ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(candidates)
        if rank >= ranks[token]:
            return parts
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def gpt2_vocab_and_merges(encoding):
    """vocab.json (token -> id) and the lines of merges.txt, rebuilt from tiktoken's ranks (bytes -> id)."""
    ranks = encoding._mergeable_ranks
    spell = byte_to_unicode()
    text = {token: ''.join(spell[b] for b in token) for token in ranks}
    vocab = {text[token]: rank for token, rank in ranks.items()}
    vocab.update(encoding._special_tokens)  # '<|endoftext|>'
    merges = [' '.join(text[part] for part in merged_pair(token, ranks))
              for token in sorted(ranks, key=ranks.get) if len(token) > 1]
    return vocab, merges


def save_gpt2_tokenizer(name, folder, block_size):
    """GPT-2's tokenizer: vocab.json and merges.txt, loaded by transformers, which adds tokenizer.json."""
    transformers = import_transformers()
    vocab, merges = gpt2_vocab_and_merges(TiktokenTokenizer(name)._encoding)  # a missing tiktoken is a UserError
    with open(os.path.join(folder, 'vocab.json'), 'w', encoding='utf-8') as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, 'merges.txt'), 'w', encoding='utf-8') as f:
        f.write('#version: 0.2\n' + '\n'.join(merges) + '\n')
    # decode must give back the text exactly, as tiktoken does: no clean-up of spaces
    tokenizer = transformers.GPT2TokenizerFast.from_pretrained(
        folder, clean_up_tokenization_spaces=False, model_max_length=block_size)
    tokenizer.save_pretrained(folder)
    return tokenizer


def save_char_tokenizer(chars, folder, block_size):
    """One token per character: a word-level model whose 'words' are single characters."""
    transformers = import_transformers()
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    # no '<unk>' in the vocabulary: an unknown character is an error, as with our CharTokenizer
    tokenizer = Tokenizer(models.WordLevel({ch: i for i, ch in enumerate(chars)}, unk_token='<unk>'))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r'[\s\S]'), behavior='isolated')  # every character alone
    tokenizer.decoder = decoders.Fuse()  # join the characters back without spaces
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, model_max_length=block_size)
    tokenizer.save_pretrained(folder)
    # transformers 5 names the class TokenizersBackend, which earlier versions lack; all know this name
    config_path = os.path.join(folder, 'tokenizer_config.json')
    with open(config_path) as f:
        config = json.load(f)
    with open(config_path, 'w') as f:
        json.dump({**config, 'tokenizer_class': 'PreTrainedTokenizerFast'}, f, indent=2)
    return tokenizer


def save_tokenizer(state, folder, block_size):
    if state['kind'] == 'char':
        return save_char_tokenizer(state['chars'], folder, block_size)
    return save_gpt2_tokenizer(state['name'], folder, block_size)


# ---------------------------------------------------------------------------


def export(checkpoint, folder):
    trained_tokenizer = tokenizer_state(checkpoint)
    check_exportable(checkpoint, trained_tokenizer)
    os.makedirs(folder, exist_ok=True)
    tokenizer = save_tokenizer(trained_tokenizer, folder, checkpoint['model_args']['block_size'])
    save_model(checkpoint, folder, tokenizer.eos_token_id)


def main(argv=None):
    config, _ = configure(DEFAULTS, argv, sources=[__file__])
    folder = config['to'] or os.path.join(config['out_dir'], 'hf')
    if os.path.isfile(folder):
        raise UserError(f"--to={folder} is a file: give a folder to write the export into")
    checkpoint = load_checkpoint(config['out_dir'])
    import_transformers().utils.logging.disable_progress_bar()  # bars for a few small files are noise
    export(checkpoint, folder)
    print(f"wrote {folder}: load it with transformers' AutoModelForCausalLM.from_pretrained({folder!r}) "
          f"and AutoTokenizer.from_pretrained({folder!r})")


if __name__ == '__main__':
    run_cli(lambda: main(sys.argv[1:]))
