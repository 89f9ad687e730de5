"""Hardware: which device and dtype to run on, how fast the device can go, and the speed-ups that pay on some hardware
(`speed_up(model, ...)`): each says what it gained where measured; a test checks it gives the plain code's numbers."""

import ctypes
import math
import platform
import time
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.nn import functional as F

import model
from errors import UserError

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}

# --- Device and dtype --------------------------------------------------------


def resolve_device(name):
    """'auto' -> the best device present; a device that is not there is an error."""
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use cpu, cuda, cuda:N, mps or auto") from None
    present = {'cpu': True, 'cuda': torch.cuda.is_available(), 'mps': torch.backends.mps.is_available()}
    if not present.get(device.type, False):
        raise UserError(f"device {name!r} is not available on this machine: use --device=cpu (or auto)")
    if device.type == 'cuda' and device.index is not None:  # cuda:N: every later CUDA call (RNG state,
        torch.cuda.set_device(name)  # bf16 query, allocations) then means that GPU; plain 'cuda' is the current one
    return name


def cpu_has_bf16():
    """Whether this CPU computes in bf16 (AVX512-BF16 or AMX): there bf16 matmuls are ~2x float32's speed."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def training_dtype(dtype, device_type):
    """'auto': bf16 where the hardware computes in it, float16 (with a gradient scaler) on older GPUs, else float32."""
    if dtype != 'auto':
        return dtype
    if device_type == 'cuda':  # bf16 in hardware (8.0+): torch's default also says True where emulated (V100, T4)
        return 'bfloat16' if torch.cuda.is_bf16_supported(including_emulation=False) else 'float16'
    return 'bfloat16' if device_type == 'cpu' and cpu_has_bf16() else 'float32'


# generation reads each weight once per token: half-size ones are read twice as fast; float16 needs no scaler
inference_dtype = training_dtype


def autocast(device_type, dtype):
    """Mixed precision: matmuls in `dtype`, reductions and the weights' master copy in float32."""
    return nullcontext() if dtype == 'float32' else torch.autocast(device_type, dtype=DTYPES[dtype])


def compile_supported(device):
    """torch.compile's GPU kernels (Triton) need compute capability 7.0 (Volta) or newer."""
    device = torch.device(device)
    return device.type != 'cuda' or torch.cuda.get_device_capability(device) >= (7, 0)


def compiles(wanted, device, log):
    """Whether to torch.compile: as asked, but off, with a line saying why, on GPUs before Volta (no Triton kernels)."""
    if wanted and not compile_supported(device):
        major, minor = torch.cuda.get_device_capability(device)
        log(f"compile=True turned off: torch.compile needs a GPU of compute capability 7.0 or newer, "
            f"{device} has {major}.{minor}")
        return False
    return wanted


def keep_freed_memory():
    """Stop glibc's malloc from handing each freed activation buffer back to the OS: on a CPU every
    step would otherwise page-fault tens of MB back in (~8% of the CPU recipe's step). Linux only."""
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:  # not glibc (macOS, Windows, musl): nothing to tune
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    # blocks up to 32 MiB (glibc's largest) come from the heap, which keeps up to 1 GiB free for reuse
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


# --- Peak FLOP/s of the device, for MFU --------------------------------------

# Dense bf16/fp16 tensor-core FLOP/s with float32 accumulation (what PyTorch uses), from the vendors' data sheets.
# torch.cuda.get_device_name's longest key wins ('NVIDIA H100 NVL': 'H100 NVL', not 'H100'); no key: measured instead.
GPU_PEAK_BF16 = {
    'H200': 989e12, 'H200 NVL': 835e12, 'H100': 989e12, 'H100 PCIe': 756e12, 'H100 NVL': 835e12, 'H800': 989e12,
    'A100': 312e12, 'A800': 312e12, 'L40S': 362e12, 'L40': 181e12, 'L4': 121e12,
    'A10G': 70e12, 'A10': 125e12, 'V100': 125e12, 'T4': 65e12,
    'RTX 4090': 165e12, 'RTX 3090': 71e12}  # GeForce: half the fp16-accumulate rate of their data sheets


def gpu_table_peak(name):
    """The entry for a GPU name, or None; keys match whole words: 'L4' not in 'L40S', 'A100' not in 'RTX A1000'."""
    words = name.replace('-', ' ').split()
    matches = [key for key in GPU_PEAK_BF16
               if any(words[i:i + len(key.split())] == key.split() for i in range(len(words)))]
    return GPU_PEAK_BF16[max(matches, key=len)] if matches else None


