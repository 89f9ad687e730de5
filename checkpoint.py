"""Checkpoints: written atomically, read safely, turned back into a model. A checkpoint is a dict of tensors and
plain Python values only, so that it loads with torch.load(weights_only=True), which cannot run hidden code."""

import glob
import io
import os
import random
import shutil
import tempfile
import uuid
import warnings

import numpy as np
import torch

from errors import UserError
from lora import add_lora, changed_weights, frozen_hash, frozen_names, merge_lora
from model import GPT, Encoder, EncoderConfig, GPTConfig, Seq2SeqConfig, Seq2SeqTransformer, config_fields
from optim import restore_optimizers
from tokenizer import TiktokenTokenizer, hf_tokenizer, load_meta, tokenizer_from_meta

MODEL_CLASSES = {'gpt': (GPT, GPTConfig), 'seq2seq': (Seq2SeqTransformer, Seq2SeqConfig), 'encoder': (Encoder, EncoderConfig)}
REQUIRED_KEYS = ('model', 'model_args', 'iter_num')


def save_checkpoint(checkpoint, out_dir, keep_last=0):
    """Write out_dir/ckpt.pt so that it is always the old or the new file, whole: a temporary file, fsynced, renamed
    over (atomic on POSIX); a failed write raises, the old one left. keep_last > 0 keeps as many as ckpt-<iter>.pt."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, 'ckpt.pt')
    for stale in glob.glob(os.path.join(out_dir, '.ckpt.pt.tmp*')):  # left by a writer that was killed
        os.remove(stale)
    tmp = os.path.join(out_dir, f'.ckpt.pt.tmp{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_last > 0 and os.path.exists(path):  # a second name for the old file; ckpt.pt never goes missing
            previous = torch.load(path, map_location='cpu', weights_only=True, mmap=True)['iter_num']
            older = os.path.join(out_dir, f'ckpt-{previous}.pt')
            if not os.path.exists(older):
                os.link(path, older)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(out_dir)
    if keep_last > 0:
        older = sorted(glob.glob(os.path.join(out_dir, 'ckpt-*.pt')), key=lambda p: int(p.rsplit('-', 1)[1][:-3]))
        for stale in older[:-keep_last]:
            os.remove(stale)


def fsync_dir(path):
    """Make the rename itself durable (the directory entry), not only the file's bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(out_dir, weights=True):
    """The checkpoint in out_dir, or a one-line UserError saying what is wrong with it: ckpt.pt, or
    ckpt.dcp (fsdp=True's sharded checkpoint, read whole on this process) when that is the newer.
    weights=False, for a sharded one: all but the model and optimizer, which FSDP loads sharded."""
    dcp, path = os.path.join(out_dir, DCP_LINK), os.path.join(out_dir, 'ckpt.pt')
    if os.path.lexists(dcp) and (not os.path.exists(path) or os.lstat(dcp).st_mtime >= os.path.getmtime(path)):
        path = dcp
        try:
            checkpoint = read_checkpoint(os.path.realpath(dcp), weights)
        except BaseException as e:  # DCP's CheckpointException is a BaseException, not an Exception
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise unreadable(dcp, e) from None
    elif not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}: train a model first, or point --out_dir at a run's folder")
    else:
        try:  # mmap: tensors are read from the file as they are used, so N ranks resuming do not hold N copies in RAM
            checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        except Exception as e:
            raise unreadable(path, e) from None
    required = [key for key in REQUIRED_KEYS if weights or path != dcp or key != 'model']  # weights=False: FSDP's part
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in required):
        raise UserError(f"{path} is not a checkpoint of this project (it lacks {', '.join(REQUIRED_KEYS)})")
    return upgraded(checkpoint)


