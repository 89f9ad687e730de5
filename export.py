"""Export a trained GPT or encoder to a Hugging Face folder (model.safetensors, config.json, the tokenizer):

    python export.py --out_dir=out-shakespeare-char --to=hf-shakespeare-char
    python export.py --out_dir=out-sst2-cpu --to=hf-sst2      # an encoder: RoBERTa (pre-layer-norm)

Our GPT with its default architecture is GPT-2, so the export is exact (the same logits), for transformers'
AutoModelForCausalLM, AutoTokenizer and pipeline('text-generation'); the modern options (RoPE, RMSNorm, SwiGLU, ...)
have no GPT-2 equivalent and are refused. An encoder with the classic architecture is transformers'
RobertaPreLayerNorm (pre-norm blocks, as ours), for AutoModelForMaskedLM or AutoModelForSequenceClassification,
pipeline('fill-mask') or pipeline('text-classification')."""

import json
import os
import sys
from pathlib import Path

import torch

from checkpoint import load_checkpoint, model_from_checkpoint, tokenizer_state, writable_folder
from configurator import configure, run_cli, settings_of
from errors import UserError
from model import HF_ACTIVATIONS, HF_TRANSPOSED
from tokenizer import TiktokenTokenizer

# our mlp -> transformers' activation_function: model.py's table read backwards, its first name for each
HF_ACTIVATION = {ours: theirs for theirs, ours in reversed(HF_ACTIVATIONS.items())}

# -----------------------------------------------------------------------------
out_dir = 'out'  # the training run whose ckpt.pt is exported
to = ''  # the folder to write; '' = <out_dir>/hf
# -----------------------------------------------------------------------------
DEFAULTS = settings_of(globals())

# what GPT-2 and RoBERTa can express: the classic architecture
CLASSIC_ARCHITECTURE = {'pos_emb': ('learned',), 'norm': ('layernorm',), 'qk_norm': (False,), 'mlp': ('gelu', 'gelu_tanh')}
HF_FAMILY = {'gpt': 'GPT-2', 'encoder': 'RoBERTa'}
GPT2_ENCODINGS = ('gpt2', 'r50k_base')  # tiktoken's names for GPT-2's BPE (the same ranks)


def import_transformers():
    try:
        import transformers  # imported here so that the rest of the project does not need it
    except ImportError:
        raise UserError("export needs transformers: pip install transformers") from None
    return transformers


def check_exportable(checkpoint, trained_tokenizer):
    """A one-line UserError naming the setting when transformers' GPT-2 (or RoBERTa) cannot express the model."""
    kind = checkpoint.get('model_type', 'gpt')
    if kind not in HF_FAMILY:
        raise UserError(f"model_type={kind}: only gpt (as GPT-2) and encoder (as RoBERTa) models can be exported")
    family, args = HF_FAMILY[kind], checkpoint['model_args']
    for key, allowed in CLASSIC_ARCHITECTURE.items():
        if args.get(key, allowed[0]) not in allowed:
            raise UserError(f"{key}={args[key]!r} has no {family} equivalent ({family} needs {key}="
                            f"{' or '.join(map(repr, allowed))}): this checkpoint cannot be exported")
    kind, name = trained_tokenizer.get('kind'), trained_tokenizer.get('name')
    exportable = kind == 'masked_lm' if family == 'RoBERTa' else kind == 'char' or kind == 'tiktoken' and name in GPT2_ENCODINGS
    if not exportable:
        raise UserError(f"the checkpoint's tokenizer ({name or kind}) cannot be exported with a {family} model")


# ---------------------------------------------------------------------------
# The model


def hf_state_dict(model, hf_state):
    """Our weights under transformers' GPT-2 names: the same names, a few matrices transposed (they are Conv1D
    there), and zeros for the biases a bias=False model lacks (exact: a zero bias adds nothing)."""
    ours = model.state_dict()
    return {name: torch.zeros_like(hf_tensor)
            if name not in ours and name.endswith('.bias') and name.removesuffix('.bias') + '.weight' in ours
            else ours[name].t().contiguous() if name.endswith(HF_TRANSPOSED) else ours[name]
            for name, hf_tensor in hf_state.items()}


def save_model(checkpoint, folder, eot_token):
    transformers = import_transformers()
    model, args = model_from_checkpoint(checkpoint, 'gpt'), checkpoint['model_args']
    dropout = args.get('dropout', 0.0)  # used only if the exported model is trained further
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=args['vocab_size'], n_positions=args['block_size'], n_embd=args['n_embd'], n_layer=args['n_layer'],
        n_head=args['n_head'], activation_function=HF_ACTIVATION[args.get('mlp', 'gelu')], layer_norm_epsilon=1e-5,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=eot_token, eos_token_id=eot_token))
    hf_model.load_state_dict(hf_state_dict(model, hf_model.state_dict()))  # strict: every weight is set
    hf_model.save_pretrained(folder)  # config.json, model.safetensors, generation_config.json


