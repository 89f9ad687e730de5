"""Sample from a trained model, from GPT-2's weights, translate with an encoder-decoder, or ask an
encoder to fill [MASK]s or label sentences:

    python sample.py                                         # from what `python train.py` trained
    python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=3
    python sample.py --out_dir=out-multi30k --start=FILE:data/multi30k/test.de.txt --reference=data/multi30k/test.en.txt
    python sample.py --out_dir=out-mlm-reviews-cpu --start="this movie is [MASK] ."
    python sample.py --out_dir=out-sst2-cpu --start=FILE:data/sst2_phrases/val.txt --reference=data/sst2_phrases/val.labels.txt
"""

import os
import sys
import time
import warnings
from types import SimpleNamespace

import torch

import generate
from checkpoint import (GPT2_NAMES, is_pretrained, load_checkpoint, model_from_checkpoint, pretrained_gpt,
                        pretrained_tokenizer, tokenizer_state)
from configurator import configure, run_cli, settings_of
from errors import UserError
from device import generation_step, inference_dtype, one_token_steps, pack_for_inference, resolve_device, speed_up
from model import GPT, Encoder
from tokenizer import tokenizer_from_state

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (from out_dir), a GPT-2 variant ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl') or a folder of GPT-2 weights in Hugging Face's format
out_dir = 'out'
start = "\n"  # the prompt (a source sentence for seq2seq), or FILE:path to read it from a file
num_samples = 10
max_new_tokens = 500  # at most; a sample ends sooner at a stop
stop = None  # None: at the end-of-text token (GPT-2 BPE: <|endoftext|>); a string ("\n\n": escapes as in Python strings) or list of strings: there too; '' or 'none': never
temperature = 0.8  # 1.0 = the model's distribution, lower = more conservative, 0 = greedy
top_k = 200  # keep only the top_k likeliest tokens; 0 = all
top_p = 1.0  # nucleus sampling: keep the likeliest tokens holding this much probability; 1.0 = all
seed = 1337
device = 'auto'
dtype = 'auto'  # 'float32' | 'bfloat16' | 'float16' | 'auto' (bf16 where the GPU or CPU computes in it)
compile = False
batch_size = 64  # rows generated at once: samples of a GPT, sentences to translate
draft = ''  # out_dir of a smaller GPT with the same tokenizer: speculative decoding (greedy: the same tokens; sampling: the same distribution)
draft_tokens = 4  # tokens the draft proposes for each pass of the model
# seq2seq (translation)
beam_size = 4
length_penalty = 0.6
reference = ''  # a file of reference translations (or labels): print the BLEU score (or accuracy) of the output
# encoder
fills = 5  # masked-language model: the likeliest tokens shown for each [MASK]
# -----------------------------------------------------------------------------
DEFAULTS = settings_of(globals())
SEPARATOR = '---------------'


def read_text(path, what, hint=''):
    """A text file's contents, or a one-line error when it is missing or not UTF-8."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} not found{hint}")
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {e.start}: {e.reason}): save it as UTF-8") from None


def input_lines(cfg, text, what):
    """The sentences to work on: each line of the file (start=FILE:path), or the one text given."""
    if not cfg.start.startswith('FILE:'):
        return [text.strip()]
    if not text:
        raise UserError(f"{cfg.start[len('FILE:'):]} is empty: there is no sentence to {what}")
    return text.splitlines()


def load_model(cfg):
    """(model, tokenizer, checkpoint or None)."""
    if is_pretrained(cfg.init_from):
        return pretrained_gpt(cfg.init_from, dict(dropout=0.0)), pretrained_tokenizer(cfg.init_from), None
    if cfg.init_from != 'resume':
        raise UserError(f"init_from must be 'resume', a GPT-2 variant ({', '.join(GPT2_NAMES)}) or a folder of "
                        f"GPT-2 weights with a config.json, got {cfg.init_from!r}")
    checkpoint = load_checkpoint(cfg.out_dir)
    return model_from_checkpoint(checkpoint), tokenizer_from_state(tokenizer_state(checkpoint)), checkpoint


# ---------------------------------------------------------------------------
# GPT: samples that stop where the text ends


def stop_rules(stop, tokenizer):
    """(end-of-text token id or None, stop strings) for `stop`. None: the tokenizer's end-of-text token only; a string
    or a list of strings: those too ("\\n" and the like are escapes); '' or 'none': never stop early, as nanoGPT."""
    if stop in ('', 'none'):
        return None, []
    strings = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(strings, (list, tuple)) or not all(isinstance(s, str) and s for s in strings):
        raise UserError(f"stop must be a string or a list of non-empty strings, got {stop!r}")
    return getattr(tokenizer, 'eot_token', None), [unescaped(s) for s in strings]


def unescaped(text):
    """text with its backslash escapes read as a Python string literal reads them ("\\n", "\\t", "\\u00e9",
    "\\x41"), every other character kept; a bad escape ("C:\\x", a lone backslash) is a one-line error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error', DeprecationWarning)  # an unknown escape such as "\\q"
            # characters beyond Latin-1 become escapes first, so that the codec gives them back unchanged
            return text.encode('latin-1', 'backslashreplace').decode('unicode_escape')
    except (UnicodeDecodeError, DeprecationWarning) as e:
        reason = e.reason if isinstance(e, UnicodeDecodeError) else str(e).split(': ')[-1].rstrip(')')
        raise UserError(f"stop string '{text}': {reason}; write a backslash itself as \\\\") from None