def upgraded(checkpoint):
    """A checkpoint of an earlier version, as this one reads it: the settings since removed dropped where
    they had their default (rdrop, a training setting, whatever it was), weights renamed since renamed."""
    args = checkpoint['model_args']
    args.pop('rdrop', None)
    defaults = {'rope_theta': 10000.0, 'tie_embeddings': True, 'share_embeddings': True,
                'n_kv_head': args.get('n_kv_head') if args.get('n_kv_head') in (0, args.get('n_head')) else 0}
    for key, default in defaults.items():
        value = args.pop(key, default)
        if value != default:
            raise UserError(f"the checkpoint's model was trained with {key}={value}, an option this version no longer has")
    renamed = {'mlm_head.decoder.weight': 'mlm_head.out_proj.weight'}
    if 'model' in checkpoint and any(name in checkpoint['model'] for name in renamed):
        checkpoint['model'] = {renamed.get(k, k): v for k, v in checkpoint['model'].items()}
    return checkpoint


def unreadable(path, error):
    """The one-line error for a checkpoint file (or DCP directory) that cannot be read."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return UserError(f"{path} is not a readable checkpoint ({reason[:150]}): it is truncated, corrupt or not a "
                     f"checkpoint; restore it or delete it and train again")


def has_checkpoint(out_dir):
    """Whether out_dir holds a checkpoint, readable or not (a ckpt.dcp link counts even if it leads nowhere)."""
    return os.path.exists(os.path.join(out_dir, 'ckpt.pt')) or os.path.lexists(os.path.join(out_dir, DCP_LINK))


def describe_checkpoint(out_dir):
    """'a gpt model at iteration 5000' (or what is known of it) for messages about out_dir's checkpoint."""
    try:
        checkpoint = load_checkpoint(out_dir, weights=False)
    except UserError:
        return "a checkpoint that cannot be read"
    kind = checkpoint.get('model_type', 'gpt')
    if kind == 'encoder':
        kind = 'encoder classifier' if checkpoint['model_args'].get('n_classes') else 'encoder masked-LM'
    return f"a {kind} model at iteration {checkpoint['iter_num']}"


def writable_folder(path, flag):
    """Make sure folder `path` exists and can take new files, or raise a one-line UserError naming `flag`
    (--out_dir, --to): found before the work starts, not at its first save."""
    if os.path.islink(path) and not os.path.exists(path):
        raise UserError(f"{flag}={path} is a symbolic link that leads nowhere (a loop or a missing target): "
                        f"choose another {flag}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag}={path} is a file, not a folder: choose another {flag}")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"{flag}={path} cannot hold files ({e.strerror or e}): choose another {flag}") from None
    if os.path.isdir(os.path.join(path, 'ckpt.pt')):
        raise UserError(f"{os.path.join(path, 'ckpt.pt')} is a folder, where the checkpoint file goes: "
                        f"move it away or choose another {flag}")


def remove_checkpoints(out_dir):
    """Delete out_dir's checkpoints (ckpt.pt and the earlier ones kept, or the sharded ones): overwrite=True."""
    for path in [os.path.join(out_dir, 'ckpt.pt'), *glob.glob(os.path.join(out_dir, 'ckpt-*.pt'))]:
        if os.path.isfile(path):
            os.remove(path)
    if os.path.lexists(os.path.join(out_dir, DCP_LINK)):
        os.remove(os.path.join(out_dir, DCP_LINK))
    for folder in glob.glob(os.path.join(out_dir, '.ckpt-dcp-*')):
        shutil.rmtree(folder, ignore_errors=True)


GPT2_NAMES = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')  # on the Hugging Face hub


def is_pretrained(init_from):
    """Whether init_from names GPT-2 weights: a hub name, or a folder in Hugging Face's format."""
    return init_from in GPT2_NAMES or os.path.isfile(os.path.join(init_from, 'config.json'))


def pretrained_tokenizer(init_from):
    """The tokenizer of GPT-2 weights: GPT-2's BPE, or what a folder of them holds (tokenizer.hf_tokenizer)."""
    return TiktokenTokenizer('gpt2') if init_from in GPT2_NAMES else hf_tokenizer(init_from)