# ---------------------------------------------------------------------------
# The encoder as RoBERTa with pre-layer-norm

# transformers' names -> ours, by fragments replaced in this order (the attention's output dense before
# the MLP's, lm_head before its parts)
ROBERTA_NAMES = (
    ('roberta_prelayernorm.embeddings.word_embeddings', 'wte'), ('roberta_prelayernorm.embeddings.LayerNorm', 'emb_norm'),
    ('roberta_prelayernorm.LayerNorm', 'ln_f'), ('roberta_prelayernorm.encoder.layer.', 'h.'),
    ('.attention.LayerNorm', '.ln_1'), ('.attention.output.dense', '.attn.c_proj'),
    ('.intermediate.LayerNorm', '.ln_2'), ('.intermediate.dense', '.mlp.c_fc'), ('.output.dense', '.mlp.c_proj'),
    ('lm_head.', 'mlm_head.'), ('mlm_head.layer_norm', 'mlm_head.norm'), ('mlm_head.decoder.bias', 'mlm_head.bias'),
    ('mlm_head.decoder.', 'mlm_head.out_proj.'))
QKV = ('query', 'key', 'value')  # RoBERTa's three matrices are the thirds of our c_attn


def roberta_config(args, label_names):
    transformers = import_transformers()
    dropout = args.get('dropout', 0.0)  # used only if the exported model is trained further
    labels = dict(num_labels=args['n_classes'], id2label=dict(enumerate(label_names)),
                  label2id={name: i for i, name in enumerate(label_names)}) if args['n_classes'] else {}
    return transformers.RobertaPreLayerNormConfig(
        vocab_size=args['vocab_size'], hidden_size=args['n_embd'], num_hidden_layers=args['n_layer'],
        num_attention_heads=args['n_head'], intermediate_size=4 * args['n_embd'],
        hidden_act=HF_ACTIVATION[args.get('mlp', 'gelu')], hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        # RoBERTa numbers positions from pad_id + 1 (the rows before are never used)
        max_position_embeddings=args['block_size'] + args['pad_id'] + 1, type_vocab_size=1, layer_norm_eps=1e-5,
        pad_token_id=args['pad_id'], **labels)


def roberta_tensor(name, hf_tensor, ours, first_position):
    """transformers' tensor `name` from our state dict `ours`."""
    if name.endswith('position_embeddings.weight'):
        table = torch.zeros_like(hf_tensor)
        table[first_position:first_position + len(ours['wpe.weight'])] = ours['wpe.weight']
        return table
    if name.endswith('token_type_embeddings.weight'):  # one segment type, adding nothing
        return torch.zeros_like(hf_tensor)
    for theirs, our_name in ROBERTA_NAMES:
        name = name.replace(theirs, our_name)
    part = next((p for p in QKV if f'.attention.self.{p}.' in name), None)
    if part is not None:
        name = name.replace(f'.attention.self.{part}.', '.attn.c_attn.')
    if name not in ours:  # a bias=False model: a zero bias adds nothing (exact)
        assert name.endswith('bias'), name
        return torch.zeros_like(hf_tensor)
    return ours[name] if part is None else ours[name].chunk(3, dim=0)[QKV.index(part)]


def save_encoder(checkpoint, folder):
    transformers = import_transformers()
    model = model_from_checkpoint(checkpoint, 'encoder')
    args = dict(vars(model.config))
    names = checkpoint.get('label_names') or [str(i) for i in range(args['n_classes'])]
    head = transformers.RobertaPreLayerNormForSequenceClassification if args['n_classes'] else \
        transformers.RobertaPreLayerNormForMaskedLM
    hf_model = head(roberta_config(args, names))
    ours = model.state_dict()
    hf_model.load_state_dict({name: roberta_tensor(name, tensor, ours, args['pad_id'] + 1)
                              for name, tensor in hf_model.state_dict().items()})  # strict: every weight is set
    hf_model.save_pretrained(folder)


# ---------------------------------------------------------------------------
# The tokenizer


def byte_to_unicode():
    """GPT-2's vocabulary files spell each byte as a printable character: printable ASCII and Latin-1 bytes as
    themselves, the others (controls, space...) as chr(256), chr(257)... in byte order: a space is 'Ġ', newline 'Ċ'."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def merged_pair(token, ranks):
    """The two tokens whose merge made `token`: BPE on its bytes with only the earlier merges ends in two parts."""
    parts = [bytes([b]) for b in token]
    while True:
        rank, i = min((ranks.get(a + b, len(ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
        if rank >= ranks[token]:
            return parts
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def gpt2_vocab_and_merges(encoding):
    """vocab.json (token -> id) and the lines of merges.txt, rebuilt from tiktoken's ranks (bytes -> id)."""
    ranks = encoding._mergeable_ranks
    spell = byte_to_unicode()
    text = {token: ''.join(spell[b] for b in token) for token in ranks}
    vocab = {**{text[token]: rank for token, rank in ranks.items()}, **encoding._special_tokens}  # + '<|endoftext|>'
    merges = [' '.join(text[part] for part in merged_pair(token, ranks))
              for token in sorted(ranks, key=ranks.get) if len(token) > 1]
    return vocab, merges


