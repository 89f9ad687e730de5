"""Train a GPT, an encoder-decoder or an encoder. One process:

    python train.py                                    # tiny Shakespeare, characters, best device
    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --max_iters=100

Several processes with DDP (the global batch is the same whatever their number):

    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
    # two nodes: on the first (IP 123.456.123.456)
    torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --master_addr=123.456.123.456 --master_port=1234 train.py
    # and on the second the same with --node_rank=1

Settings are the module-level variables below (`python train.py --help` lists them; configurator.py overrides them),
one Settings object `cfg` in the loop. Where a run starts is checkpoint.py's part; the processes, distributed.py's."""

import math
import signal
import sys
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist

import distributed
import generate
from checkpoint import (GPT2_NAMES, adopt_architecture, build_model, claim_out_dir, data_tokenizer, from_run,
                        has_checkpoint, is_pretrained, remove_checkpoints, restore_run, resumes, rng_state, save_run)
from configurator import configure, run_cli, settings_of
from data import EpochSampler, MaskedSentences, data_folder, load_dataset, prepare_if_missing
from device import (DTYPES, autocast, compiles, keep_freed_memory, muon_class, peak_flops, resolve_device, speed_up,
                    training_dtype)
from errors import UserError
from lora import changed_weights, target_parts
from metrics import RunLog
from model import ACTIVATION_CHECKPOINTING
from optim import NonFiniteSteps
from tokenizer import load_meta

# -----------------------------------------------------------------------------
# Settings. The defaults train a small character-level model of tiny Shakespeare in a few
# minutes on a laptop CPU, with GPT-2's architecture; config/train_shakespeare_char_cpu.py
# is the tuned recipe (modern architecture, Muon, bf16) for the lowest loss in two minutes.