def pretrained_gpt(name_or_folder, overrides):
    """GPT.from_pretrained, with what goes wrong said in one line: no network, a folder that is not GPT-2's."""
    import logging
    logging.getLogger('huggingface_hub').setLevel(logging.ERROR)  # not a line per retry of a failing download
    try:
        return GPT.from_pretrained(name_or_folder, overrides)
    except ValueError as e:
        raise UserError(str(e)) from None
    except OSError as e:  # transformers' words for a failed download or an unreadable folder
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if os.path.isdir(name_or_folder):
            raise UserError(f"{name_or_folder} is not a folder of GPT-2 weights that transformers can read "
                            f"({reason[:150]})") from None
        raise UserError(f"could not download the weights of {name_or_folder} ({reason[:150]}); without network, "
                        f"use a downloaded copy: --init_from=<its folder> (transformers' save_pretrained folder, "
                        f"or export.py's)") from None


def model_from_checkpoint(checkpoint, model_type=None, adapters=False):
    """Build the checkpoint's model and load its weights. A LoRA run's: its base's weights, then its adapters and
    what else it trained, merged into plain weights unless `adapters` (a resumed run trains them on)."""
    kind = checkpoint.get('model_type', 'gpt')
    if model_type is not None and kind != model_type:
        raise UserError(f"the checkpoint holds a {kind} model but model_type is {model_type}: "
                        f"use --model_type={kind} or another --out_dir")
    model_class, config_class = MODEL_CLASSES[kind]
    try:
        model = model_class(config_class(**checkpoint['model_args']))
    except (TypeError, ValueError) as e:
        raise UserError(f"the checkpoint's model settings are not valid for this code: {e}") from None
    if checkpoint.get('lora'):
        model = adapted(with_base_weights(model, checkpoint['lora']['base']), dict(checkpoint['lora']), kind)
    if 'model' not in checkpoint:  # a sharded checkpoint read without its weights: FSDP loads them
        return model
    state = {k.removeprefix('_orig_mod.'): v for k, v in checkpoint['model'].items()}  # saved from a compiled model
    try:  # every weight but the frozen ones of a LoRA run, which its base gave
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - frozen_names(model):
            raise RuntimeError(f"\nmissing {sorted(set(missing) - frozen_names(model))[:3]}, unexpected {unexpected[:3]}")
    except RuntimeError as e:
        detail = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"the checkpoint's weights do not fit its model settings ({detail[:150]})") from None
    return model if adapters else merge_lora(model)


def lora_record(cfg):
    """What a LoRA run's checkpoint says of its adapters and base (a GPT-2 name, or a folder's full path)."""
    base = cfg.init_from if cfg.init_from in GPT2_NAMES else os.path.abspath(cfg.init_from)
    return {'rank': cfg.lora_rank, 'alpha': cfg.lora_alpha, 'targets': cfg.lora_targets, 'base': base}


def adapted(model, lora, kind):
    """`model` frozen, with the adapters of `lora` (lora_record's); an encoder's head trains too (it starts fresh).
    The record gets the frozen weights' hash, or, loaded again, is checked against it; it goes with the model."""
    add_lora(model, lora['rank'], lora['alpha'], lora['targets'], Encoder.HEADS if kind == 'encoder' else ())
    base_hash = frozen_hash(model)
    if lora.setdefault('base_hash', base_hash) != base_hash:
        raise UserError(f"the LoRA base {lora['base']} is not the model these adapters were trained on (its weights "
                        f"differ): restore that model there, or fine-tune again")
    model.lora = lora
    return model


