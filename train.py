"""
Train a GPT or an encoder-decoder Transformer. One process:

    python train.py                                    # tiny Shakespeare, characters, best device
    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --max_iters=100

Several processes with DDP (the global batch is the same whatever their number):

    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
    # two nodes: on the first (IP 123.456.123.456)
    torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --master_addr=123.456.123.456 --master_port=1234 train.py
    # and on the second the same with --node_rank=1

Settings are the module-level variables below (`python train.py --help` lists them); see configurator.py
for how they are overridden. The loop gets them as one Settings object, `cfg`.
"""

import inspect
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import generate
from checkpoint import (GPT2_NAMES, MODEL_CLASSES, describe_checkpoint, has_checkpoint, is_pretrained, load_checkpoint,
                        load_sharded, model_from_checkpoint, pretrained_gpt, pretrained_tokenizer, rank0_decides,
                        remove_checkpoints, rng_state, save_checkpoint, save_sharded, set_rng_state, tokenizer_state,
                        writable_folder)
from configurator import configure, run_cli, settings_of
from errors import UserError
from data import EpochSampler, LabelledSentences, MaskedSentences, SentencePairs, TokenStream
from device import (DTYPES, autocast, compile_supported, keep_freed_memory, muon_class, peak_flops, resolve_device, speed_up,
                    training_dtype)
from model import Encoder, EncoderConfig, GPTConfig, Seq2SeqConfig, config_fields
from tokenizer import TiktokenTokenizer, load_meta, tokenizer_from_meta, tokenizer_from_state

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
n_kv_head = 0  # grouped-query attention; 0 = n_head
pos_emb = 'learned'  # 'learned' | 'sinusoidal' | 'rope'
rope_theta = 10000.0
norm = 'layernorm'  # 'layernorm' | 'rmsnorm'
qk_norm = False
mlp = 'gelu'  # 'gelu' | 'relu2' | 'swiglu'
tie_embeddings = True
fused_attention = True  # PyTorch's fused attention kernel; False runs model.scaled_dot_product_attention, the formula written out
share_embeddings = True  # seq2seq: one embedding for source and target
label_smoothing = 0.1  # seq2seq, and an encoder's classifier (not its masked-LM head)
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
fsdp = False  # shard parameters, gradients and AdamW's state over the ranks (FSDP2; checkpoints become sharded out_dir/ckpt.dcp): for models whose training state outgrows one device
seed = 1337
# -----------------------------------------------------------------------------
DEFAULTS = settings_of(globals())
# small enough to prepare on first use: dataset -> (prepare/ module, its prepare() arguments, datasets it needs first)
AUTO_PREPARED = {'shakespeare_char': ('shakespeare_char', {}, ()), 'shakespeare': ('shakespeare', {}, ()),
                 'multi30k': ('multi30k', {}, ()), 'movie_reviews': ('mlm_corpus', {}, ()),
                 # SST-2 in the movie reviews' vocabulary, so that a model pretrained there reads it
                 'sst2': ('sst2', {}, ('movie_reviews',)), 'sst2_phrases': ('sst2', {'phrases': True}, ('movie_reviews',))}
ARCH_SETTINGS = config_fields(GPTConfig) | config_fields(Seq2SeqConfig) | config_fields(EncoderConfig)
TRAINING_ONLY = {'dropout', 'label_smoothing', 'fused_attention'}  # may change when a run is resumed


def training_only_settings(cfg):
    """This run's TRAINING_ONLY settings that its model kind has: they replace a checkpoint's on resume or
    fine-tuning, even where an older checkpoint did not record them."""
    fields = config_fields(MODEL_CLASSES[cfg.model_type][1])
    return {k: getattr(cfg, k) for k in TRAINING_ONLY if k in fields}


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
    """A run's settings as attributes, `cfg.batch_size`: DEFAULTS with the config files and flags
    applied, `Settings(**config)`. Everything below takes it as an argument; no function reads the
    module-level defaults."""

    def as_dict(self):
        return dict(vars(self))


def from_run(cfg):
    """Whether init_from names another run's out_dir (whose weights start this run), not a mode or GPT-2."""
    return cfg.init_from not in ('scratch', 'resume') and not is_pretrained(cfg.init_from)


def resumes(cfg):
    """Whether the run continues from out_dir's checkpoint: init_from='resume', or a worker restarted by
    torchrun --max-restarts that finds one."""
    return cfg.init_from == 'resume' or (cfg.init_from == 'scratch' and has_checkpoint(cfg.out_dir)
                                         and int(os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)) > 0)


def claim_out_dir(cfg, resuming):
    """Check, before anything else, that out_dir takes files, and that this run replaces no other run's
    checkpoint unless told to (overwrite=True). Returns whether there is one to replace."""
    writable_folder(cfg.out_dir, '--out_dir')
    if resuming or cfg.eval_only or not has_checkpoint(cfg.out_dir):
        return False
    if not cfg.overwrite:
        raise UserError(f"out_dir {cfg.out_dir} already holds {describe_checkpoint(cfg.out_dir)}: continue it with "
                        f"--init_from=resume, write this run to another --out_dir, or replace it with --overwrite=True")
    return True


def validate_settings(cfg):
    for key in ('eval_interval', 'log_interval', 'eval_iters', 'gradient_accumulation_steps', 'batch_size',
                'block_size', 'n_layer', 'n_head', 'n_embd'):
        if getattr(cfg, key) <= 0:
            raise UserError(f"{key} must be positive, got {getattr(cfg, key)}")
    for key in ('max_iters', 'keep_last', 'warmup_iters', 'max_time', 'grad_clip', 'weight_decay', 'vocab_size'):
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
               'sampling': ('random', 'epoch')}
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
    if not 0.0 < cfg.mask_prob < 1.0:
        raise UserError(f"mask_prob must be between 0 and 1, got {cfg.mask_prob}")
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
# Data and model