# I/O
out_dir = 'out'
eval_interval = 250
log_interval = 10  # also how often DDP ranks agree to stop (a signal, max_time): up to log_interval - 1 steps late
eval_iters = 20  # batches per split in each evaluation
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # False: save only when the validation loss improves
init_from = 'scratch'  # 'scratch' | 'resume' (from out_dir/ckpt.pt) | 'gpt2' | 'gpt2-medium' | 'gpt2-large' | 'gpt2-xl' | a folder of GPT-2 weights in Hugging Face's format (export.py's, or a downloaded one) | another run's out_dir (its weights, to fine-tune: an encoder's body with a fresh head; a fresh optimizer and step count)
overwrite = False  # a new run into an out_dir that holds another run's checkpoint: refused, unless True (then that checkpoint is deleted)
keep_last = 0  # earlier checkpoints to keep as ckpt-<iter>.pt besides ckpt.pt
# wandb logging
wandb_log = False
wandb_project = 'nanogpt'
wandb_run_name = 'run'
# data
dataset = 'shakespeare_char'  # a folder under data/ (or a path) made by prepare/<dataset>.py
model_type = 'gpt'  # 'gpt' (decoder-only) | 'seq2seq' (encoder-decoder, for translation) | 'encoder' (BERT-style: masked-LM pretraining, or a classifier when the data has labels)
gradient_accumulation_steps = 1  # micro-steps per optimizer step, over all processes together
batch_size = 32  # sequences (sentence pairs for seq2seq) per micro-step per process
block_size = 128  # context length (seq2seq: longest source and target sentence)
sampling = 'random'  # 'random' (nanoGPT's: windows at random offsets, with replacement) | 'epoch' (gpt: each epoch a seeded permutation of all non-overlapping windows)
align_documents = False  # gpt: every row starts at a document start (after <|endoftext|>), whole documents packed best-fit to fill it
mask_prob = 0.15  # encoder masked-LM: share of the tokens chosen for the loss (of them 80% [MASK], 10% random, 10% kept)
pack_sentences = True  # encoder: rows of several sentences up to block_size, not one a row. Masked-LM: consecutive sentences ([CLS] a [SEP] b [SEP] ...), read together; classifier: [CLS] a [SEP] [CLS] b [SEP] ..., each read apart (the same numbers as one a row, less padding)
# model
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
vocab_size = 0  # 0: from the dataset's meta.pkl, else GPT-2's 50304
pos_emb = 'learned'  # 'learned' | 'sinusoidal' | 'rope'
norm = 'layernorm'  # 'layernorm' | 'rmsnorm'
qk_norm = False
mlp = 'gelu'  # 'gelu' | 'gelu_tanh' | 'relu2' | 'swiglu'
fused_attention = True  # PyTorch's fused attention kernel; False runs model.scaled_dot_product_attention, the formula written out
label_smoothing = 0.1  # seq2seq, and an encoder's classifier (not its masked-LM head)
# LoRA: fine-tune init_from's model through low-rank adapters, its weights frozen
lora_rank = 0  # the adapters' rank; 0 = no LoRA (the whole model trains)
lora_alpha = 16.0  # the adapters' output is scaled by lora_alpha / lora_rank
lora_targets = 'attn'  # the Linear layers adapted: 'attn' (attention's projections) | 'mlp' | 'attn+mlp'
# optimizer
optimizer = 'adamw'  # 'adamw' | 'muon' (Muon for hidden matrices, AdamW for the rest)
muon_momentum = 0.95  # Muon's momentum; AdamW's are beta1 and beta2
learning_rate = 3e-3
max_iters = 1000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # clip gradients to this norm; 0 = no clipping
max_skipped_steps = 20  # stop after this many non-finite steps in a row
# learning rate schedule: linear warmup, then a cosine (or linear) decay to min_lr
decay_lr = True
lr_schedule = 'cosine'  # 'cosine' (nanoGPT's) | 'linear' (measured a little better for short runs)
warmup_iters = 100
lr_decay_iters = 1000  # usually max_iters
min_lr = 3e-4  # usually learning_rate / 10
max_time = 0.0  # seconds of training (evals included); 0 = no limit. When set, the decay follows time
# seq2seq evaluation: BLEU of greedy translations of this many validation sentences at each eval
bleu_sentences = 200
# system
backend = 'auto'  # 'nccl' | 'gloo' | 'auto' (nccl on GPU, gloo on CPU)
device = 'auto'  # 'cpu' | 'cuda' | 'cuda:1' | 'mps' | 'auto' (the best present)
dtype = 'auto'  # 'float32' | 'bfloat16' | 'float16' (with a gradient scaler) | 'auto' (bf16 where GPU or CPU has it)
compile = False  # torch.compile the model: faster steps on GPU after a minute of compiling
activation_checkpointing = 'none'  # 'none' | 'block' (each block's activations recomputed in the backward pass, not kept: less memory, one more forward)
fsdp = False  # shard parameters, gradients and AdamW's state over the ranks (FSDP2; checkpoints become sharded out_dir/ckpt.dcp): for models whose training state outgrows one device
seed = 1337
# -----------------------------------------------------------------------------
DEFAULTS = settings_of(globals())

stop_signal = None  # process state, not a setting: set by SIGTERM/SIGINT; the loop then saves and exits
stop_signal_time = 0.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # the signals request_stop handles


def request_stop(signum, frame):
    global stop_signal, stop_signal_time
    if stop_signal is None:
        stop_signal, stop_signal_time = signum, time.monotonic()
    # a second Ctrl-C: stop now. A repeat within a second is the same request: GNU timeout (and
    # other supervisors) signal the process, then its whole process group, which holds it too
    elif time.monotonic() - stop_signal_time > 1.0:
        raise KeyboardInterrupt


class Settings(SimpleNamespace):
    """A run's settings as attributes (`cfg.batch_size`): DEFAULTS, config files, flags; no function reads DEFAULTS."""