def synchronize(device):
    """Wait for the device to finish its queued work, so that a clock measures it."""
    kind = torch.device(device).type
    if kind == 'cuda':
        torch.cuda.synchronize(device)
    elif kind == 'mps':
        torch.mps.synchronize()


# (matrix size, matmuls between syncs) to measure a peak: a GPU needs large ones, several a sync, or overhead dominates
PEAK_MATMULS = {'cpu': (1024, 1), 'gpu': (8192, 8)}


def measured_peak_flops(device, dtype):
    """Best FLOP/s of large matmuls on this device: the practical peak where no data sheet applies."""
    device = torch.device(device)
    n, repeats = PEAK_MATMULS['cpu' if device.type == 'cpu' else 'gpu']
    # random, not constant: a GPU multiplies constant matrices ~10% faster (fewer bits flip, higher clocks). From a
    # generator of its own, so that the global random stream, just restored by a resumed run, stays put
    a = torch.randn(n, n, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(0))
    best = float('inf')
    for _ in range(4):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            out = a @ a
        out.sum().item()
        best = min(best, (time.perf_counter() - t0) / repeats)
    return 2 * n ** 3 / best


def peak_flops(device, dtype):
    """Peak FLOP/s of one `device` for `dtype`: the data sheet for known GPUs (TF32: half bf16's), else measured."""
    device = torch.device(device)
    if device.type == 'cuda' and (flops := gpu_table_peak(torch.cuda.get_device_name(device))) is not None:
        return flops / 2 if dtype == torch.float32 else flops
    return measured_peak_flops(device, dtype)


# --- Speed-ups for particular hardware, applied to a built model -------------


class ReLUSquaredFunction(torch.autograd.Function):
    """relu(x)^2 with its gradient 2 relu(x) written out: autograd's takes four passes over the MLP's wide activations
    where two suffice; the CPU recipe's steps ~4% faster (memory-bound; measured on a 2-core AVX512-BF16 CPU)."""

    @staticmethod
    def forward(ctx, x):
        r = F.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad):
        r, = ctx.saved_tensors
        return grad.mul(r).mul_(2)


fast_relu_squared = ReLUSquaredFunction.apply  # model.relu_squared with the hand-written gradient above


class Float32Attention:
    """An attention formula (model.Attention.formula) run in float32 under CPU autocast: there bf16 attention trains
    several times slower (no bf16 kernels for its small matmuls and softmax); projections keep their ~2x bf16 gain."""

    def __init__(self, formula):
        self.formula = formula

    def __call__(self, q, k, v, **kwargs):
        if not torch.is_autocast_enabled('cpu'):  # weights already in one dtype (sampling): nothing to do
            return self.formula(q, k, v, **kwargs)
        with torch.autocast('cpu', enabled=False):
            return self.formula(q.float(), k.float(), v.float(), **kwargs)


def orthogonalised(update, coefficients, steps, eps):
    """Muon's Newton-Schulz iterations (quintic, on X X^T) as torch's, in float32: `update` with singular values ~1."""
    a, b, c = coefficients
    wide = update.size(0) <= update.size(1)  # iterate on the smaller Gram matrix
    x = update.float() if wide else update.float().T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.T


def muon_lr_scale(adjust_lr_fn, shape):
    """torch.optim.Muon's learning-rate factor for a matrix of `shape`."""
    rows, cols = shape[:2]
    if adjust_lr_fn == 'match_rms_adamw':  # steps of AdamW's size: one learning rate serves both
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn in (None, 'original'):
        return math.sqrt(max(1, rows / cols))
    return 1.0


class Float32Muon(torch.optim.Muon):
    """torch.optim.Muon with its Newton-Schulz iterations in float32, not bf16, which a CPU without bf16 arithmetic
    emulates: one step of a 4 x 128 model ~950 ms with torch's, ~27 ms with this (2-core EPYC without AVX512-BF16).
    Same settings, state and update as torch's (momentum, Nesterov, decoupled weight decay, lr scaling by shape)."""

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = None if closure is None else closure()
        for group in self.param_groups:
            for p in group['params']:
                if p.grad is None:
                    continue
                state = self.state[p]
                if 'momentum_buffer' not in state:
                    state['momentum_buffer'] = torch.zeros_like(p.grad)
                buf = state['momentum_buffer'].lerp_(p.grad, 1 - group['momentum'])
                update = p.grad.lerp(buf, group['momentum']) if group['nesterov'] else buf
                update = orthogonalised(update, group['ns_coefficients'], group['ns_steps'], group['eps'])
                p.mul_(1 - group['lr'] * group['weight_decay'])
                p.add_(update.to(p.dtype), alpha=-group['lr'] * muon_lr_scale(group['adjust_lr_fn'], p.shape))
        return loss