def data_folder(cfg):
    return cfg.dataset if os.path.isabs(cfg.dataset) or os.sep in cfg.dataset else os.path.join('data', cfg.dataset)


def prepare_if_missing(cfg, data_dir, rank=0, local_rank=0, device='cpu'):
    """The small datasets are prepared on first use: by rank 0 while the others wait, then, on nodes that
    do not share its data/ folder, by each node's first rank. Every rank takes every collective, whatever
    its own filesystem shows: the ranks decide together (any_rank)."""
    if cfg.dataset not in AUTO_PREPARED:
        return
    marker = os.path.join(data_dir, 'train.bin' if cfg.model_type == 'gpt' else 'meta.pkl')
    for preparer in (rank == 0, local_rank == 0):
        if not any_rank(not os.path.exists(marker), device):
            return
        if preparer and not os.path.exists(marker):
            print(f"{marker} not found: preparing {cfg.dataset} first")
            prepare_dataset(cfg.dataset, data_dir)
        if dist.is_initialized():
            dist.barrier()
    if any_rank(not os.path.exists(marker), device):
        raise UserError(f"{marker} is still missing on some node after preparing it: prepare {cfg.dataset} "
                        f"on every node, or give every node the same data/ folder")


def prepare_dataset(dataset, data_dir):
    import importlib
    module, arguments, needs = AUTO_PREPARED[dataset]
    for name in needs:  # prepared first: the dataset takes its vocabulary from them
        folder = os.path.join('data', name)
        if not os.path.exists(os.path.join(folder, 'meta.pkl')):
            print(f"{folder}/meta.pkl not found: preparing {name} first")
            importlib.import_module(f'prepare.{AUTO_PREPARED[name][0]}').prepare(out_dir=folder)
    importlib.import_module(f'prepare.{module}').prepare(out_dir=data_dir, **arguments)


def any_rank(flag, device):
    """Whether `flag` holds on any rank (every rank must call it); `flag` itself without a process group."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def load_dataset(cfg, data_dir, device, meta):
    if cfg.model_type == 'seq2seq':
        return SentencePairs(data_dir, cfg.block_size, device)
    if cfg.model_type == 'encoder':  # labelled sentences (prepare/sst2.py) or unlabelled ones (prepare/mlm_corpus.py)
        if meta is not None and 'n_classes' in meta:
            return LabelledSentences(data_dir, cfg.block_size, device, cfg.pack_sentences)
        return MaskedSentences(data_dir, cfg.block_size, device, cfg.mask_prob, cfg.pack_sentences)
    return TokenStream(data_dir, cfg.block_size, device, align_documents=cfg.align_documents)


def architecture(cfg, meta):
    """The model settings of a new model: the run's settings, plus what the data decides."""
    config_class = MODEL_CLASSES[cfg.model_type][1]
    settings = vars(cfg)
    args = {key: settings[key] for key in config_fields(config_class) if key in settings}
    args['vocab_size'] = cfg.vocab_size or (meta or {}).get('vocab_size') or 50304
    if cfg.model_type == 'seq2seq':
        args.update(src_block_size=cfg.block_size, tgt_block_size=cfg.block_size,
                    pad_id=meta['pad_id'], bos_id=meta['bos_id'], eos_id=meta['eos_id'])
    if cfg.model_type == 'encoder':  # a classifier when the data has labels, else a masked-language model
        args.update(pad_id=meta['pad_id'], n_classes=meta.get('n_classes', 0))
    return args


def saved_name(cfg, key):
    """The name of setting `key` in a checkpoint's model_args."""
    return 'tgt_block_size' if cfg.model_type == 'seq2seq' and key == 'block_size' else key


def check_resumable(cfg, checkpoint, explicit, meta, source=None):
    """A resumed run keeps the checkpoint's architecture: settings given that contradict it are errors.
    source: the out_dir of init_from, whose model starts this run (same rule), else this run's out_dir."""
    folder, what = (source, f"a run initialised from {source} takes its architecture") if source else \
        (f"out_dir {cfg.out_dir}", "a resumed run keeps its architecture")
    kind = checkpoint.get('model_type', 'gpt')
    if kind != cfg.model_type:
        raise UserError(f"{folder} holds a {kind} checkpoint but model_type is {cfg.model_type}")
    saved = checkpoint['model_args']
    wanted = architecture(cfg, meta) if meta is not None or cfg.model_type == 'gpt' else {}
    for key in sorted((explicit & ARCH_SETTINGS) - TRAINING_ONLY):
        saved_key = saved_name(cfg, key)
        if saved_key in saved and wanted.get(saved_key, saved[saved_key]) != saved[saved_key]:
            raise UserError(f"--{key}={getattr(cfg, key)} differs from the checkpoint's {saved[saved_key]}: "
                            f"{what} (drop the flag, or use another out_dir)")
    if source:  # the same tokens: the tokenizer decides what each embedding row means
        check_same_tokenizer(cfg, meta, tokenizer_state(checkpoint), source)
    elif meta and meta.get('vocab_size') and meta['vocab_size'] > saved['vocab_size']:
        raise UserError(f"dataset {cfg.dataset} has a vocabulary of {meta['vocab_size']} but the checkpoint's model "
                        f"has {saved['vocab_size']}: resume with the dataset it was trained on")