class Sample:
    """One sample's new token ids, and its text up to where it stops."""

    def __init__(self, tokenizer, end_token, stops):
        self.tokenizer, self.end_token, self.stops = tokenizer, end_token, stops
        self.ids, self.finished = [], False

    def add(self, token):
        """Take the next token; an end-of-text token or a completed stop string finishes the sample."""
        self.finished = token == self.end_token
        if not self.finished:
            self.ids.append(token)
            self.finished = bool(self.stops) and generate.find_stop(self.tokenizer.decode(self.ids), self.stops) >= 0

    def text(self):
        """The text so far, cut before a stop string."""
        text = self.tokenizer.decode(self.ids)
        stop = generate.find_stop(text, self.stops)
        return text if stop < 0 else text[:stop]

    def printable(self):
        """The part of the text that later tokens cannot change: without a character still missing
        bytes (a multi-byte character split across BPE tokens), nor a tail that may begin a stop string."""
        text = self.text()
        if self.finished:
            return text
        text = text.rstrip('\ufffd')
        held = max((n for stop in self.stops for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)
        return text[:len(text) - held]


def print_samples(cfg, model, tokenizer, idx, first, count, end_token, stops, run_device, draft=None):
    """Samples first..first+count-1 of one prompt, generated as one batch. The batch's first sample
    is printed as it grows; the others, whole, when the batch is done."""
    samples = [Sample(tokenizer, end_token, stops) for _ in range(count)]
    generators = None
    if cfg.temperature > 0:  # sample i draws from its own seeded generator: the same text whatever the batch
        generators = [torch.Generator(run_device).manual_seed(cfg.seed + first + i) for i in range(count)]
    shown = ''
    args = (idx, count, cfg.max_new_tokens, cfg.temperature, cfg.top_k or None, cfg.top_p, generators,
            lambda row, ids: samples[row].finished)
    rows = generate.sample_rows(model, *args) if draft is None else \
        generate.speculative_rows(model, draft, *args, cfg.draft_tokens)
    for row, token in rows:
        samples[row].add(token)
        if row == 0:
            text = samples[0].printable()
            print(text[len(shown):], end='', flush=True)
            shown = text
    print(samples[0].text()[len(shown):], SEPARATOR, sep='\n')
    for sample in samples[1:]:
        print(sample.text(), SEPARATOR, sep='\n')


def generate_text(cfg, model, tokenizer, prompt, run_device, draft=None):
    ids = tokenizer.encode(prompt)
    if not ids:
        raise UserError("the prompt encodes to no tokens: give --start some text (the default is a newline)")
    block_size = model.config.block_size
    if len(ids) > block_size:
        print(f"warning: the prompt has {len(ids)} tokens, more than the model's block_size of {block_size}: "
              f"the model reads its last {block_size} tokens", file=sys.stderr)
        ids = ids[-block_size:]
    idx = torch.tensor(ids, dtype=torch.long, device=run_device)[None, ...]
    end_token, stops = stop_rules(cfg.stop, tokenizer)
    for first in range(0, cfg.num_samples, cfg.batch_size):
        count = min(cfg.batch_size, cfg.num_samples - first)
        print_samples(cfg, model, tokenizer, idx, first, count, end_token, stops, run_device, draft)


# ---------------------------------------------------------------------------
# Encoder-decoder: translations


def translate_text(cfg, model, tokenizer, source, run_device, summary):
    sentences = input_lines(cfg, source, 'translate')
    references = read_reference(cfg, len(sentences), "sentences are to be translated") if cfg.reference else None
    t0 = time.time()
    try:
        translations = generate.translate(model, sentences, tokenizer, run_device, cfg.beam_size, cfg.length_penalty,
                                          cfg.batch_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(*translations, sep='\n')  # one line per sentence (there is at least one)
    if references is not None:
        seconds, bleu = time.time() - t0, generate.bleu_score(translations, references)  # BLEU's time not counted
        print(f"{bleu} | {summary} | translated in {seconds:.1f} s (beam {cfg.beam_size})", file=sys.stderr)


def read_reference(cfg, count, what):
    references = read_text(cfg.reference, 'reference file').splitlines()
    if len(references) != count:
        raise UserError(f"{cfg.reference} has {len(references)} lines but {count} {what}")
    return references


def trained_summary(model, checkpoint):
    trained = checkpoint.get('elapsed', 0.0) if checkpoint else 0.0
    return (f"{model.get_num_params() / 1e6:.1f}M parameters | trained {trained / 60:.1f} min, "
            f"{checkpoint['iter_num'] if checkpoint else 0} iterations")


def load_draft(cfg, model, tokenizer):
    """The draft model of --draft, or a one-line error when it cannot draft for `model`: speculative decoding
    needs a GPT that reads the same token ids as the model (same tokenizer, same vocabulary) and as many."""
    what = f"--draft={cfg.draft}"
    if not isinstance(model, GPT):
        raise UserError(f"{what}: speculative decoding is for a GPT's sampling, and this model is not a GPT")
    checkpoint = load_checkpoint(cfg.draft)
    if checkpoint.get('model_type', 'gpt') != 'gpt':
        raise UserError(f"{what} holds model_type={checkpoint['model_type']!r}: a draft must be a GPT")
    draft = model_from_checkpoint(checkpoint)
    if tokenizer_state(checkpoint) != tokenizer.state() or draft.config.vocab_size != model.config.vocab_size:
        raise UserError(f"{what} was trained with another tokenizer or vocabulary than the model: its tokens would "
                        f"not be the model's")
    if draft.config.block_size < model.config.block_size:
        raise UserError(f"{what} reads {draft.config.block_size} tokens, fewer than the model's "
                        f"{model.config.block_size}: a draft must read as many")
    return draft


def ready_to_sample(cfg, model, run_device, device_type, run_dtype):
    """The model in the sampling dtype on the device, with the speed-ups that give its own numbers."""
    # inference needs no float32 master weights: half-size weights are read twice as fast
    speed_up(model.eval().to(run_device, getattr(torch, run_dtype)), device_type, run_dtype)
    if cfg.compile:
        compile_generation_step(model)
    else:
        one_token_steps(pack_for_inference(model, device_type, run_dtype))


def compile_generation_step(model):
    """torch.compile the step generation calls (device.generation_step), with dynamic shapes: the cache grows."""
    name = generation_step(model)
    setattr(model, name, torch.compile(getattr(model, name), dynamic=True))


# ---------------------------------------------------------------------------
# Encoder: fills of [MASK] (a masked-language model) or labels (a classifier)


def fill_text(cfg, model, tokenizer, text, run_device):
    lines = input_lines(cfg, text, 'fill')
    for number, line in enumerate(lines, 1):
        if '[MASK]' not in line:
            where = f"line {number} of {cfg.start[len('FILE:'):]}" if len(lines) > 1 else "the text"
            raise UserError(f"{where} has no [MASK]: this masked-language model fills [MASK]s (write one where a word "
                            f"should go); to label sentences, fine-tune it into a classifier first")
        print(line)
        for k, candidates in enumerate(generate.fill_masks(model, tokenizer, line, cfg.fills, run_device), 1):
            shown = '  '.join(f"{token.replace(chr(0x2581), ' ').strip() or token} {p:.3f}" for token, p in candidates)
            print(f"  [MASK] {k}: {shown}")


def label_text(cfg, model, tokenizer, text, run_device, checkpoint, summary):
    from_file = cfg.start.startswith('FILE:')
    sentences = input_lines(cfg, text, 'label')
    for number, sentence in enumerate(sentences, 1):
        where = f"line {number} of {cfg.start[len('FILE:'):]}" if from_file else "the text"
        if '[MASK]' in sentence:
            raise UserError(f"{where} has a [MASK], but this checkpoint is a classifier: it labels sentences; "
                            f"fill [MASK]s with the masked-language model it was fine-tuned from")
        if not sentence.strip():
            raise UserError(f"{where} is empty: a classifier labels one sentence per line")
    names = checkpoint.get('label_names') or [str(i) for i in range(model.config.n_classes)]
    references = read_reference(cfg, len(sentences), "sentences are to be labelled") if cfg.reference else None
    if unknown := sorted(set(references or ()) - set(names)):
        raise UserError(f"{cfg.reference} has labels the model does not know: {', '.join(map(repr, unknown[:5]))} "
                        f"(its labels: {', '.join(names)})")
    t0 = time.time()
    predictions = generate.label_sentences(model, tokenizer, sentences, run_device, cfg.batch_size)
    for label, p in predictions:
        print(names[label] if from_file else f"{names[label]} (probability {p:.3f})")
    if references is not None:
        correct = sum(names[label] == r for (label, _), r in zip(predictions, references))
        print(f"accuracy {100 * correct / len(references):.2f}% ({correct}/{len(references)}) | "
              f"{summary} | labelled in {time.time() - t0:.1f} s", file=sys.stderr)


def validate(cfg):
    if cfg.temperature < 0 or cfg.num_samples < 0 or cfg.max_new_tokens < 0 or cfg.top_k < 0 or not 0 < cfg.top_p <= 1:
        raise UserError("temperature, num_samples, max_new_tokens and top_k must be >= 0, top_p in (0, 1]")
    if cfg.beam_size < 1 or cfg.batch_size < 1 or cfg.fills < 1:
        raise UserError(f"beam_size, batch_size and fills must be at least 1, got {cfg.beam_size}, {cfg.batch_size} "
                        f"and {cfg.fills}")
    if cfg.draft_tokens < 1:
        raise UserError(f"draft_tokens must be at least 1, got {cfg.draft_tokens}")


def main(argv=None):
    cfg = SimpleNamespace(**configure(DEFAULTS, argv, sources=[__file__])[0])
    validate(cfg)
    run_device = resolve_device(cfg.device)
    device_type = torch.device(run_device).type
    run_dtype = inference_dtype(cfg.dtype, device_type)
    torch.manual_seed(cfg.seed)
    model, tokenizer, checkpoint = load_model(cfg)
    summary = trained_summary(model, checkpoint)  # counted before packing: a packed layer holds no weight parameter
    draft = load_draft(cfg, model, tokenizer) if cfg.draft else None
    for net in (model, draft) if draft else (model,):
        ready_to_sample(cfg, net, run_device, device_type, run_dtype)
    prompt = cfg.start
    if prompt.startswith('FILE:'):
        prompt = read_text(prompt[len('FILE:'):], 'prompt file', " (start=FILE:path reads the prompt from a file)")
    if isinstance(model, GPT):
        generate_text(cfg, model, tokenizer, prompt, run_device, draft)
    elif isinstance(model, Encoder) and model.config.n_classes:
        label_text(cfg, model, tokenizer, prompt, run_device, checkpoint, summary)
    elif isinstance(model, Encoder):
        if cfg.reference:
            raise UserError("this checkpoint is a masked-language model: it has no labels to score against "
                            "--reference; fine-tune it into a classifier first")
        fill_text(cfg, model, tokenizer, prompt, run_device)
    else:
        translate_text(cfg, model, tokenizer, prompt, run_device, summary)


if __name__ == '__main__':
    run_cli(lambda: main(sys.argv[1:]))