def validate_settings(cfg):
    for key in ('eval_interval', 'log_interval', 'eval_iters', 'gradient_accumulation_steps', 'batch_size',
                'block_size', 'n_layer', 'n_head', 'n_embd'):
        if getattr(cfg, key) <= 0:
            raise UserError(f"{key} must be positive, got {getattr(cfg, key)}")
    for key in ('max_iters', 'keep_last', 'warmup_iters', 'max_time', 'grad_clip', 'weight_decay', 'vocab_size',
                'lora_rank'):
        if getattr(cfg, key) < 0:
            raise UserError(f"{key} must not be negative, got {getattr(cfg, key)}")
    if cfg.learning_rate <= 0 or cfg.min_lr < 0:
        raise UserError("learning_rate must be positive and min_lr not negative")
    if not 0 <= cfg.muon_momentum < 1:
        raise UserError(f"muon_momentum must be in [0, 1), got {cfg.muon_momentum}")
    if cfg.decay_lr and cfg.max_time == 0 and cfg.lr_decay_iters <= cfg.warmup_iters:
        raise UserError(f"lr_decay_iters ({cfg.lr_decay_iters}) must be larger than warmup_iters ({cfg.warmup_iters})")
    choices = {'model_type': ('gpt', 'seq2seq', 'encoder'), 'dtype': ('auto', 'float32', 'bfloat16', 'float16'),
               'backend': ('auto', 'nccl', 'gloo'), 'optimizer': ('adamw', 'muon'), 'lr_schedule': ('cosine', 'linear'),
               'sampling': ('random', 'epoch'), 'activation_checkpointing': tuple(ACTIVATION_CHECKPOINTING)}
    if cfg.init_from.startswith('gpt2') and not is_pretrained(cfg.init_from):
        choices['init_from'] = GPT2_NAMES
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise UserError(f"{key} must be one of {', '.join(allowed)}; got {getattr(cfg, key)!r}")
    if from_run(cfg) and not has_checkpoint(cfg.init_from):
        raise UserError(f"init_from must be 'scratch', 'resume', one of {', '.join(GPT2_NAMES)}, a folder of GPT-2 "
                        f"weights (config.json) or a run's out_dir; {cfg.init_from!r} has no ckpt.pt or ckpt.dcp")
    if cfg.model_type != 'gpt' and is_pretrained(cfg.init_from):
        raise UserError("GPT-2 weights initialise a gpt model only: use --model_type=gpt")
    if cfg.lora_rank and (cfg.init_from == 'scratch' or target_parts(cfg.lora_targets) is None):
        raise UserError(f"LoRA (lora_rank > 0) fine-tunes a trained model: it needs init_from (GPT-2, a folder of its "
                        f"weights or a run's out_dir) and lora_targets 'attn', 'mlp' or 'attn+mlp' (got "
                        f"{cfg.lora_targets!r})")
    if cfg.fsdp and cfg.optimizer == 'muon':
        raise UserError("optimizer='muon' does not work with fsdp=True: Muon orthogonalises each whole weight matrix, "
                        "which FSDP splits across ranks; use optimizer='adamw', or fsdp=False (DDP)")
    if cfg.fsdp and cfg.model_type == 'seq2seq' and cfg.bleu_sentences > 0:
        raise UserError("fsdp=True needs bleu_sentences=0: BLEU decodes on rank 0 alone, and a sharded model runs "
                        "only on all ranks together")
    if cfg.model_type != 'gpt' and (cfg.sampling != 'random' or cfg.align_documents):
        raise UserError("sampling='epoch' and align_documents=True work with gpt token data only")