def with_base_weights(model, base):
    """`model` with the weights of a LoRA run's base: GPT-2's (a hub name or a folder) or a run's (its out_dir)."""
    try:
        source = pretrained_gpt(base, {'block_size': model.config.block_size}) if is_pretrained(base) else \
            model_from_checkpoint(load_checkpoint(base))
        (model.load_body if isinstance(model, Encoder) else model.load_state_dict)(source.state_dict())
    except (UserError, ValueError, RuntimeError) as e:
        raise UserError(f"the LoRA base {base}: {str(e).splitlines()[0][:200]}") from None
    return model


def tokenizer_state(checkpoint):
    """The model's tokenizer's state: the checkpoint's, else (nanoGPT's) its dataset's meta.pkl's, or GPT-2's BPE."""
    if 'tokenizer' in checkpoint:
        return checkpoint['tokenizer']
    meta = load_meta(os.path.join('data', checkpoint.get('config', {}).get('dataset', '')))
    return tokenizer_from_meta(meta).state() if meta else {'kind': 'tiktoken', 'name': 'gpt2'}


# Random number generators: saved so that a resumed run draws exactly what an uninterrupted one would.

def rng_state():
    state = {'python': random.getstate(), 'torch': torch.get_rng_state()}
    np_state = np.random.get_state()
    # int64, not numpy's uint32: torch cannot unpickle uint32 tensors, which DDP's all_gather_object does
    state['numpy'] = (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    random.setstate(state['python'])
    torch.set_rng_state(state['torch'])
    kind, keys, *rest = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


# ---------------------------------------------------------------------------
# Sharded checkpoints (fsdp=True): a torch.distributed.checkpoint (DCP) directory, each rank writing its shards.
# It holds {'model': the model's state dict, 'optimizer': the optimizers' (keyed by parameter name), 'extra':
# everything else a ckpt.pt holds (iteration, config, tokenizer, RNG and sampler state, scaler...), pickled}.

DCP_LINK = 'ckpt.dcp'  # out_dir/ckpt.dcp -> .ckpt-dcp-<iter>, the last complete checkpoint


def save_sharded(out_dir, model, optimizers, extra, keep_last=0):
    """Write the checkpoint into a DCP directory .ckpt-dcp-<iter>, each rank its shards, in parallel; only once every
    rank is done is the link out_dir/ckpt.dcp switched to it (a rename: atomic), so a kill at any moment leaves the
    last complete checkpoint. Older ones go, but keep_last. Every rank calls it; rank 0 alone decides on files."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from distributed import rank0_decides
    name = rank0_decides(lambda: fresh_dcp_name(out_dir, extra['iter_num']))
    model_state, optim_state = get_state_dict(model, optimizers)
    pickled = io.BytesIO()
    torch.save(extra, pickled)
    pickled.seek(0)
    dcp.save({'model': changed_weights(model, model_state), 'optimizer': optim_state, 'extra': pickled},
             checkpoint_id=os.path.join(out_dir, name))
    dist.barrier()  # every shard and the metadata written
    if dist.get_rank() == 0:
        switch_link(out_dir, name)
        live = os.path.realpath(os.path.join(out_dir, DCP_LINK))
        older = sorted((d for d in glob.glob(os.path.join(out_dir, '.ckpt-dcp-*')) if os.path.realpath(d) != live),
                       key=os.path.getmtime)
        for stale in older[:len(older) - keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()


def fresh_dcp_name(out_dir, iter_num):
    """The emptied directory for iteration iter_num's checkpoint: .ckpt-dcp-<iter>, or a second name when that is the
    live one (a resumed run saves its first iteration again). Real paths are compared: out_dir is often relative."""
    link = os.path.join(out_dir, DCP_LINK)
    live = os.path.realpath(link) if os.path.islink(link) else None
    name = f'.ckpt-dcp-{iter_num}'
    if os.path.realpath(os.path.join(out_dir, name)) == live:
        name += '-again'
    if os.path.exists(os.path.join(out_dir, name)):
        shutil.rmtree(os.path.join(out_dir, name))  # left by a writer that was killed; never the live one
    return name


def switch_link(out_dir, name):
    """Point out_dir/ckpt.dcp at `name`: a new link under a name no other writer uses, renamed over the old."""
    link = os.path.join(out_dir, DCP_LINK)
    for stale in glob.glob(link + '.tmp*'):  # left by a writer that was killed
        os.remove(stale)
    tmp = f'{link}.tmp{uuid.uuid4().hex}'  # not the process id: a restarted worker may get the same one
    os.symlink(name, tmp)
    os.replace(tmp, link)
    fsync_dir(out_dir)


def load_sharded(path, model, optimizers):
    """Load a DCP checkpoint into a sharded model and optimizers, each rank its shards, however many ranks saved it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
    model_state, optim_state = get_state_dict(model, optimizers)  # templates: the shapes and shards wanted
    state = {'model': changed_weights(model, model_state), 'optimizer': optim_state}
    try:
        dcp.load(state, checkpoint_id=path)
    except BaseException as e:  # DCP's CheckpointException is a BaseException, not an Exception
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise unreadable(path, e) from None
    set_state_dict(model, optimizers, model_state_dict=state['model'], optim_state_dict=state['optimizer'],
                   options=StateDictOptions(strict=False))  # not the frozen weights: the base gave them


def read_checkpoint(path, weights=True):
    """A DCP checkpoint read whole on this process, with no process group: the dict a ckpt.pt holds, on the CPU, its
    optimizer state in torch's own format (numbered parameters), so that a run without FSDP resumes from it too.
    weights=False: all but the model and optimizer ('dcp': path, to load them sharded)."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter('ignore', UserWarning)
        keys = {'extra', 'model', 'optimizer'} if weights else {'extra'}
        state = _load_state_dict_from_keys(keys, checkpoint_id=path)
    state['extra'].seek(0)
    checkpoint = {**torch.load(state['extra'], map_location='cpu', weights_only=True), 'dcp': path}
    if weights:
        checkpoint['model'], checkpoint['optimizer'] = state['model'], [numbered(state['optimizer'])]
    return checkpoint


def numbered(optim_state):
    """An optimizer state keyed by parameter names (DCP's) -> torch's, keyed by parameter number."""
    number, groups = {}, []
    for group in optim_state['param_groups']:
        names = group['params']
        for name in names:
            number.setdefault(name, len(number))
        groups.append({**group, 'params': [number[name] for name in names]})
    return {'state': {number[name]: s for name, s in optim_state['state'].items()}, 'param_groups': groups}


# ---------------------------------------------------------------------------
# Where a run starts: a new model, GPT-2's weights, another run's weights (init_from=<its out_dir>), or its own
# checkpoint (resume). train.py calls these with its settings `cfg` and the set `explicit` of those the user gave.

ARCH_SETTINGS = config_fields(GPTConfig) | config_fields(Seq2SeqConfig) | config_fields(EncoderConfig)
TRAINING_ONLY = {'dropout', 'label_smoothing', 'fused_attention'}  # may change when a run is resumed


def resumes(cfg):
    """Whether the run continues from out_dir's checkpoint: init_from='resume', or torchrun --max-restarts' restart."""
    return cfg.init_from == 'resume' or (cfg.init_from == 'scratch' and has_checkpoint(cfg.out_dir)
                                         and int(os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)) > 0)


def from_run(cfg):
    """Whether init_from names another run's out_dir (whose weights start this run), not a mode or GPT-2."""
    return cfg.init_from not in ('scratch', 'resume') and not is_pretrained(cfg.init_from)


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


def saved_name(cfg, key):
    """The name of setting `key` in a checkpoint's model_args."""
    return 'tgt_block_size' if cfg.model_type == 'seq2seq' and key == 'block_size' else key


def adopt_architecture(cfg, explicit, resuming):
    """A resumed run, or init_from=<a run's out_dir>: the architecture settings the user did not set take the
    checkpoint's values (block_size too: the data is cut to it); build_model checks those set against it.
    Returns init_from's checkpoint (ckpt.pt, or an FSDP run's ckpt.dcp, read whole), or None."""
    if from_run(cfg):
        checkpoint = source = load_checkpoint(cfg.init_from)
    elif resuming:
        checkpoint, source = load_checkpoint(cfg.out_dir, weights=False), None
    else:
        return None
    saved = checkpoint['model_args']
    for key in sorted(ARCH_SETTINGS - TRAINING_ONLY - set(explicit)):
        if hasattr(cfg, key) and saved_name(cfg, key) in saved:
            setattr(cfg, key, saved[saved_name(cfg, key)])
    lora = (checkpoint.get('lora') or {'rank': 0}) if resuming else {}
    for key, value in lora.items():  # a resumed run keeps its LoRA settings
        if f'lora_{key}' in explicit and getattr(cfg, f'lora_{key}') != value:
            raise UserError(f"--lora_{key}={getattr(cfg, f'lora_{key}')} differs from the checkpoint's {value}: a "
                            f"resumed run keeps its LoRA settings (drop the flag, or use another out_dir)")
        if hasattr(cfg, f'lora_{key}'):
            setattr(cfg, f'lora_{key}', value)
    return source


def build_model(cfg, explicit, meta, resuming, source, log):
    """(the model, out_dir's checkpoint when resuming, else None): a new model, GPT-2's weights, another
    run's (source), or this run's own. FSDP loads a resumed model's weights later, sharded."""
    if resuming:
        checkpoint = load_checkpoint(cfg.out_dir, weights=not cfg.fsdp)
        check_resumable(cfg, checkpoint, explicit, meta)
        checkpoint['model_args'].update(training_only_settings(cfg))
        log(f"resuming from {cfg.out_dir}/{'ckpt.dcp' if 'dcp' in checkpoint else 'ckpt.pt'} at iteration "
            f"{checkpoint['iter_num']}")
        return model_from_checkpoint(checkpoint, cfg.model_type, adapters=True), checkpoint
    if source is not None:
        model = model_from_run(cfg, source, explicit, meta, log)
    elif is_pretrained(cfg.init_from):
        check_same_tokenizer(cfg, meta, pretrained_tokenizer(cfg.init_from).state(), cfg.init_from)
        model = pretrained_gpt(cfg.init_from, dict(dropout=cfg.dropout, block_size=cfg.block_size))
    else:
        check_vocab_size(cfg, meta)
        model_class, config_class = MODEL_CLASSES[cfg.model_type]
        try:
            model = model_class(config_class(**architecture(cfg, meta)))
        except ValueError as e:
            raise UserError(f"invalid model settings: {e}") from None
    what = cfg.model_type
    if cfg.model_type == 'encoder':
        what = f"encoder ({f'{model.config.n_classes} classes' if model.config.n_classes else 'masked-LM'})"
    log(f"{what} model with {model.get_num_params() / 1e6:.2f}M parameters")
    if cfg.lora_rank:
        adapted(model, lora_record(cfg), cfg.model_type)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log(f"LoRA: {trained:,} parameters trained ({100 * trained / model.get_num_params(False):.2f}%), the rest frozen")
    return model, None


def model_from_run(cfg, source, explicit, meta, log):
    """init_from=<a run's out_dir>: a model with that run's weights, to fine-tune: a GPT (or seq2seq) whole; an encoder
    its body, under a fresh head for this data (a masked-LM's body under a classifier). Only the weights: the
    optimizer, the step count, best_val_loss, the metrics and the random state start fresh, as for a new run."""
    check_resumable(cfg, source, explicit, meta, source=cfg.init_from)
    args = {**source['model_args'], **training_only_settings(cfg)}
    if cfg.model_type != 'encoder':
        model = model_from_checkpoint({**source, 'model_args': args}, cfg.model_type)
    else:
        try:
            model = Encoder(EncoderConfig(**{**args, 'n_classes': meta.get('n_classes', 0), 'pad_id': meta['pad_id']}))
            weights = model_from_checkpoint(source).state_dict() if source.get('lora') else source['model']  # merged
            model.load_body({k.removeprefix('_orig_mod.'): v for k, v in weights.items()})
        except ValueError as e:
            raise UserError(f"{cfg.init_from}: {e}") from None
    head = ' (its body: the head starts fresh)' if cfg.model_type == 'encoder' else ''
    log(f"initialised from {cfg.init_from}/{'ckpt.dcp' if 'dcp' in source else 'ckpt.pt'} "
        f"(iteration {source['iter_num']}){head}")
    return model


def architecture(cfg, meta):
    """The model settings of a new model: the run's settings, plus what the data decides."""
    settings = vars(cfg)
    args = {key: settings[key] for key in config_fields(MODEL_CLASSES[cfg.model_type][1]) if key in settings}
    args['vocab_size'] = cfg.vocab_size or (meta or {}).get('vocab_size') or 50304
    if cfg.model_type == 'seq2seq':
        args.update(src_block_size=cfg.block_size, tgt_block_size=cfg.block_size,
                    pad_id=meta['pad_id'], bos_id=meta['bos_id'], eos_id=meta['eos_id'])
    if cfg.model_type == 'encoder':  # a classifier when the data has labels, else a masked-language model
        args.update(pad_id=meta['pad_id'], n_classes=meta.get('n_classes', 0))
    return args


def training_only_settings(cfg):
    """This run's TRAINING_ONLY settings of its model kind: they replace a checkpoint's, recorded there or not."""
    fields = config_fields(MODEL_CLASSES[cfg.model_type][1])
    return {k: getattr(cfg, k) for k in TRAINING_ONLY if k in fields}


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
    if source:
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


def restore_run(checkpoint, model, optimizers, scaler, sampler, rank, fsdp, log):
    """The optimizers' and scaler's state (under FSDP sharded, with the weights), the data order and the RNGs, as
    the checkpoint left them. Returns (iteration, best val loss, non-finite steps skipped, seconds of training)."""
    if 'dcp' in checkpoint and fsdp:  # weights and optimizer state, each rank its shards
        load_sharded(checkpoint['dcp'], model, optimizers)
    restore_optimizers(optimizers, checkpoint, fsdp, log)
    if checkpoint.get('scaler'):  # a run without a scaler (not float16) saved {}: then a float16 one starts afresh
        scaler.load_state_dict(checkpoint['scaler'])
    key = 'data_rng' if isinstance(sampler, torch.Generator) else 'sampler'  # sampling='random' or 'epoch'
    if key in checkpoint:
        try:
            sampler.set_state(checkpoint[key])
        except ValueError as e:  # the data changed: its epochs start again
            log(f"{e}: epoch sampling starts a new epoch 0")
    elif 'data_rng' in checkpoint or 'sampler' in checkpoint:
        log("the checkpoint's sampling differs from this run's sampling: it starts afresh")
    if checkpoint.get('rng'):  # this rank's random numbers (its dropout)
        set_rng_state(checkpoint['rng'][rank % len(checkpoint['rng'])])
    return (checkpoint['iter_num'], checkpoint.get('best_val_loss', float('inf')), checkpoint.get('skipped_steps', 0),
            checkpoint.get('elapsed', 0.0))


def save_run(checkpoint, out_dir, model, optimizers, keep_last, fsdp, master):
    """A training run's checkpoint: sharded, every rank writing its shards (fsdp=True), or whole by rank 0."""
    if fsdp:
        extra = {key: value for key, value in checkpoint.items() if key not in ('model', 'optimizer')}
        save_sharded(out_dir, model, optimizers, extra, keep_last)
    elif master:
        save_checkpoint(checkpoint, out_dir, keep_last)
