"""Measure how fast a training configuration trains and samples, with train.py's own code:

    python bench.py config/train_shakespeare_char.py --device=cpu --compile=False \\
        --n_layer=4 --n_head=4 --n_embd=128 --block_size=64 --batch_size=12
    python bench.py config/train_gpt2.py --real_data=False --json=True      # GPT-2 124M MFU on a GPU

Training: `warmup_steps` real training steps (forward, backward, clipping, optimizer step, with the run's dtype,
autocast and torch.compile), then the clock runs over `measure_steps` more: tokens/s, ms per step, MFU against the
device's peak FLOP/s; then one more step's peak memory (step_memory), the parameters trained, the optimizer's state.
Sampling (GPT models): greedy generation with the KV cache against re-running the whole context at every step;
then samples as sample.py draws them, one at a time against one batch.
Every train.py setting works here (the model, batch, device, dtype, compile...), plus the benchmark's own settings
below. Nothing is written to out_dir (it is read with init_from='resume'); wandb stays off."""

import copy
import ctypes
import json
import resource
import sys
import tempfile
import time
from contextlib import nullcontext, redirect_stdout

import torch

import generate
import train
from configurator import configure, run_cli
from errors import UserError
from checkpoint import load_checkpoint, model_from_checkpoint
from data import Batches, data_folder, prepare_if_missing
from device import PackedLinear, one_token_steps, pack_for_inference, synchronize
from model import Seq2SeqTransformer
from sharding import local_bytes
from tokenizer import load_meta

# The benchmark's settings, on top of train.py's (kept in a dict: a variable named json would hide the module)
BENCH_DEFAULTS = dict(
    # benchmark
    warmup_steps=5,  # training steps before the clock starts: compilation, allocator, caches
    measure_steps=20,  # timed training steps; 0 = measure sampling only
    sample_tokens=255,  # new tokens per greedy generation (at most block_size - 1); 0 = no sampling
    sample_rows=10,  # samples of one prompt for the batched figure (sample.py's num_samples)
    sample_rounds=3,  # one row and the batch are timed alternately this many times; each keeps its best
    packed_weights=True,  # sample with device.PackedLinear where it pays, as sample.py does; False: plain nn.Linear
    draft='',  # out_dir of a draft model: also time that batch by speculative decoding against plain (greedy and 0.8)
    draft_tokens=4,  # tokens the draft proposes for each pass of the model (sample.py's draft_tokens)
    real_data=True,  # False: random token ids, so no dataset need be prepared (e.g. OpenWebText)
    json=False,  # print one JSON object instead of a table
)


class RandomBatches(Batches):
    """Random token ids in place of a dataset: a step's speed does not depend on which tokens it
    reads. Every row is block_size long (for seq2seq, longer than most real sentences)."""

    def __init__(self, model, block_size, device):
        super().__init__(device)
        self.seq2seq = isinstance(model, Seq2SeqTransformer)
        config = model.config
        # seq2seq: no special tokens, or <pad> would be masked out of the source
        self.first_id = max(config.pad_id, config.bos_id, config.eos_id) + 1 if self.seq2seq else 0
        self.vocab_size, self.block_size = config.vocab_size, block_size
        self.generator = torch.Generator().manual_seed(0)

    def draw(self, split, n_rows, generator):
        return torch.arange(n_rows)  # the rows carry no information: batch() draws the tokens

    def num_targets(self, split, rows):
        return len(rows) * self.block_size

    def random_ids(self, n_rows, length):
        return torch.randint(self.first_id, self.vocab_size, (n_rows, length), generator=self.generator)

    def batch(self, split, rows):
        tokens = self.random_ids(len(rows), self.block_size + 1)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        if self.seq2seq:  # (source, target input, targets)
            return self.to_device(self.random_ids(len(rows), self.block_size), inputs, targets)
        return self.to_device(inputs, targets)


class BenchTrainer(train.Trainer):
    """train.py's Trainer (model, optimizers, autocast, compile, training step), with random data if asked."""

    def __init__(self, cfg, explicit, real_data):
        self.real_data = real_data
        super().__init__(cfg, explicit)
        if not real_data:  # made now: the ids must stay below the vocabulary of the model just built
            self.data = RandomBatches(self.raw_model, cfg.block_size, self.device)

    def load_data(self):
        if self.real_data:
            try:
                return super().load_data()
            except UserError as e:
                raise UserError(f"{e}; or measure on random tokens: --real_data=False") from None
        data_dir = data_folder(self.cfg.dataset)
        # small known datasets only: their meta sets the vocabulary
        prepare_if_missing(self.cfg.dataset, self.cfg.model_type, self.rank, self.ranks.local_rank, self.device)
        meta = load_meta(data_dir)
        if meta is None and self.cfg.model_type == 'seq2seq':
            raise UserError(f"{data_dir}/meta.pkl not found: a seq2seq model takes its special token ids from it")
        return meta, None


