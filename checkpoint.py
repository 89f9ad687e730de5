"""
Checkpoints: written atomically, read safely, turned back into a model.

A checkpoint is a dict of tensors and plain Python values only, so that it loads with
torch.load(weights_only=True), which cannot run code hidden in a file.
"""

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
from model import GPT, Encoder, EncoderConfig, GPTConfig, Seq2SeqConfig, Seq2SeqTransformer
from tokenizer import TiktokenTokenizer, hf_tokenizer, load_meta, tokenizer_from_meta

MODEL_CLASSES = {'gpt': (GPT, GPTConfig), 'seq2seq': (Seq2SeqTransformer, Seq2SeqConfig), 'encoder': (Encoder, EncoderConfig)}
REQUIRED_KEYS = ('model', 'model_args', 'iter_num')


def save_checkpoint(checkpoint, out_dir, keep_last=0):
    """Write out_dir/ckpt.pt so that it is always either the old or the new file, whole:
    write a temporary file, fsync it, then rename it over (atomic on POSIX). A failed write
    raises and leaves the previous checkpoint as it was. keep_last > 0 keeps that many
    earlier checkpoints as ckpt-<iter>.pt."""
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
    dcp = os.path.join(out_dir, DCP_LINK)
    path = os.path.join(out_dir, 'ckpt.pt')
    if os.path.lexists(dcp) and (not os.path.exists(path) or os.lstat(dcp).st_mtime >= os.path.getmtime(path)):
        try:
            checkpoint = read_checkpoint(os.path.realpath(dcp), weights)
        except BaseException as e:  # DCP's CheckpointException is a BaseException, not an Exception
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise unreadable(dcp, e) from None
        if any(key not in checkpoint for key in REQUIRED_KEYS if weights or key != 'model'):
            raise UserError(f"{dcp} is not a checkpoint of this project (it lacks {', '.join(REQUIRED_KEYS)})")
        return checkpoint
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}: train a model first, or point --out_dir at a run's folder")
    try:  # mmap: tensors are read from the file as they are used, so N ranks resuming do not hold N copies in RAM
        checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception as e:
        raise unreadable(path, e) from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise UserError(f"{path} is not a checkpoint of this project (it lacks {', '.join(REQUIRED_KEYS)})")
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


def model_from_checkpoint(checkpoint, model_type=None):
    """Build the checkpoint's model and load its weights."""
    kind = checkpoint.get('model_type', 'gpt')
    if model_type is not None and kind != model_type:
        raise UserError(f"the checkpoint holds a {kind} model but model_type is {model_type}: "
                        f"use --model_type={kind} or another --out_dir")
    model_class, config_class = MODEL_CLASSES[kind]
    try:
        model = model_class(config_class(**checkpoint['model_args']))
    except (TypeError, ValueError) as e:
        raise UserError(f"the checkpoint's model settings are not valid for this code: {e}") from None
    if 'model' not in checkpoint:  # a sharded checkpoint read without its weights: FSDP loads them
        return model
    state = {k.removeprefix('_orig_mod.'): v for k, v in checkpoint['model'].items()}  # saved from a compiled model
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"the checkpoint's weights do not fit its model settings ({detail[:150]})") from None
    return model


def tokenizer_state(checkpoint):
    """The state of the tokenizer the model was trained with. Our checkpoints carry it; for a
    nanoGPT checkpoint it comes from the dataset's meta.pkl, else it is GPT-2's BPE."""
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
# Sharded checkpoints (fsdp=True): a torch.distributed.checkpoint (DCP) directory, each rank writing its
# shards. It holds {'model': the model's state dict, 'optimizer': the optimizers' (keyed by parameter
# name), 'extra': everything else a ckpt.pt holds (iteration, config, tokenizer, RNG and sampler state,
# scaler...), pickled}.

DCP_LINK = 'ckpt.dcp'  # out_dir/ckpt.dcp -> .ckpt-dcp-<iter>, the last complete checkpoint


def pickled(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def save_sharded(out_dir, model, optimizers, extra, keep_last=0):
    """Write the checkpoint as a DCP directory, each rank its own shard, in parallel. It goes into
    .ckpt-dcp-<iter>; only once every rank has finished is the link out_dir/ckpt.dcp switched to it
    (a rename: atomic), so a kill at any moment leaves the last complete checkpoint loadable. Older
    directories are removed, but for keep_last of them. Every rank calls it; rank 0 alone decides
    what happens to files, and tells the others."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    name = rank0_decides(lambda: fresh_dcp_name(out_dir, extra['iter_num']))
    model_state, optim_state = get_state_dict(model, optimizers)
    dcp.save({'model': model_state, 'optimizer': optim_state, 'extra': pickled(extra)},
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
    """The directory to write iteration iter_num's checkpoint into, emptied: .ckpt-dcp-<iter>, or, when
    that is the live checkpoint (the same iteration saved again, as a resumed run does at its first
    evaluation), a second name beside it. Real paths are compared: out_dir is often relative."""
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


def rank0_decides(decide):
    """decide() run on rank 0 alone and its result given to every rank, so that no two ranks take different
    branches (a shared filesystem may show them different things). Without a process group: decide().
    A UserError on rank 0 is raised on every rank."""
    import torch.distributed as dist
    if not dist.is_initialized():
        return decide()
    answer = [None]
    if dist.get_rank() == 0:
        try:
            answer = [(True, decide())]
        except UserError as e:
            answer = [(False, str(e))]
    dist.broadcast_object_list(answer, src=0)
    ok, value = answer[0]
    if not ok:
        raise UserError(value)
    return value


def load_sharded(path, model, optimizers):
    """Load a DCP checkpoint into a sharded model and its optimizers: each rank reads the pieces of
    its own shards, whatever the number of ranks that saved it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_state, optim_state = get_state_dict(model, optimizers)  # templates: the shapes and shards wanted
    state = {'model': model_state, 'optimizer': optim_state}
    try:
        dcp.load(state, checkpoint_id=path)
    except BaseException as e:  # DCP's CheckpointException is a BaseException, not an Exception
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise unreadable(path, e) from None
    set_state_dict(model, optimizers, model_state_dict=state['model'], optim_state_dict=state['optimizer'])


def load_keys(keys, path):
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter('ignore', UserWarning)
        return _load_state_dict_from_keys(keys, checkpoint_id=path)


def read_extra(path):
    value = load_keys({'extra'}, path)['extra']
    value.seek(0)
    return torch.load(value, map_location='cpu', weights_only=True)


def read_checkpoint(path, weights=True):
    """A DCP checkpoint read whole on this process, with no process group: the dict a ckpt.pt holds,
    full tensors on the CPU. The optimizer state is turned back into torch's own format (parameters
    numbered in the order of their groups), so that a run without FSDP resumes from it too.
    weights=False: everything but the model and optimizer ('dcp': path, to load them sharded)."""
    checkpoint = {**read_extra(path), 'dcp': path}
    if weights:
        state = load_keys({'model', 'optimizer'}, path)
        checkpoint['model'] = state['model']
        checkpoint['optimizer'] = [numbered(state['optimizer'])]
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