def data_tokenizer(meta):
    """The tokenizer of a dataset: its meta.pkl's, or GPT-2's BPE when it has none (nanoGPT's openwebtext)."""
    return tokenizer_from_meta(meta) if meta else TiktokenTokenizer('gpt2')


def check_same_tokenizer(cfg, meta, weights_tokenizer, source):
    """Weights from `source` must read the dataset's tokens: the tokenizer decides what each embedding row means."""
    if weights_tokenizer != data_tokenizer(meta).state():
        raise UserError(f"{source}'s model was trained with another tokenizer than dataset {cfg.dataset}'s: "
                        f"prepare the data with its vocabulary (for an encoder: prepare/sst2.py --tokenizer_from "
                        f"<its pretraining data>)")


def check_vocab_size(cfg, meta):
    """--vocab_size may pad the dataset's vocabulary (for faster matmuls), never cut it."""
    needed = (meta or {}).get('vocab_size', 50257)  # no meta.pkl: GPT-2's BPE
    if cfg.vocab_size and cfg.vocab_size < needed:
        raise UserError(f"--vocab_size={cfg.vocab_size} is smaller than dataset {cfg.dataset}'s vocabulary of "
                        f"{needed} tokens: drop the flag (the dataset's size is the default) or give at least {needed}")


def keep_fused(optimizer):
    """After load_state_dict: the fused kernels as this device decided them (configure_optimizers),
    not as the saved run's device did (load_state_dict restores the saved `fused` flag: a checkpoint
    from MPS would resume unfused on CUDA, and fail the fused step that float16's scaler expects)."""
    fused = optimizer.defaults.get('fused')
    if fused is None:  # an optimizer without fused kernels (Muon)
        return
    for group in optimizer.param_groups:
        group['fused'] = fused
        for p in group['params'] if fused else ():  # the fused step keeps the step counts on the parameters' device
            step = optimizer.state.get(p, {}).get('step')
            if torch.is_tensor(step):
                optimizer.state[p]['step'] = step.to(p.device, torch.float32)


def compiles(wanted, device, log):
    """Whether to torch.compile the model: as asked, except on GPUs older than Volta (compute
    capability 7.0), where Triton has no kernels: there compile is turned off with a line saying why."""
    if wanted and not compile_supported(device):
        major, minor = torch.cuda.get_device_capability(device)
        log(f"compile=True turned off: torch.compile needs a GPU of compute capability 7.0 or newer, "
            f"{device} has {major}.{minor}")
        return False
    return wanted


# -----------------------------------------------------------------------------
# The loop