def step_memory(trainer):
    """(MiB, what) of one more training step. GPU: max_memory_allocated (weights and optimizer state included).
    Linux CPU: the resident memory's peak above its level before the step: malloc's free memory handed back
    (malloc_trim, or the step reuses it unseen), the peak VmHWM reset by writing 5 to /proc/self/clear_refs,
    then VmHWM after the step less VmRSS before it. Elsewhere: the process's peak RSS."""
    if trainer.device_type == 'cuda':
        torch.cuda.reset_peak_memory_stats(trainer.device)
        trainer.train_step()
        return torch.cuda.max_memory_allocated(trainer.device) / 2 ** 20, 'cuda max allocated'
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:  # not Linux with glibc
        trainer.train_step()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return rss / (2 ** 20 if sys.platform == 'darwin' else 2 ** 10), 'max RSS'
    idle = resident_kib('VmRSS')
    trainer.train_step()
    return (resident_kib('VmHWM') - idle) / 2 ** 10, 'RSS above idle'


def resident_kib(field):
    """A memory figure of /proc/self/status, in KiB: VmRSS (resident now) or VmHWM (its peak)."""
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))


def measure_training(trainer, warmup_steps, measure_steps):
    for _ in range(warmup_steps):
        trainer.train_step()
    synchronize(trainer.device)
    tokens, t0 = 0, time.perf_counter()
    for _ in range(measure_steps):
        tokens += trainer.train_step()[1]  # tokens the global batch fed the model
    synchronize(trainer.device)
    step_time, step_tokens = (time.perf_counter() - t0) / measure_steps, tokens / measure_steps
    memory, memory_kind = step_memory(trainer)
    return {'tokens_per_iter': step_tokens, 'ms_per_iter': step_time * 1000, 'tokens_per_sec': step_tokens / step_time,
            # of one device, rank 0's (only it measures its peak: under torchrun the table is rank 0's)
            'mfu': trainer.mfu(step_tokens, step_time) if trainer.master else None,
            'peak_flops': trainer.peak if trainer.master else None,
            'peak_memory_mib': memory, 'peak_memory_kind': memory_kind,
            # what LoRA shrinks: the parameters trained (of all), and AdamW's state for them
            'trained_params': sum(p.numel() for p in trainer.raw_model.parameters() if p.requires_grad),
            'optimizer_state_bytes': local_bytes(trainer.raw_model, trainer.optimizers)['optimizer']}


def greedy(model, device, new_tokens, use_cache):
    """(tokens, tokens per second) of greedy generation from the one-token prompt [0]."""
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    synchronize(device)
    t0 = time.perf_counter()
    tokens = model.generate(prompt, new_tokens, temperature=0.0, use_cache=use_cache)
    synchronize(device)
    return tokens, new_tokens / (time.perf_counter() - t0)


def sampled_rows(model, device, new_tokens, n_rows, temperature=0.8, draft=None, draft_tokens=4, stats=None):
    """Tokens per second, over all rows, of n_rows samples of a one-token prompt generated as one
    batch, as sample.py does (temperature 0.8, top-k 200, a seeded generator per row, no stop); with a draft
    model, by speculative decoding (stats: a dict for its counts)."""
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    generators = [torch.Generator(device).manual_seed(i) for i in range(n_rows)]
    args = (prompt, n_rows, new_tokens, temperature, 200, None, generators)
    synchronize(device)
    t0 = time.perf_counter()
    rows = generate.sample_rows(model, *args) if draft is None else \
        generate.speculative_rows(model, draft, *args, draft_tokens=draft_tokens, stats=stats)
    count = sum(1 for _ in rows)
    synchronize(device)
    return count / (time.perf_counter() - t0)


def for_sampling(trainer, model, packed_weights):
    """A copy of model as sample.py runs it: uncompiled (every step has a new length), weights in the run's dtype
    (sample.py's dtype='auto' picks bf16 on bf16 CPUs: pass --dtype=bfloat16 to measure that)."""
    model = copy.deepcopy(model).to(trainer.device, trainer.ptdtype).eval()
    if packed_weights:
        pack_for_inference(model, trainer.device_type, trainer.dtype)
    return one_token_steps(model)