def save_gpt2_tokenizer(name, folder, block_size):
    """GPT-2's tokenizer: vocab.json and merges.txt, loaded by transformers, which adds tokenizer.json."""
    transformers = import_transformers()
    vocab, merges = gpt2_vocab_and_merges(TiktokenTokenizer(name)._encoding)  # a missing tiktoken is a UserError
    Path(folder, 'vocab.json').write_text(json.dumps(vocab, ensure_ascii=False), encoding='utf-8')
    Path(folder, 'merges.txt').write_text('#version: 0.2\n' + '\n'.join(merges) + '\n', encoding='utf-8')
    # decode must give back the text exactly, as tiktoken does: no clean-up of spaces
    tokenizer = transformers.GPT2TokenizerFast.from_pretrained(
        folder, clean_up_tokenization_spaces=False, model_max_length=block_size)
    tokenizer.save_pretrained(folder)
    return tokenizer


def save_char_tokenizer(chars, folder, block_size):
    """One token per character: a word-level model whose 'words' are single characters."""
    import_transformers()  # a one-line error if it (and the tokenizers package it brings) is missing
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    # no '<unk>' in the vocabulary: an unknown character is an error, as with our CharTokenizer
    tokenizer = Tokenizer(models.WordLevel({ch: i for i, ch in enumerate(chars)}, unk_token='<unk>'))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r'[\s\S]'), behavior='isolated')  # every character alone
    tokenizer.decoder = decoders.Fuse()  # join the characters back without spaces
    return save_fast_tokenizer(tokenizer, folder, block_size)


def save_masked_lm_tokenizer(state, folder, block_size):
    """The encoder's BPE, as it is, with RoBERTa's framing of a text added: [CLS] text [SEP]."""
    from tokenizers import Tokenizer, processors
    tokenizer = Tokenizer.from_str(state['json'])
    cls_id, sep_id = tokenizer.token_to_id('[CLS]'), tokenizer.token_to_id('[SEP]')
    tokenizer.post_processor = processors.TemplateProcessing(
        single='[CLS] $A [SEP]', pair='[CLS] $A [SEP] $B:1 [SEP]:1', special_tokens=[('[CLS]', cls_id), ('[SEP]', sep_id)])
    return save_fast_tokenizer(tokenizer, folder, block_size, cls_token='[CLS]', sep_token='[SEP]', pad_token='[PAD]',
                               mask_token='[MASK]', unk_token='[UNK]')


def save_fast_tokenizer(tokenizer, folder, block_size, **special_tokens):
    """A `tokenizers` object as a folder AutoTokenizer loads (with these special tokens named)."""
    transformers = import_transformers()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, clean_up_tokenization_spaces=False, model_max_length=block_size, **special_tokens)
    tokenizer.save_pretrained(folder)
    # transformers 5 names the class TokenizersBackend, which earlier versions lack; all know this name
    path = Path(folder, 'tokenizer_config.json')
    config = {**json.loads(path.read_text()), 'tokenizer_class': 'PreTrainedTokenizerFast'}
    path.write_text(json.dumps(config, indent=2))
    return tokenizer


def save_tokenizer(state, folder, block_size):
    if state['kind'] == 'char':
        return save_char_tokenizer(state['chars'], folder, block_size)
    if state['kind'] == 'masked_lm':
        return save_masked_lm_tokenizer(state, folder, block_size)
    return save_gpt2_tokenizer(state['name'], folder, block_size)


def export(checkpoint, folder):
    trained_tokenizer = tokenizer_state(checkpoint)
    check_exportable(checkpoint, trained_tokenizer)
    writable_folder(folder, '--to')
    tokenizer = save_tokenizer(trained_tokenizer, folder, checkpoint['model_args']['block_size'])
    if checkpoint.get('model_type') == 'encoder':
        save_encoder(checkpoint, folder)
    else:
        save_model(checkpoint, folder, tokenizer.eos_token_id)


def main(argv=None):
    config, _ = configure(DEFAULTS, argv, sources=[__file__])
    folder = config['to'] or os.path.join(config['out_dir'], 'hf')
    checkpoint = load_checkpoint(config['out_dir'])
    import_transformers().utils.logging.disable_progress_bar()  # bars for a few small files are noise
    export(checkpoint, folder)
    auto = {'gpt': 'AutoModelForCausalLM', 'encoder': 'AutoModelForSequenceClassification'
            if checkpoint['model_args'].get('n_classes') else 'AutoModelForMaskedLM'}[checkpoint.get('model_type', 'gpt')]
    print(f"wrote {folder}: load it with transformers' {auto}.from_pretrained({folder!r}) "
          f"and AutoTokenizer.from_pretrained({folder!r})")


if __name__ == '__main__':
    run_cli(lambda: main(sys.argv[1:]))