def get_lr(cfg, it, elapsed):
    """Linear warmup, then a cosine or linear decay to min_lr over lr_decay_iters (or over max_time)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if cfg.max_time > 0:
        progress = elapsed / cfg.max_time
    else:
        progress = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    if progress >= 1:
        return cfg.min_lr
    remaining = 1 - progress if cfg.lr_schedule == 'linear' else 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr + remaining * (cfg.learning_rate - cfg.min_lr)


# -----------------------------------------------------------------------------
# The loop


class Trainer:
    """The state of a run and its loop: `Trainer(cfg, explicit).run()`, where `explicit` is the set of
    settings the user gave (a resumed run checks them against its checkpoint). Reading order: __init__,
    run (the loop), train_step (one optimizer step), then evaluation and checkpoints."""

    def __init__(self, cfg, explicit=frozenset()):
        validate_settings(cfg)
        self.cfg = cfg
        self.ranks, self.device = distributed.setup(resolve_device(cfg.device), cfg.backend, cfg.fsdp)
        self.rank, self.world, self.master = self.ranks.rank, self.ranks.world, self.ranks.master
        self.out = RunLog(cfg.out_dir, self.master)  # what the run reports
        self.log = self.out.line
        self.accum = distributed.micro_steps(self.ranks, cfg.gradient_accumulation_steps, cfg.eval_iters, cfg.fsdp)
        self.device_type = torch.device(self.device).type
        self.dtype = training_dtype(cfg.dtype, self.device_type)
        # decided by rank 0 for all: the ranks' filesystems may differ (a node without the shared out_dir)
        self.resuming = distributed.rank0_decides(lambda: resumes(cfg))
        replaces = distributed.rank0_decides(lambda: claim_out_dir(cfg, self.resuming))
        source = adopt_architecture(cfg, explicit, self.resuming)  # before the data: block_size cuts it
        self.config = dict(vars(cfg))  # saved in checkpoints, given to wandb
        if self.device_type == 'cpu':
            keep_freed_memory()
        # dropout differs per rank; DDP copies rank 0's initial weights, FSDP needs them equal on every rank
        torch.manual_seed(cfg.seed + (0 if cfg.fsdp else self.rank))
        torch.set_float32_matmul_precision('high')  # TF32 matmuls on GPUs that have them
        self.ptdtype, self.autocast = DTYPES[self.dtype], autocast(self.device_type, self.dtype)
        self.meta, self.data = self.load_data()
        # what the rows are drawn with, the same on every rank (one global batch); its state goes in the checkpoint
        self.sampler = EpochSampler(self.data.num_rows('train'), cfg.seed) if cfg.sampling == 'epoch' \
            else torch.Generator().manual_seed(cfg.seed)
        self.iter_num, self.best_val_loss, self.elapsed = 0, float('inf'), 0.0
        self.model, checkpoint = build_model(cfg, explicit, self.meta, self.resuming, source, self.log)
        self.prepare_model(checkpoint)
        self.lr = get_lr(cfg, self.iter_num, self.elapsed)
        self.peak = peak_flops(self.device, self.ptdtype) if self.master else 1.0
        if self.master and replaces:  # overwrite=True, and the run is ready to start: the old run goes
            remove_checkpoints(cfg.out_dir)
        self.evaluation = Evaluation(cfg, self.data, self.meta, self.ranks, self.device, self.autocast)
        self.out.start(cfg, checkpoint, self.config)

    def prepare_model(self, checkpoint):
        """The model made ready to train: on the device, sped up, its optimizers, its checkpoint's state, compiled."""
        cfg = self.cfg
        self.raw_model = ACTIVATION_CHECKPOINTING[cfg.activation_checkpointing](  # before FSDP, which wraps each block
            speed_up(self.model.to(self.device), self.device_type, self.dtype))
        self.clip = torch.nn.utils.clip_grad_norm_
        if cfg.fsdp:  # sharded in place, each block compiled first when compile=True; the norm is over all shards
            import sharding
            sharding.shard_model(self.raw_model, self.device_type, self.dtype, compiles(cfg.compile, self.device, self.log),
                                 self.log)
            self.clip = sharding.clip_grad_norm
            torch.manual_seed(cfg.seed + self.rank)
        self.optimizers = self.raw_model.configure_optimizers(
            cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), self.device_type, cfg.optimizer,
            cfg.muon_momentum, muon_class(self.device_type))
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.dtype == 'float16')
        self.non_finite = NonFiniteSteps(self.device, self.scaler, cfg.max_skipped_steps)
        if checkpoint is not None:
            self.iter_num, self.best_val_loss, self.non_finite.skipped, self.elapsed = restore_run(
                checkpoint, self.raw_model, self.optimizers, self.scaler, self.sampler, self.rank, cfg.fsdp, self.log)
        if not cfg.fsdp and compiles(cfg.compile, self.device, self.log):
            self.model = torch.compile(self.model)
        if self.ranks.ddp and not cfg.fsdp:
            self.model = distributed.data_parallel(self.model, self.ranks, self.device_type)

    def load_data(self):
        """(meta or None, batches), a small known dataset prepared first; a method: bench.py swaps in random tokens."""
        prepare_if_missing(self.cfg.dataset, self.cfg.model_type, self.rank, self.ranks.local_rank, self.device)
        meta = load_meta(data_folder(self.cfg.dataset))
        return meta, load_dataset(self.cfg, self.device, meta, self.log)

    # -------------------------------------------------------------------------
    # The loop: evaluate every eval_interval steps, stop on a signal, at max_iters or max_time

    def run(self):
        cfg = self.cfg
        local_iter, step_time, timed_steps = 0, 0.0, 0
        start = time.time() - self.elapsed
        clock = self.elapsed  # rank 0's clock as every rank knows it: the learning rate follows it under max_time
        while True:
            if self.master:
                self.elapsed = time.time() - start
            # one process: checked at every step, at no cost. DDP: the ranks must agree, which takes a
            # collective and a host sync, so they check every log_interval steps (and at the first)
            if not self.ranks.ddp or local_iter == 0 or self.iter_num % cfg.log_interval == 0:
                stop, time_up, clock = self.should_stop()
            self.lr = get_lr(cfg, self.iter_num, clock)
            if stop:  # preempted or interrupted: save where we are, exit cleanly
                self.log(f"signal received: saving at iteration {self.iter_num} and exiting")
                self.save()
                break
            last = self.iter_num >= cfg.max_iters or time_up
            if self.iter_num % cfg.eval_interval == 0 or last or cfg.eval_only:
                self.evaluate_and_save()
            if last or cfg.eval_only:
                break
            t0 = time.time()
            loss_sum, tokens, grad_norm = self.train_step()  # tokens: what the global batch fed the model
            step_time += time.time() - t0  # evals left out
            self.iter_num, local_iter, timed_steps = self.iter_num + 1, local_iter + 1, timed_steps + 1
            if self.iter_num % cfg.log_interval == 0:  # timed_steps: fewer at a resumed run's first line
                self.log_progress(loss_sum, tokens, grad_norm, step_time / timed_steps, first=local_iter <= cfg.log_interval)
                step_time, timed_steps = 0.0, 0
        self.out.finish()

    def should_stop(self):
        """(a stop signal came, time is up, seconds elapsed), agreed on by all ranks: rank 0's clock decides."""
        stop = stop_signal is not None
        if self.ranks.ddp:
            stop, self.elapsed = distributed.agree_to_stop(stop, self.elapsed, self.ranks, self.device)
        return stop, self.cfg.max_time > 0 and self.elapsed >= self.cfg.max_time, self.elapsed

    def train_step(self):
        """One optimizer step over the global batch at learning rate self.lr: forward and backward per
        micro-batch, clip, step. Returns (the loss on this rank's share, weighted so that the sum over the
        ranks is the global batch's mean; the tokens the global batch fed the model; the gradient norm)."""
        for opt in self.optimizers:
            for group in opt.param_groups:
                group['lr'] = self.lr
        micro_batches, tokens = self.micro_batches()
        loss_sum = torch.zeros((), device=self.device)
        for last, batch, weight in micro_batches:
            with distributed.gradient_sync(self.model, self.ranks, last, self.cfg.fsdp):
                with self.autocast:
                    _, loss = self.model(*batch)
                self.backward(loss * weight * self.world)  # times world: DDP averages the ranks' gradients
            loss_sum += loss.detach().float() * weight
        for opt in self.optimizers:  # float16: the gradients unscaled, then clipped to norm grad_clip (0: not)
            self.scaler.unscale_(opt)
        grad_norm = self.clip(self.raw_model.parameters(), self.cfg.grad_clip or float('inf'))  # a tensor: read when logged
        self.non_finite.step(self.optimizers, grad_norm, loss_sum)
        self.scaler.update()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        return loss_sum, tokens, grad_norm

    def micro_batches(self):
        """(this rank's micro-batches as (is the last, batch, weight), the tokens the global batch feeds the model).
        The global batch is drawn whole, the same on every rank, and shared out; a micro-batch weighs its share of
        its target tokens (a masked-LM batch may hold none). A batch is read as the device runs the last one."""
        cfg = self.cfg
        epoch = getattr(self.sampler, 'epoch', None)
        rows = self.data.draw('train', cfg.batch_size * cfg.gradient_accumulation_steps, self.sampler)
        if epoch is not None and self.sampler.epoch != epoch:
            self.log(f"epoch {self.sampler.epoch} begins in iteration {self.iter_num + 1}")
        total = max(self.data.num_targets('train', rows), 1)
        mine = rows.view(cfg.gradient_accumulation_steps, cfg.batch_size)[self.rank * self.accum:(self.rank + 1) * self.accum]
        batches = ((step == self.accum - 1, self.data.batch('train', micro_rows),
                    self.data.num_targets('train', micro_rows) / total) for step, micro_rows in enumerate(mine))
        return batches, self.data.num_inputs('train', rows)

    def backward(self, loss):
        """float16: the loss scaled up so that small gradients do not underflow (unscaled before clipping)."""
        self.scaler.scale(loss).backward()

    def evaluate_and_save(self):
        """The evaluation logged and recorded; a checkpoint saved when it is the best yet (or always_save_checkpoint)."""
        train_loss, val_loss, metrics = self.evaluation.run(self.model, self.raw_model, self.master)
        self.out.evaluation(self.iter_num, self.elapsed, train_loss, val_loss, lr=self.lr, **metrics)
        if val_loss < self.best_val_loss or self.cfg.always_save_checkpoint:
            self.best_val_loss = min(self.best_val_loss, val_loss)
            if self.iter_num > 0 and not self.cfg.eval_only:  # evaluating a checkpoint must not rewrite it
                self.save()

    def save(self):
        """Everything that decides what comes next, so that a resumed run continues exactly."""
        self.non_finite.report(*self.non_finite.read().tolist(), self.iter_num, self.cfg.out_dir, self.log)
        checkpoint = {
            'model': changed_weights(self.raw_model), 'optimizer': [opt.state_dict() for opt in self.optimizers],
            'scaler': self.scaler.state_dict(), 'model_type': self.cfg.model_type,
            'model_args': dict(vars(self.raw_model.config)), 'lora': getattr(self.raw_model, 'lora', None),
            'iter_num': self.iter_num, 'best_val_loss': self.best_val_loss, 'config': self.config,
            'tokenizer': data_tokenizer(self.meta).state(), 'rng': distributed.gathered(rng_state(), self.ranks),
            **({'label_names': self.meta['label_names']} if self.meta and 'label_names' in self.meta else {}),
            'sampler' if isinstance(self.sampler, EpochSampler) else 'data_rng': self.sampler.get_state(),
            'skipped_steps': self.non_finite.skipped, 'elapsed': self.elapsed,
            'wandb_id': self.out.wandb.id if self.out.wandb is not None else None,
        }
        save_run(checkpoint, self.cfg.out_dir, self.raw_model, self.optimizers, self.cfg.keep_last, self.cfg.fsdp,
                 self.master)
        self.log(f"saving checkpoint to {self.cfg.out_dir}")

    def log_progress(self, loss_sum, tokens, grad_norm, dt, first):
        """The "iter N: loss" line. dt: seconds a step since the last; first: this process's first line. The loss, the
        gradient norm and the non-finite counts come to the host together: the one host sync since the last line."""
        values = torch.cat([distributed.all_sum(loss_sum).view(1), grad_norm.float().view(1), self.non_finite.read()])
        loss, grad_norm, new_skipped, in_a_row = values.tolist()
        self.non_finite.report(new_skipped, in_a_row, self.iter_num, self.cfg.out_dir, self.log)
        # float16: the scaler's scale shows whether it settled (it halves at each overflowing step)
        scale = {'loss_scale': self.scaler.get_scale()} if self.scaler.is_enabled() else {}
        self.out.progress(self.iter_num, self.elapsed, loss, tokens, dt, self.mfu(tokens, dt), first, lr=self.lr,
                          grad_norm=grad_norm, **scale)

    def mfu(self, tokens, dt):
        """Model FLOPs utilisation of one device: its 1/world share of `tokens` in dt seconds, against its peak."""
        task = {'mask_prob': self.cfg.mask_prob} if isinstance(self.data, MaskedSentences) else {}
        return self.raw_model.estimate_mfu(tokens / self.world, dt, self.peak, **task)