class Trainer:
    """The state of a run and the steps of its loop: `Trainer(cfg, explicit).run()`, where `explicit`
    is the set of settings the user gave (a resumed run checks them against its checkpoint).

    Reading order: __init__ (and the set-up methods it calls), run (the loop), train_step (one
    optimizer step) and its helpers, then evaluation, checkpoints and logging."""

    def __init__(self, cfg, explicit=frozenset()):
        validate_settings(cfg)
        self.cfg = cfg
        self.setup_distributed()
        # decided by rank 0 for all: the ranks' filesystems may differ (a node without the shared out_dir)
        self.resuming = rank0_decides(lambda: resumes(cfg))
        replaces = rank0_decides(lambda: claim_out_dir(cfg, self.resuming))
        # a resumed run, or one initialised from another run's out_dir: the checkpoint's architecture (before
        # the data is read: block_size cuts it); self.source is the other run's checkpoint
        self.source = self.adopt_architecture(explicit)
        self.config = cfg.as_dict()  # saved in checkpoints, given to wandb
        if self.device_type == 'cpu':
            keep_freed_memory()
        # dropout differs per rank; DDP copies rank 0's initial weights, FSDP needs them equal on every rank
        torch.manual_seed(cfg.seed + (0 if cfg.fsdp else self.rank))
        torch.set_float32_matmul_precision('high')  # TF32 matmuls on GPUs that have them
        self.ptdtype = DTYPES[self.dtype]
        self.autocast = autocast(self.device_type, self.dtype)
        self.meta, self.data = self.load_data()
        self.data_rng = torch.Generator().manual_seed(cfg.seed)  # the same on every rank: one global batch
        if cfg.align_documents:
            self.log(f"align_documents: rows begin at document starts and hold {self.data.kept:.1%} of the train tokens")
        if cfg.sampling == 'epoch':  # then it draws the rows in epochs instead (data.EpochSampler)
            self.data_rng = EpochSampler(self.data.num_rows('train'), cfg.seed)
            self.log(f"epoch sampling: {self.data_rng.n:,} rows an epoch, "
                     f"{self.data_rng.n / (cfg.batch_size * cfg.gradient_accumulation_steps):,.1f} iterations")
        self.iter_num, self.best_val_loss, self.skipped, self.elapsed = 0, float('inf'), 0, 0.0
        self.val_tokens_per_byte = None  # for bits per byte, measured at the first evaluation
        self.running_mfu = -1.0
        checkpoint = self.build_model(explicit)
        self.raw_model = speed_up(self.model.to(self.device), self.device_type, self.dtype)
        if cfg.fsdp:  # sharded in place, each block compiled first when compile=True
            import sharding
            sharding.shard_model(self.raw_model, self.device_type, self.dtype, compiles(cfg.compile, self.device, self.log))
            torch.manual_seed(cfg.seed + self.rank)
            self.log(f"fsdp over {self.world} ranks: rank 0 holds "
                     f"{sharding.local_bytes(self.raw_model, [])['parameters']:,} bytes of parameters")
        self.optimizers = self.raw_model.configure_optimizers(
            cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), self.device_type, cfg.optimizer,
            cfg.muon_momentum, muon_class(self.device_type))
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.dtype == 'float16')
        # skipped steps counted on the device (no host sync per step), read when logging or saving:
        # [skipped since last read, bad steps in a row]
        self.skip_counts = torch.zeros(2, device=self.device)
        if checkpoint is not None:
            self.restore(checkpoint)
        if not cfg.fsdp and compiles(cfg.compile, self.device, self.log):
            self.model = torch.compile(self.model)
        if self.ddp and not cfg.fsdp:
            # the buffers (position tables) are constants: not broadcast in every forward, which would also
            # hang an evaluation whose ranks run different numbers of forwards
            no_sync = {'forward_sync_buffers' if 'forward_sync_buffers' in inspect.signature(DDP).parameters
                       else 'broadcast_buffers': False}  # torch 2.13 renamed it
            self.model = DDP(self.model, device_ids=[self.local_rank] if self.device_type == 'cuda' else None,
                             **no_sync)
        self.lr = get_lr(cfg, self.iter_num, self.elapsed)
        self.peak = peak_flops(self.device, self.ptdtype) if self.master else 1.0
        self.metrics_path = os.path.join(cfg.out_dir, 'metrics.jsonl')
        if self.master and replaces:  # overwrite=True, and the run is ready to start: the old run goes
            remove_checkpoints(cfg.out_dir)
        if checkpoint is None and self.master and not cfg.eval_only and os.path.exists(self.metrics_path):
            os.remove(self.metrics_path)  # a new run: its curves must not mix with an earlier run's in this out_dir
        self.wandb = self.start_wandb(checkpoint) if cfg.wandb_log and self.master else None

    def setup_distributed(self):
        cfg = self.cfg
        self.ddp = int(os.environ.get('RANK', -1)) != -1
        self.device = resolve_device(cfg.device)
        if self.ddp:
            self.rank, self.local_rank = int(os.environ['RANK']), int(os.environ['LOCAL_RANK'])
            self.world = int(os.environ['WORLD_SIZE'])
            if self.device.startswith('cuda'):
                self.device = f'cuda:{self.local_rank}'
                torch.cuda.set_device(self.device)
            kind = cfg.backend if cfg.backend != 'auto' else 'nccl' if self.device.startswith('cuda') else 'gloo'
            dist.init_process_group(backend=kind)
        else:
            self.rank, self.local_rank, self.world = 0, 0, 1
            if cfg.fsdp:  # FSDP needs a process group, even of one
                kind = cfg.backend if cfg.backend != 'auto' else 'nccl' if self.device.startswith('cuda') else 'gloo'
                dist.init_process_group(backend=kind, store=dist.HashStore(), rank=0, world_size=1)
        if cfg.fsdp and cfg.eval_iters % self.world:  # a sharded forward needs every rank: equal shares
            raise UserError(f"fsdp=True needs eval_iters ({cfg.eval_iters}) to be a multiple of the number of "
                            f"processes ({self.world})")
        self.master = self.rank == 0
        if cfg.gradient_accumulation_steps % self.world:
            raise UserError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be a multiple of "
                            f"the number of processes ({self.world})")
        if cfg.eval_iters < self.world:  # a rank without an eval batch would leave the others' collectives waiting
            raise UserError(f"eval_iters ({cfg.eval_iters}) must be at least the number of processes ({self.world}): "
                            f"each evaluates its share of the batches")
        self.accum = cfg.gradient_accumulation_steps // self.world  # micro-steps of this rank
        self.device_type = torch.device(self.device).type
        self.dtype = training_dtype(cfg.dtype, self.device_type)

    def load_data(self):
        """(meta or None, batches) of the dataset, prepared first if it is a small known one.
        A method so that bench.py can swap in random tokens."""
        data_dir = data_folder(self.cfg)
        prepare_if_missing(self.cfg, data_dir, self.rank, self.local_rank, self.device)
        meta = load_meta(data_dir)
        return meta, load_dataset(self.cfg, data_dir, self.device, meta)

    def adopt_architecture(self, explicit):
        """A resumed run, or init_from=<a run's out_dir>: give the architecture settings the user did not set
        the values of the checkpoint's model (block_size as well: the data is cut to it); build_model checks
        those set against it. Returns init_from's checkpoint (ckpt.pt, or an FSDP run's ckpt.dcp, read
        whole), or None."""
        cfg = self.cfg
        if from_run(cfg):
            checkpoint = source = load_checkpoint(cfg.init_from)
        elif self.resuming:
            checkpoint, source = load_checkpoint(cfg.out_dir, weights=False), None
        else:
            return None
        saved = checkpoint['model_args']
        for key in sorted(ARCH_SETTINGS - TRAINING_ONLY - set(explicit)):
            if hasattr(cfg, key) and saved_name(cfg, key) in saved:
                setattr(cfg, key, saved[saved_name(cfg, key)])
        return source

    def build_model(self, explicit):
        """A new model, GPT-2's weights, or the checkpoint's model. Returns the checkpoint, if any."""
        cfg = self.cfg
        if self.resuming:
            # torchrun --max-restarts: a restarted worker resumes. FSDP loads the weights later, sharded
            checkpoint = load_checkpoint(cfg.out_dir, weights=not cfg.fsdp)
            check_resumable(cfg, checkpoint, explicit, self.meta)
            args = checkpoint['model_args']
            args.update(training_only_settings(cfg))
            self.model = model_from_checkpoint(checkpoint, cfg.model_type)
            self.model_args = checkpoint['model_args']
            name = 'ckpt.dcp' if 'dcp' in checkpoint else 'ckpt.pt'
            self.log(f"resuming from {cfg.out_dir}/{name} at iteration {checkpoint['iter_num']}")
            return checkpoint
        if self.source is not None:
            self.model = self.model_from_run(self.source, explicit)
            self.source = None  # its weights are in the model now
        elif is_pretrained(cfg.init_from):
            check_same_tokenizer(cfg, self.meta, pretrained_tokenizer(cfg.init_from).state(), cfg.init_from)
            self.model = pretrained_gpt(cfg.init_from, dict(dropout=cfg.dropout, block_size=cfg.block_size))
        else:
            check_vocab_size(cfg, self.meta)
            model_class, config_class = MODEL_CLASSES[cfg.model_type]
            try:
                config = config_class(**architecture(cfg, self.meta))
            except ValueError as e:
                raise UserError(f"invalid model settings: {e}") from None
            self.model = model_class(config)
        self.model_args = dict(vars(self.model.config))
        what = cfg.model_type
        if cfg.model_type == 'encoder':
            what = f"encoder ({f'{self.model.config.n_classes} classes' if self.model.config.n_classes else 'masked-LM'})"
        self.log(f"{what} model with {self.model.get_num_params() / 1e6:.2f}M parameters")
        return None

    def model_from_run(self, source, explicit):
        """init_from=<a run's out_dir>: a model with the weights of that run's, to fine-tune. A GPT (or an
        encoder-decoder) whole; an encoder its body, with the head this data needs starting fresh (a
        masked-language model's body under a classifier). Only the weights: the optimizer, the step count,
        best_val_loss, the metrics and the random state start fresh, as for a new run."""
        cfg = self.cfg
        check_resumable(cfg, source, explicit, self.meta, source=cfg.init_from)
        args = dict(source['model_args'])
        args.update(training_only_settings(cfg))
        if cfg.model_type != 'encoder':
            model = model_from_checkpoint({**source, 'model_args': args}, cfg.model_type)
        else:
            args.update(n_classes=self.meta.get('n_classes', 0), pad_id=self.meta['pad_id'])
            try:
                model = Encoder(EncoderConfig(**args))
            except ValueError as e:
                raise UserError(f"invalid model settings: {e}") from None
            try:
                model.load_body({k.removeprefix('_orig_mod.'): v for k, v in source['model'].items()})
            except ValueError as e:
                raise UserError(f"{cfg.init_from}: {e}") from None
        name = 'ckpt.dcp' if 'dcp' in source else 'ckpt.pt'
        head = ' (its body: the head starts fresh)' if cfg.model_type == 'encoder' else ''
        self.log(f"initialised from {cfg.init_from}/{name} (iteration {source['iter_num']}){head}")
        return model

    def restore(self, checkpoint):
        self.iter_num, self.best_val_loss = checkpoint['iter_num'], checkpoint.get('best_val_loss', float('inf'))
        self.skipped, self.elapsed = checkpoint.get('skipped_steps', 0), checkpoint.get('elapsed', 0.0)
        if 'dcp' in checkpoint and self.cfg.fsdp:  # weights and optimizer state, each rank its shards
            load_sharded(checkpoint['dcp'], self.raw_model, self.optimizers)
        states = checkpoint.get('optimizer', [])
        if self.cfg.fsdp:  # from a ckpt.pt the weights came whole (build_model); its optimizer state is not sharded
            states = [] if 'dcp' in checkpoint else None
        states = states if isinstance(states, list) else [states]  # nanoGPT saved one dict
        if states == []:
            pass
        elif states is not None and len(states) == len(self.optimizers):
            for opt, state in zip(self.optimizers, states):
                opt.load_state_dict(state)
                keep_fused(opt)
        else:
            self.log("the checkpoint's optimizer differs from this run's: its state starts fresh")
        if checkpoint.get('scaler'):  # a run without a scaler (not float16) saved {}: then a float16 one starts afresh
            self.scaler.load_state_dict(checkpoint['scaler'])
        sampler = 'sampler' if isinstance(self.data_rng, EpochSampler) else 'data_rng'
        if sampler in checkpoint:
            try:
                self.data_rng.set_state(checkpoint[sampler])
            except ValueError as e:  # the data changed: its epochs start again
                self.log(f"{e}: epoch sampling starts a new epoch 0")
        elif 'data_rng' in checkpoint or 'sampler' in checkpoint:
            self.log(f"the checkpoint's sampling differs from sampling={self.cfg.sampling!r}: it starts afresh")
        if checkpoint.get('rng'):
            set_rng_state(checkpoint['rng'][self.rank % len(checkpoint['rng'])])

    def start_wandb(self, checkpoint):
        try:
            import wandb
        except ImportError:
            raise UserError("wandb_log=True needs wandb: pip install wandb") from None
        run_id = (checkpoint or {}).get('wandb_id')
        return wandb.init(project=self.cfg.wandb_project, name=self.cfg.wandb_run_name, config=self.config,
                          id=run_id, resume='allow')

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
            if not self.ddp or local_iter == 0 or self.iter_num % cfg.log_interval == 0:
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
            self.iter_num += 1
            local_iter += 1
            timed_steps += 1  # fewer than log_interval before the first line of a resumed run
            if self.iter_num % cfg.log_interval == 0:
                self.log_progress(loss_sum, tokens, grad_norm, step_time / timed_steps,
                                  first=local_iter <= cfg.log_interval)
                step_time, timed_steps = 0.0, 0
        if self.wandb is not None:
            self.wandb.finish()

    def should_stop(self):
        """(stop signal, time is up, seconds elapsed), agreed on by all ranks: rank 0's clock decides.
        Under DDP: one collective and one host sync."""
        stop = stop_signal is not None
        if self.ddp:
            flags = torch.tensor([float(stop), self.elapsed if self.master else 0.0], dtype=torch.float64,
                                 device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            stop, self.elapsed = flags.tolist()
        return bool(stop), self.cfg.max_time > 0 and self.elapsed >= self.cfg.max_time, self.elapsed

    # -------------------------------------------------------------------------
    # One optimizer step

    def train_step(self):
        """One optimizer step over the global batch at learning rate self.lr. Returns (the mean loss on
        this rank's share, weighted so that the sum over ranks is the mean loss of the whole global
        batch; the number of tokens the global batch feeds the model; the gradient norm before clipping)."""
        self.set_learning_rate(self.lr)
        micro_batches, tokens = self.micro_batches()
        loss_sum = torch.zeros((), device=self.device)
        for last, batch, weight in micro_batches:
            with self.gradient_sync(last):
                with self.autocast:
                    _, loss = self.model(*batch)
                self.backward(loss * weight * self.world)  # times world: DDP averages the ranks' gradients
            loss_sum += loss.detach().float() * weight
        grad_norm = self.clip_gradients()
        self.optimizer_step(skip=self.count_bad_step(grad_norm, loss_sum))
        self.scaler.update()
        self.zero_grad()
        return loss_sum, tokens, grad_norm

    def set_learning_rate(self, lr):
        for opt in self.optimizers:
            for group in opt.param_groups:
                group['lr'] = lr

    def micro_batches(self):
        """(this rank's micro-batches as (is the last, batch, weight), the tokens the global batch feeds the model).
        The global batch is drawn whole, the same on every rank; each rank takes its share. Each
        micro-batch counts by its share of the global batch's target tokens. A batch is read when
        the loop asks for it, while the device still works on the previous one."""
        cfg = self.cfg
        epoch = getattr(self.data_rng, 'epoch', None)
        rows = self.data.sample('train', cfg.batch_size * cfg.gradient_accumulation_steps, self.data_rng)
        if epoch is not None and self.data_rng.epoch != epoch:
            self.log(f"epoch {self.data_rng.epoch} begins in iteration {self.iter_num + 1}")
        total_targets = self.data.num_targets('train', rows)
        my_rows = rows.view(cfg.gradient_accumulation_steps, cfg.batch_size)[
            self.rank * self.accum:(self.rank + 1) * self.accum]

        def batches():
            for micro_step, micro_rows in enumerate(my_rows):
                # a masked-LM batch may happen to hold no masked token: it then weighs nothing
                weight = self.data.num_targets('train', micro_rows) / max(total_targets, 1)
                yield micro_step == self.accum - 1, self.data.batch('train', micro_rows), weight
        return batches(), self.data.num_inputs('train', rows)

    def gradient_sync(self, last):
        """DDP: all-reduce the gradients only in the last micro-step's backward; the others accumulate."""
        # FSDP reduce-scatters in every micro-step's backward: the gradients stay sharded (1/N of the memory)
        return self.model.no_sync() if self.ddp and not last and not self.cfg.fsdp else nullcontext()

    def backward(self, loss):
        """float16: the loss scaled up so that small gradients do not underflow (unscaled before clipping)."""
        self.scaler.scale(loss).backward()

    def clip_gradients(self):
        """Clip the gradients to norm grad_clip (0: no clipping). Returns their norm before clipping."""
        for opt in self.optimizers:
            self.scaler.unscale_(opt)
        # a tensor: read on the host only when logged (a read waits for the device to finish the step)
        clip = torch.nn.utils.clip_grad_norm_
        if self.cfg.fsdp:  # the norm over every rank's shards
            from sharding import clip_grad_norm as clip
        return clip(self.raw_model.parameters(), self.cfg.grad_clip or float('inf'))

    def count_bad_step(self, grad_norm, loss_sum):
        """A NaN or inf in the loss or gradients: that step is skipped rather than ruin the weights,
        and max_skipped_steps of them in a row stop the run. Returns the skip flag, a 0-d tensor on the
        device (1.0: skip); the counts stay on the device too, in self.skip_counts, and are read with
        the log line (count_skipped), so that no step waits for the device to tell whether it was finite.
        The trade-off: a diverged run stops at the next log line, not at the step that reached
        max_skipped_steps. With float16's scaler, overflowing gradients are how it finds its scale (its
        first steps from 2^16, then one every couple of thousand steps): it skips those steps itself,
        and only a non-finite loss counts as a bad step."""
        skip = (~torch.isfinite(grad_norm)).float()
        bad = (~torch.isfinite(loss_sum)).float() if self.scaler.is_enabled() else skip
        skipped, in_a_row = self.skip_counts.unbind()
        self.skip_counts = torch.stack([skipped + bad, (in_a_row + bad) * bad])
        return skip

    def optimizer_step(self, skip):
        """Step each optimizer unless `skip` (a 0-d device tensor, 1.0: a non-finite step). Fused AdamW
        skips on the device, given the flag as `found_inf` (the attribute float16's GradScaler sets for
        it); Muon and unfused AdamW (MPS) need the flag on the host: for them, one sync per step. With
        float16's scaler enabled, the scaler skips on its own check of the gradients, which also catches NaNs."""
        skip_on_host = None
        for opt in self.optimizers:
            if self.scaler.is_enabled():
                self.scaler.step(opt)
            elif getattr(opt, '_step_supports_amp_scaling', False):  # fused: reads found_inf and grad_scale
                opt.found_inf, opt.grad_scale = skip, None
                try:
                    opt.step()
                finally:
                    del opt.found_inf, opt.grad_scale
            else:
                if skip_on_host is None:
                    skip_on_host = bool(skip.item())
                if not skip_on_host:
                    opt.step()

    def read_skip_counts(self):
        """The device's skip counts (skipped since the last read, bad steps in a row) as a tensor, to
        be read by the caller; under DDP the most over the ranks (with the scaler, each judges its own loss)."""
        counts = self.skip_counts.clone()
        if self.ddp:
            dist.all_reduce(counts, op=dist.ReduceOp.MAX)
        self.skip_counts[0] = 0
        return counts

    def count_skipped(self, new, in_a_row):
        """The host's side of count_bad_step, with the counts as read: a line, and the stop of a diverged run."""
        new, in_a_row = int(new), int(in_a_row)
        if new:
            self.skipped += new
            what = 'step skipped' if new == 1 else f'{new} steps skipped'
            self.log(f"iter {self.iter_num}: non-finite gradient norm, {what} ({self.skipped} so far)")
        if in_a_row >= self.cfg.max_skipped_steps:
            raise UserError(f"training diverged: {in_a_row} non-finite steps in a row at iteration "
                            f"{self.iter_num}; the last checkpoint in {self.cfg.out_dir} is kept. Lower the "
                            f"learning_rate or resume from it")

    def zero_grad(self):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    # -------------------------------------------------------------------------
    # Evaluation

    def all_sum(self, tensor):
        if self.ddp:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    @torch.no_grad()
    def estimate_loss(self):
        """Loss per target token over eval_iters batches per split: the same batches at every eval,
        shared out among the ranks (batches of sentence pairs count by their number of target tokens)."""
        cfg = self.cfg
        self.model.eval()
        out = {}
        for split in ('train', 'val'):
            batches = self.eval_batches(split)
            loss_sum, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
            for batch_rows in batches[self.rank::self.world]:
                batch = self.data.batch(split, batch_rows)
                with self.autocast:
                    logits, loss = self.model(*batch)
                loss_sum += loss.float() * self.data.num_targets(split, batch_rows)
                if cfg.model_type == 'encoder':
                    correct += self.raw_model.count_correct(logits, batch[1])
            num_targets = self.data.num_targets(split, torch.cat(batches)) or float('nan')  # none: no loss to report
            out[split] = self.all_sum(loss_sum).item() / num_targets
            if cfg.model_type == 'encoder' and split == 'val':
                out['val_acc'] = self.all_sum(correct).item() / num_targets
        self.model.train()
        return out

    def eval_batches(self, split):
        """The rows of one split's evaluation, as a list of batches: eval_iters batches drawn by a generator
        seeded the same at every eval, except a classifier's validation split, which is read whole (its
        accuracy is over every sentence), sorted by length, in a multiple of the number of ranks of batches."""
        cfg = self.cfg
        if split == 'val' and isinstance(self.data, LabelledSentences):
            index = torch.arange(len(self.data.splits[split]))
            rows = self.data.by_length(split, index, index.numpy())
            count = self.world * math.ceil(math.ceil(len(rows) / cfg.batch_size) / self.world)
            return list(torch.tensor_split(rows, min(count, len(rows))))
        rows = self.data.sample(split, cfg.eval_iters * cfg.batch_size, torch.Generator().manual_seed(cfg.seed + 1))
        return list(rows.view(cfg.eval_iters, cfg.batch_size))

    @torch.no_grad()
    def bleu(self):
        """BLEU (sacreBLEU, detokenized) of greedy translations of the first validation sentences."""
        try:
            import sacrebleu
        except ImportError:
            raise UserError("BLEU needs sacrebleu: pip install sacrebleu") from None
        data_dir = data_folder(self.cfg)
        with open(os.path.join(data_dir, 'val.de.txt')) as f:
            sources = f.read().splitlines()[:self.cfg.bleu_sentences]
        with open(os.path.join(data_dir, 'val.en.txt')) as f:
            references = f.read().splitlines()[:self.cfg.bleu_sentences]
        self.raw_model.eval()
        with self.autocast:
            hypotheses = generate.translate(self.raw_model, sources, tokenizer_from_meta(self.meta), device=self.device)
        self.raw_model.train()
        return sacrebleu.corpus_bleu(hypotheses, [references]).score

    def val_bits_per_byte(self, val_loss):
        """The validation loss in bits per UTF-8 byte of text: nats per token x tokens per byte / ln 2.
        Unlike a loss per token it does not depend on the tokenizer, so a character model and a
        BPE model of the same text compare on one scale. GPT runs only."""
        if self.cfg.model_type != 'gpt':
            return None
        if self.val_tokens_per_byte is None:  # measured once, on (at most 10M tokens of) the validation split
            ids = self.data.splits['val'][:10_000_000]
            text = tokenizer_from_state(self.tokenizer_state()).decode(ids.tolist())
            self.val_tokens_per_byte = len(ids) / max(len(text.encode('utf-8')), 1)
        return val_loss * self.val_tokens_per_byte / math.log(2)

    def evaluate_and_save(self):
        cfg = self.cfg
        losses = self.estimate_loss()
        bpb = self.val_bits_per_byte(losses['val'])
        bleu = self.bleu() if cfg.model_type == 'seq2seq' and self.master and cfg.bleu_sentences > 0 else None
        line = f"step {self.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
        line += f", val bpb {bpb:.4f}" if bpb is not None else ""
        # an encoder's accuracy: of the classifier over every validation sentence, of a masked-LM over the masked tokens
        line += f", val acc {losses['val_acc']:.2%}" if 'val_acc' in losses else ""
        self.log(line + (f", val bleu {bleu:.2f}" if bleu is not None else ""))
        self.record(train_loss=losses['train'], val_loss=losses['val'], lr=self.lr,
                    **({'val_bpb': bpb} if bpb is not None else {}), **({'bleu': bleu} if bleu is not None else {}),
                    **({'val_acc': losses['val_acc']} if 'val_acc' in losses else {}))
        if losses['val'] < self.best_val_loss or cfg.always_save_checkpoint:
            self.best_val_loss = min(self.best_val_loss, losses['val'])
            if self.iter_num > 0 and not cfg.eval_only:  # evaluating a checkpoint must not rewrite it
                self.save()

    # -------------------------------------------------------------------------
    # Checkpoints

    def tokenizer_state(self):
        return data_tokenizer(self.meta).state()

    def checkpoint(self):
        """Everything that decides what comes next, so that a resumed run continues exactly."""
        rng = [None] * self.world
        if self.ddp:
            dist.all_gather_object(rng, rng_state())
        else:
            rng = [rng_state()]
        return {
            'model': self.raw_model.state_dict(), 'optimizer': [opt.state_dict() for opt in self.optimizers],
            'scaler': self.scaler.state_dict(), 'model_type': self.cfg.model_type, 'model_args': self.model_args,
            'iter_num': self.iter_num, 'best_val_loss': self.best_val_loss, 'config': self.config,
            'tokenizer': self.tokenizer_state(), 'rng': rng,
            **({'label_names': self.meta['label_names']} if self.meta and 'label_names' in self.meta else {}),
            'sampler' if isinstance(self.data_rng, EpochSampler) else 'data_rng': self.data_rng.get_state(),
            'skipped_steps': self.skipped, 'elapsed': self.elapsed,
            'wandb_id': self.wandb.id if self.wandb is not None else None,
        }

    def save(self):
        self.count_skipped(*self.read_skip_counts().tolist())  # the skipped steps the checkpoint records
        checkpoint = self.checkpoint()  # every rank takes part: it gathers their RNG states
        if self.cfg.fsdp:  # every rank writes its shards
            extra = {key: value for key, value in checkpoint.items() if key not in ('model', 'optimizer')}
            save_sharded(self.cfg.out_dir, self.raw_model, self.optimizers, extra, self.cfg.keep_last)
            self.log(f"saving checkpoint to {self.cfg.out_dir}")
        elif self.master:
            save_checkpoint(checkpoint, self.cfg.out_dir, self.cfg.keep_last)
            print(f"saving checkpoint to {self.cfg.out_dir}", flush=True)

    # -------------------------------------------------------------------------
    # Logging

    def log(self, message):
        if self.master:
            print(message, flush=True)

    def record(self, **metrics):
        """One line of out_dir/metrics.jsonl (appended, across resumes too) and of wandb."""
        if not self.master:
            return
        metrics = {'iter': self.iter_num, 'time': round(self.elapsed, 3), **metrics}
        with open(self.metrics_path, 'a') as f:
            f.write(json.dumps(metrics) + '\n')
        if self.wandb is not None:
            self.wandb.log(metrics, step=self.iter_num)

    def mfu(self, tokens, dt):
        """Model FLOPs utilisation of one device: this rank's share of the global batch's `tokens` (each
        rank computes 1/world of them) per `dt` seconds, against one device's peak."""
        task = {'mask_prob': self.cfg.mask_prob} if isinstance(self.data, MaskedSentences) else {}
        return self.raw_model.estimate_mfu(tokens / self.world, dt, self.peak, **task)

    def log_progress(self, loss_sum, tokens, grad_norm, dt, first):
        """The "iter N: loss" line and its metrics record. dt: seconds per step since the last one;
        first: the first of this process (the running MFU starts from it). The loss, the gradient norm
        and the skip counts come to the host together: the one host sync of the steps since the last line."""
        values = torch.cat([self.all_sum(loss_sum).view(1), grad_norm.float().view(1), self.read_skip_counts()])
        lossf, grad_norm, new_skipped, in_a_row = values.tolist()
        self.count_skipped(new_skipped, in_a_row)
        mfu = self.mfu(tokens, dt)
        self.running_mfu = mfu if first else 0.9 * self.running_mfu + 0.1 * mfu
        self.log(f"iter {self.iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, "
                 f"{tokens / dt:,.0f} tok/s, mfu {self.running_mfu * 100:.2f}%")
        # float16: the scaler's scale shows whether it settled (it halves at each overflowing step)
        scale = {'loss_scale': self.scaler.get_scale()} if self.scaler.is_enabled() else {}
        self.record(loss=lossf, lr=self.lr, grad_norm=grad_norm, ms_per_iter=dt * 1000,
                    tokens_per_sec=tokens / dt, mfu=self.running_mfu, **scale)


def main(argv=None):
    global stop_signal
    config, explicit = configure(DEFAULTS, argv, sources=[__file__])
    cfg = Settings(**config)
    stop_signal = None
    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        Trainer(cfg, explicit).run()
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