def muon_class(device_type):
    """The Muon to train with: Float32Muon on a CPU without bf16 arithmetic, torch's elsewhere."""
    return Float32Muon if device_type == 'cpu' and not cpu_has_bf16() else torch.optim.Muon


@contextmanager
def one_token_kernels(tokens):
    """Run a step that feeds one token of one sequence on a CPU with PyTorch's own matrix-vector kernels: with bf16
    weights they stream them ~1.7x faster than oneDNN's matmul (AVX512-BF16 CPU), still faster for more rows."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled and not (tokens.device.type == 'cpu' and tokens.numel() == 1)
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def one_token_steps(net):
    """Run each generation step (generation_step(net)) that feeds one token under one_token_kernels. Returns net."""
    name = generation_step(net)
    step = getattr(net, name)

    def one_token_step(tokens, *args, **kwargs):
        with one_token_kernels(tokens):
            return step(tokens, *args, **kwargs)
    setattr(net, name, one_token_step)
    return net


def generation_step(net):
    """The method generation calls at every step: an encoder-decoder's decode (never its forward), else forward."""
    return 'decode' if isinstance(net, model.Seq2SeqTransformer) else 'forward'


def no_attention_plans_per_shape():
    """Turn off cuDNN's attention kernel (process-wide): torch tries it first on Hopper and newer GPUs, and it plans
    every new shape (each new length in generation; batches padded to their longest sentence). Greedy sampling on an
    H200 paid 35-50 ms a new length, any model size (19-27 tok/s, ~500 once all were seen). Flash needs no plan."""
    torch.backends.cuda.enable_cudnn_sdp(False)


class PackedLinear(nn.Module):
    """A Linear whose weight oneDNN has laid out once, in the blocked order its kernel reads (a plain Linear's float32
    matmul does it every call). On a 2-core AVX2 EPYC, float32, the same tokens: sampling the 6x384 Shakespeare model
    18% faster with one row, 26% with ten (medians of six alternating rounds); GPT-2 124M 12% and ~1.9x; a forward of
    8 x 256 tokens 20%. The packed weight is a copy that an optimizer would not see: for inference only."""

    def __init__(self, linear):
        super().__init__()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias = linear.bias

    def forward(self, x):
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, 'none', [], '')


def packs_weights(device_type, dtype):
    """Whether pack_for_inference packs here: float32 on an x86 CPU with oneDNN, where it was measured."""
    return device_type == 'cpu' and dtype == 'float32' and platform.machine().lower() in ('x86_64', 'amd64') \
        and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_reorder_linear_weight')


def swap_modules(net, replacement):
    """Replace, in place, each submodule of `net` for which replacement(submodule) gives a module. Returns net."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if (new := replacement(child)) is not None:
                setattr(parent, name, new)
    return net


def pack_for_inference(net, device_type, dtype):
    """Replace each nn.Linear of a model that will only be run (sample.py) by a PackedLinear, where packs_weights says
    it pays. The replaced weights are freed, except one tied to an embedding (GPT-2 124M: +154 MB). Returns net."""
    if not packs_weights(device_type, dtype):
        return net
    return swap_modules(net, lambda module: PackedLinear(module) if isinstance(module, nn.Linear) else None)


def speed_up(net, device_type, dtype):
    """Apply the speed-ups that pay on this hardware to `net` (in place; returns it): relu_squared MLPs get
    fast_relu_squared; on a CPU under bf16 autocast, attention formulas run in float32. Same numbers."""
    if device_type == 'cuda':
        no_attention_plans_per_shape()
    cpu_autocast = device_type == 'cpu' and dtype != 'float32'
    for module in net.modules():
        if isinstance(module, model.MLP) and module.activation is model.relu_squared:
            module.activation = fast_relu_squared
        if isinstance(module, model.Attention) and cpu_autocast and not isinstance(module.formula, Float32Attention):
            module.formula = Float32Attention(module.formula)
    return net