class Evaluation:
    """What a run measures at each evaluation, on both splits: the loss per target token over the same
    batches every time (data.eval_rows), shared out among the ranks; where they apply, an encoder's
    accuracy, a GPT's bits per byte (a loss that does not depend on the tokenizer) and a translator's BLEU."""

    def __init__(self, cfg, data, meta, ranks, device, autocast):
        self.cfg, self.data, self.meta, self.ranks, self.device, self.autocast = cfg, data, meta, ranks, device, autocast

    def run(self, model, raw_model, master):
        """(train loss, val loss, {the other figures}). raw_model: the model without DDP's wrapper."""
        cfg = self.cfg
        losses = self.losses(model, raw_model)
        train_loss, val_loss = losses.pop('train'), losses.pop('val')
        if cfg.model_type == 'gpt':
            losses['val_bpb'] = val_loss * self.data.tokens_per_byte(data_tokenizer(self.meta)) / math.log(2)
        if cfg.model_type == 'seq2seq' and master and cfg.bleu_sentences > 0:
            raw_model.eval()
            with self.autocast:  # greedy translations of the first validation sentences
                sources, references = self.data.texts('val', cfg.bleu_sentences)
                hypotheses = generate.translate(raw_model, sources, data_tokenizer(self.meta), device=self.device)
            raw_model.train()
            losses['bleu'] = generate.bleu_score(hypotheses, references).score
        return train_loss, val_loss, losses

    @torch.no_grad()
    def losses(self, model, raw_model):
        model.eval()
        out = {}
        rank, world = self.ranks.rank, self.ranks.world
        for split in ('train', 'val'):
            batches = self.data.eval_rows(split, self.cfg.eval_iters, self.cfg.batch_size, self.cfg.seed + 1, world)
            loss_sum, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
            for rows in batches[rank::world]:
                batch = self.data.batch(split, rows)
                with self.autocast:
                    logits, loss = model(*batch)
                loss_sum += loss.float() * self.data.num_targets(split, rows)
                if self.cfg.model_type == 'encoder':
                    correct += raw_model.count_correct(logits, batch[1])
            num_targets = self.data.num_targets(split, torch.cat(batches)) or float('nan')  # none: no loss to report
            out[split] = distributed.all_sum(loss_sum).item() / num_targets
            if self.cfg.model_type == 'encoder' and split == 'val':
                out['val_acc'] = distributed.all_sum(correct).item() / num_targets
        model.train()
        return out


def main(argv=None):
    global stop_signal
    config, explicit = configure(DEFAULTS, argv, sources=[__file__])
    stop_signal = None
    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        Trainer(Settings(**config), explicit).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == '__main__':
    # a script keeps request_stop until it exits: main() puts these handlers back when the run ends, and a
    # repeated SIGTERM (GNU timeout's second one) arriving after the save must not kill the exiting process
    for sig in STOP_SIGNALS:
        signal.signal(sig, request_stop)
    run_cli(lambda: main(sys.argv[1:]))
