"""
Sample from a trained model, from GPT-2's weights, or translate with an encoder-decoder:

    python sample.py                                         # from what `python train.py` trained
    python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=3
    python sample.py --out_dir=out-shakespeare-char --start=FILE:prompt.txt
    python sample.py --out_dir=out-multi30k --start="Zwei Hunde spielen im Schnee."
    python sample.py --out_dir=out-multi30k --start=FILE:data/multi30k/test.de.txt --reference=data/multi30k/test.en.txt
"""

import os
import sys
import time

import torch

import generate
from checkpoint import load_checkpoint, model_from_checkpoint, tokenizer_state
from configurator import UserError, configure, run_cli, settings_of
from device import inference_dtype, resolve_device, speed_up
from model import GPT
from tokenizer import TiktokenTokenizer, tokenizer_from_state

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (from out_dir) or a GPT-2 variant: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'
out_dir = 'out'
start = "\n"  # the prompt (a source sentence for seq2seq), or FILE:path to read it from a file
num_samples = 10
max_new_tokens = 500
temperature = 0.8  # 1.0 = the model's distribution, lower = more conservative, 0 = greedy
top_k = 200  # keep only the top_k likeliest tokens; 0 = all
top_p = 1.0  # nucleus sampling: keep the likeliest tokens holding this much probability; 1.0 = all
seed = 1337
device = 'auto'
dtype = 'auto'  # 'float32' | 'bfloat16' | 'float16' | 'auto' (bf16 where the GPU or CPU computes in it)
compile = False
# seq2seq (translation)
beam_size = 4
length_penalty = 0.6
batch_size = 64  # sentences translated at once when start is a file
reference = ''  # a file of reference translations: print the BLEU score of the output against it
# -----------------------------------------------------------------------------
DEFAULTS = settings_of(globals())


def read_prompt(text):
    if not text.startswith('FILE:'):
        return text
    path = text[len('FILE:'):]
    if not os.path.isfile(path):
        raise UserError(f"prompt file {path} not found (start=FILE:path reads the prompt from a file)")
    with open(path, encoding='utf-8') as f:
        return f.read()


def load_model():
    """(model, tokenizer, checkpoint or None)."""
    if init_from.startswith('gpt2'):
        return GPT.from_pretrained(init_from, dict(dropout=0.0)), TiktokenTokenizer('gpt2'), None
    if init_from != 'resume':
        raise UserError(f"init_from must be 'resume' or a GPT-2 variant (gpt2, gpt2-medium, gpt2-large, gpt2-xl), got {init_from!r}")
    checkpoint = load_checkpoint(out_dir)
    return model_from_checkpoint(checkpoint), tokenizer_from_state(tokenizer_state(checkpoint)), checkpoint


def stream_text(model, tokenizer, idx):
    """Print one sample as it is generated. Decoding the whole sample each time keeps multi-byte
    characters split across BPE tokens intact: text is printed once it is complete."""
    ids, shown = [], ''
    for token in generate.stream(model, idx, max_new_tokens, temperature, top_k or None, top_p):
        ids.append(token.item())
        text = tokenizer.decode(ids)
        if not text.endswith('\ufffd'):
            print(text[len(shown):], end='', flush=True)
            shown = text
    print(tokenizer.decode(ids)[len(shown):])


def generate_text(model, tokenizer, prompt, run_device):
    ids = tokenizer.encode(prompt)
    if not ids:
        raise UserError("the prompt encodes to no tokens: give --start some text (the default is a newline)")
    if len(ids) > model.config.block_size:
        raise UserError(f"the prompt has {len(ids)} tokens, more than the model's block_size of "
                        f"{model.config.block_size}: shorten it")
    idx = torch.tensor(ids, dtype=torch.long, device=run_device)[None, ...]
    for _ in range(num_samples):
        stream_text(model, tokenizer, idx)
        print('---------------')


def translate_text(model, tokenizer, source, run_device, checkpoint):
    sentences = source.splitlines() if start.startswith('FILE:') else [source.strip()]
    t0 = time.time()
    try:
        translations = generate.translate(model, sentences, tokenizer, run_device, beam_size, length_penalty, batch_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    for line in translations:
        print(line)
    if reference:
        report_bleu(translations, model, checkpoint, time.time() - t0)


def report_bleu(translations, model, checkpoint, seconds):
    try:
        import sacrebleu
    except ImportError:
        raise UserError("BLEU needs sacrebleu: pip install sacrebleu") from None
    if not os.path.isfile(reference):
        raise UserError(f"reference file {reference} not found")
    with open(reference, encoding='utf-8') as f:
        references = f.read().splitlines()
    if len(references) != len(translations):
        raise UserError(f"{reference} has {len(references)} lines but {len(translations)} sentences were translated")
    bleu = sacrebleu.corpus_bleu(translations, [references])
    trained = checkpoint.get('elapsed', 0.0) if checkpoint else 0.0
    print(f"{bleu} | {model.get_num_params() / 1e6:.1f}M parameters | trained {trained / 60:.1f} min, "
          f"{checkpoint['iter_num'] if checkpoint else 0} iterations | translated in {seconds:.1f} s "
          f"(beam {beam_size})", file=sys.stderr)


def main(argv=None):
    config, _ = configure(DEFAULTS, argv, sources=[__file__])
    globals().update(config)
    if temperature < 0 or num_samples < 0 or max_new_tokens < 0 or top_k < 0 or not 0 < top_p <= 1 or beam_size < 1:
        raise UserError("temperature, num_samples, max_new_tokens and top_k must be >= 0, top_p in (0, 1], beam_size >= 1")
    run_device = resolve_device(device)
    device_type = torch.device(run_device).type
    run_dtype = inference_dtype(dtype, device_type)
    torch.manual_seed(seed)
    model, tokenizer, checkpoint = load_model()
    # inference needs no float32 master weights: half-size weights are read twice as fast
    speed_up(model.eval().to(run_device, getattr(torch, run_dtype)), device_type, run_dtype)
    is_gpt = isinstance(model, GPT)
    if compile:  # what generation calls, with a growing cache, so shapes are dynamic
        if is_gpt:
            model.forward = torch.compile(model.forward, dynamic=True)
        else:
            model.decode = torch.compile(model.decode, dynamic=True)
    prompt = read_prompt(start)
    if not is_gpt:
        translate_text(model, tokenizer, prompt, run_device, checkpoint)
    else:
        generate_text(model, tokenizer, prompt, run_device)


if __name__ == '__main__':
    run_cli(lambda: main(sys.argv[1:]))