def measure_speculative(trainer, model, draft_dir, new_tokens, n_rows, rounds, draft_tokens, packed_weights):
    """sampled_rows by speculative decoding against plain, greedy and at temperature 0.8, alternately `rounds`
    times (each keeps its best), and the mean count of draft tokens kept per row and pass of the model."""
    draft = for_sampling(trainer, model_from_checkpoint(load_checkpoint(draft_dir)), packed_weights)
    prompt = torch.zeros((1, 1), dtype=torch.long, device=trainer.device)
    same = list(generate.sample_rows(model, prompt, 1, new_tokens, 0.0)) == \
        list(generate.speculative_rows(model, draft, prompt, 1, new_tokens, 0.0, draft_tokens=draft_tokens))
    results = {'draft_params': draft.get_num_params(), 'draft_tokens': draft_tokens, 'spec_same_tokens': same}
    for name, temperature in (('greedy', 0.0), ('t0.8', 0.8)):
        plain = fast = 0.0
        stats = {}
        for _ in range(rounds):
            plain = max(plain, sampled_rows(model, trainer.device, new_tokens, n_rows, temperature))
            fast = max(fast, sampled_rows(model, trainer.device, new_tokens, n_rows, temperature, draft, draft_tokens,
                                          stats))
        results.update({f'spec_{name}_plain_tokens_per_sec': plain, f'spec_{name}_tokens_per_sec': fast,
                        f'spec_{name}_speedup': fast / plain,
                        f'spec_{name}_accepted_per_pass': stats['accepted'] / stats['passes']})
    return results


def measure_sampling(trainer, sample_tokens, sample_rows, sample_rounds, packed_weights, draft='', draft_tokens=4):
    model = for_sampling(trainer, trainer.raw_model, packed_weights)
    new_tokens = min(sample_tokens, model.config.block_size - 1)  # past the block the cache is not used
    for use_cache in (True, False):  # warm-up: first calls pay for allocations
        greedy(model, trainer.device, min(new_tokens, 8), use_cache)
    cached, cache_speed = greedy(model, trainer.device, new_tokens, use_cache=True)
    rerun, rerun_speed = greedy(model, trainer.device, new_tokens, use_cache=False)
    one_row = batched = 0.0  # alternated, so that a change in the machine's speed hits both alike
    for _ in range(sample_rounds):
        one_row = max(one_row, sampled_rows(model, trainer.device, new_tokens, 1))  # the one-at-a-time loop's rate
        batched = max(batched, sampled_rows(model, trainer.device, new_tokens, sample_rows))
    return {'sample_rows': sample_rows, 'sample_rounds': sample_rounds, 'sample_one_row_tokens_per_sec': one_row,
            'sample_batched_tokens_per_sec': batched, 'sample_batched_speedup': batched / one_row,
            'sample_new_tokens': new_tokens, 'sample_cache_tokens_per_sec': cache_speed,
            'sample_no_cache_tokens_per_sec': rerun_speed, 'sample_cache_speedup': cache_speed / rerun_speed,
            'sample_same_tokens': torch.equal(cached, rerun),  # may differ in low precision, where near-ties flip
            'sample_packed_weights': any(isinstance(m, PackedLinear) for m in model.modules()),
            **(measure_speculative(trainer, model, draft, new_tokens, sample_rows, sample_rounds, draft_tokens,
                                   packed_weights) if draft else {})}


def run_bench(cfg, explicit, bench):
    trainer = BenchTrainer(cfg, explicit, bench['real_data'])
    model = trainer.raw_model
    results = {'model_type': cfg.model_type, 'params': model.get_num_params(), 'n_layer': model.config.n_layer,
               'n_head': model.config.n_head, 'n_embd': model.config.n_embd, 'block_size': cfg.block_size,
               'batch_size': cfg.batch_size, 'gradient_accumulation_steps': cfg.gradient_accumulation_steps,
               'device': trainer.device, 'threads': torch.get_num_threads(), 'dtype': trainer.dtype,
               'compile': cfg.compile, 'activation_checkpointing': cfg.activation_checkpointing, 'lora_rank': cfg.lora_rank,
               **{key: bench[key] for key in ('real_data', 'warmup_steps', 'measure_steps')}}
    if bench['measure_steps']:
        results.update(measure_training(trainer, bench['warmup_steps'], bench['measure_steps']))
    if bench['sample_tokens'] and cfg.model_type == 'gpt':
        results.update(measure_sampling(trainer, bench['sample_tokens'], bench['sample_rows'],
                                         bench['sample_rounds'], bench['packed_weights'], bench['draft'],
                                         bench['draft_tokens']))
    return results


def print_table(r):
    print(f"{r['model_type']}: {r['n_layer']} layers, {r['n_embd']} wide, {r['n_head']} heads, "
          f"{r['params'] / 1e6:.2f}M parameters; block {r['block_size']}, batch {r['batch_size']} "
          f"x {r['gradient_accumulation_steps']}; {r['device']} ({r['threads']} threads), {r['dtype']}, compile {r['compile']}, "
          f"{'real' if r['real_data'] else 'random'} data")
    if 'tokens_per_sec' in r:
        print(f"training, {r['measure_steps']} steps after {r['warmup_steps']} of warm-up:")
        print(f"  tokens/s        {r['tokens_per_sec']:,.0f}  ({r['tokens_per_iter']:,.0f} per step)")
        print(f"  ms/iter         {r['ms_per_iter']:.2f}")
        print(f"  MFU             {r['mfu'] * 100:.2f}%  of {r['peak_flops']:.3g} FLOP/s")
        print(f"  peak memory     {r['peak_memory_mib']:,.0f} MiB  ({r['peak_memory_kind']}, one step)")
        print(f"  trained         {r['trained_params']:,} parameters, {r['optimizer_state_bytes'] / 2 ** 20:,.1f} MiB of "
              f"optimizer state")
    if 'sample_cache_speedup' in r:
        print(f"greedy sampling, {r['sample_new_tokens']} new tokens from a one-token prompt "
              f"({'packed' if r['sample_packed_weights'] else 'plain'} Linear weights):")
        print(f"  KV cache        {r['sample_cache_tokens_per_sec']:,.1f} tokens/s")
        print(f"  full re-run     {r['sample_no_cache_tokens_per_sec']:,.1f} tokens/s")
        print(f"  speedup         {r['sample_cache_speedup']:.1f}x  (same tokens: {r['sample_same_tokens']})")
        print(f"{r['sample_rows']} samples of {r['sample_new_tokens']} tokens (temperature 0.8, top-k 200), tokens/s of all rows, "
              f"best of {r['sample_rounds']}:")
        print(f"  one at a time   {r['sample_one_row_tokens_per_sec']:,.1f}")
        print(f"  one batch       {r['sample_batched_tokens_per_sec']:,.1f}  ({r['sample_batched_speedup']:.1f}x)")
    if 'spec_greedy_speedup' in r:
        print(f"the same batch by speculative decoding, draft of {r['draft_params'] / 1e6:.2f}M parameters, "
              f"{r['draft_tokens']} tokens a pass (tokens/s of all rows, best of {r['sample_rounds']}; greedy's "
              f"tokens plain greedy's: {r['spec_same_tokens']}):")
        for name in ('greedy', 't0.8'):
            print(f"  {name:<6}  plain {r[f'spec_{name}_plain_tokens_per_sec']:,.1f}, speculative "
                  f"{r[f'spec_{name}_tokens_per_sec']:,.1f} ({r[f'spec_{name}_speedup']:.2f}x), "
                  f"{r[f'spec_{name}_accepted_per_pass']:.2f} draft tokens kept per pass")


def main(argv=None):
    """Run the benchmark; print a table (or JSON) and return the results as a dict."""
    settings, explicit = configure({**train.DEFAULTS, **BENCH_DEFAULTS}, argv, sources=[__file__, train.__file__])
    bench = {key: settings.pop(key) for key in BENCH_DEFAULTS}
    for key in ('warmup_steps', 'measure_steps', 'sample_tokens', 'sample_rows'):
        if bench[key] < 0:
            raise UserError(f"{key} must not be negative, got {bench[key]}")
    for key in ('sample_rounds', 'draft_tokens'):
        if bench[key] < 1:
            raise UserError(f"{key} must be at least 1, got {bench[key]}")
    settings['wandb_log'] = False  # a benchmark is not a run to log
    quiet = redirect_stdout(sys.stderr) if bench['json'] else nullcontext()  # stdout: the JSON object only
    with quiet, tempfile.TemporaryDirectory() as scratch:
        if settings['init_from'] != 'resume':  # the Trainer sets up out_dir for a new run (and clears its metrics)
            settings['out_dir'] = scratch
        results = run_bench(train.Settings(**settings), explicit - set(BENCH_DEFAULTS), bench)
    if torch.distributed.is_initialized():  # under torchrun: rank 0 reports, for the device it ran on
        rank = torch.distributed.get_rank()
        torch.distributed.destroy_process_group()
        if rank != 0:
            return results
    if bench['json']:
        print(json.dumps(results))
    else:
        print_table(results)
    return results


if __name__ == '__main__':
    run_cli(lambda: main(sys.argv[1:]))
