"""device.py: the hardware choices and the speed-ups, each checked against the plain code."""
import copy
import platform

import pytest
import torch
import torch.nn.functional as F

import device
import model
from generate import KVCache, sample_rows
from model import GPT, Encoder, EncoderConfig, GPTConfig, Seq2SeqConfig, Seq2SeqTransformer

VOCAB = 32


def tiny_gpt(**options):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=4, n_embd=32, **options))


def random_tokens(rows, length, seed=1):
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def loss_and_grads(model, x, y, dtype='float32'):
    model.zero_grad(set_to_none=True)
    with device.autocast('cpu', dtype):
        _, loss = model(x, y)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


# ---------------------------------------------------------------------------
# Speed-ups give the plain code's numbers


def test_relu_squared_has_the_gradient_of_its_definition():
    x = torch.randn(4, 7, dtype=torch.float64)
    x = (x + 0.1 * x.sign()).requires_grad_()  # keep away from the kink at 0
    fast = device.fast_relu_squared
    torch.testing.assert_close(fast(x), model.relu_squared(x))
    torch.testing.assert_close(fast(x), torch.relu(x) ** 2)
    assert torch.autograd.gradcheck(fast, (x,))
    assert (fast(x) == 0).any() and (fast(x) > 0).any()


@pytest.mark.parametrize('mlp', ['relu2', 'gelu', 'swiglu'])
def test_speed_ups_leave_a_float32_model_bit_identical(mlp):
    plain = tiny_gpt(mlp=mlp, pos_emb='rope', qk_norm=True)
    fast = device.speed_up(copy.deepcopy(plain), 'cpu', 'float32')
    if mlp == 'relu2':
        assert all(block.mlp.activation is device.fast_relu_squared for block in fast.transformer.h)
    x = random_tokens(3, 16)
    y = random_tokens(3, 16, seed=2)
    loss, grads = loss_and_grads(plain, x, y)
    fast_loss, fast_grads = loss_and_grads(fast, x, y)
    assert torch.equal(loss, fast_loss)
    assert all(torch.equal(grads[name], fast_grads[name]) for name in grads)


# decided here, not by packs_weights: a packs_weights that wrongly said no would skip the tests meant to catch it
X86_WITH_ONEDNN = platform.machine().lower() in ('x86_64', 'amd64') and torch.backends.mkldnn.is_available()
packs = pytest.mark.skipif(not X86_WITH_ONEDNN, reason="weights are packed on x86 CPUs with oneDNN only")


def packed_copy(model):
    with torch.no_grad():  # biases start at zero: make them count
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.bias is not None and not m.bias.any():
                m.bias.normal_()
    packed = device.pack_for_inference(copy.deepcopy(model).eval(), 'cpu', 'float32')
    assert not any(isinstance(m, torch.nn.Linear) for m in packed.modules())
    return packed


@packs
@pytest.mark.parametrize('options', [dict(bias=True), dict(bias=False, mlp='swiglu', pos_emb='rope')])
def test_packed_gpt_gives_the_plain_logits_and_samples(options):
    plain = tiny_gpt(**options).eval()
    packed = packed_copy(plain)
    assert torch.equal(packed.transformer.wte.weight, plain.transformer.wte.weight)  # the tied embedding keeps it
    x = random_tokens(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(packed(x, targets=x)[0], plain(x, targets=x)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed(x)[0], plain(x)[0], atol=1e-5, rtol=1e-5)  # the last position only

    def samples(model):  # batched rows, each with its own generator, through the KV cache
        generators = [torch.Generator().manual_seed(i) for i in range(3)]
        return list(sample_rows(model, x[:1, :4], 3, 12, 0.8, None, None, generators))
    assert samples(packed) == samples(plain)
    assert torch.equal(packed.generate(x[:1, :4], 12, temperature=0.0), plain.generate(x[:1, :4], 12, temperature=0.0))


@packs
def test_packed_seq2seq_and_encoder_give_the_plain_outputs():
    torch.manual_seed(0)
    seq2seq = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=16, bias=True)).eval()
    src = random_tokens(2, 7).clamp(min=3)
    tgt = random_tokens(2, 5).clamp(min=3)
    with torch.no_grad():
        torch.testing.assert_close(packed_copy(seq2seq)(src, tgt)[0], seq2seq(src, tgt)[0], atol=1e-5, rtol=1e-5)
    assert packed_copy(seq2seq).generate(src, beam_size=2) == seq2seq.generate(src, beam_size=2)
    for n_classes in (0, 3):
        encoder = Encoder(EncoderConfig(vocab_size=VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16,
                                        n_classes=n_classes)).eval()
        with torch.no_grad():
            torch.testing.assert_close(packed_copy(encoder)(src)[0], encoder(src)[0], atol=1e-5, rtol=1e-5)


@packs
@pytest.mark.parametrize('bias', [True, False])
def test_a_packed_linear_is_the_linear_for_inputs_of_any_shape_and_layout(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 24, bias=bias)
    packed = device.PackedLinear(linear)
    for x in (torch.randn(16), torch.randn(5, 16), torch.randn(2, 3, 16), torch.randn(4, 3, 16).transpose(0, 1)):
        with torch.no_grad():
            torch.testing.assert_close(packed(x), linear(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('device_type, dtype', [('cuda', 'float32'), ('cpu', 'bfloat16'), ('mps', 'float32')])
def test_weights_are_packed_only_for_float32_on_a_cpu(device_type, dtype):
    model = device.pack_for_inference(tiny_gpt(), device_type, dtype)
    assert not any(isinstance(m, device.PackedLinear) for m in model.modules())


def test_float32_attention_under_cpu_autocast_is_the_plain_attention_of_float32_heads():
    model = device.speed_up(tiny_gpt(qk_norm=False), 'cpu', 'bfloat16')
    formula = model.transformer.h[0].attn.formula
    assert type(formula) is device.Float32Attention
    q, k, v = (torch.randn(2, 4, 8, 8).to(torch.bfloat16) for _ in range(3))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        fast = formula(q, k, v, is_causal=True)
    plain = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert fast.dtype == torch.float32 and torch.equal(fast, plain)
    # no autocast (sampling with bf16 weights): the plain attention in the weights' dtype
    assert torch.equal(formula(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_speed_up_for_cuda_turns_cudnn_attention_off_and_for_other_devices_keeps_it():
    """cuDNN's attention builds a plan per new shape: every step of generation has one (device.py)."""
    device.speed_up(tiny_gpt(), 'cpu', 'float32')
    assert torch.backends.cuda.cudnn_sdp_enabled()
    device.speed_up(tiny_gpt(), 'cuda', 'bfloat16')  # (the model stays where it is: only the switch matters)
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    # left off for the whole process, as after any CUDA test: the next test checks that conftest puts it back


def test_no_test_sees_the_cudnn_attention_setting_that_an_earlier_one_left():
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_speed_ups_are_applied_once_and_survive_a_deepcopy():
    model = device.speed_up(tiny_gpt(), 'cpu', 'bfloat16')
    device.speed_up(model, 'cpu', 'bfloat16')
    formula = model.transformer.h[0].attn.formula
    assert type(formula) is device.Float32Attention and formula.formula is F.scaled_dot_product_attention
    copied = copy.deepcopy(model)
    x = random_tokens(2, 8)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.equal(copied(x)[0], model(x)[0])


def test_seq2seq_speed_ups_reach_encoder_decoder_and_cross_attention():
    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=16, mlp='relu2'))
    device.speed_up(model, 'cpu', 'bfloat16')
    attentions = [model.encoder[0].attn, model.decoder[0].attn, model.decoder[0].cross_attn]
    assert all(type(a.formula) is device.Float32Attention for a in attentions)
    assert model.decoder[0].mlp.activation is device.fast_relu_squared


def muon_pair(seed=0):
    """Two copies of the same parameters (a tall, a wide and a square matrix) with the same gradients."""
    torch.manual_seed(seed)
    params = [torch.randn(*shape) for shape in [(48, 16), (16, 40), (24, 24)]]
    grads = [[torch.randn_like(p) for p in params] for _ in range(4)]
    return [torch.nn.Parameter(p.clone()) for p in params], [torch.nn.Parameter(p.clone()) for p in params], grads


def run_muon(optimizer, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        optimizer.step()


@pytest.mark.parametrize('adjust_lr_fn', ['match_rms_adamw', 'original', None])
def test_float32_muon_is_torchs_muon_with_float32_newton_schulz(monkeypatch, adjust_lr_fn):
    """Float32Muon makes torch.optim.Muon's steps exactly, once torch's own iterations run in float32;
    with torch's bf16 iterations it agrees to bf16 precision."""
    ours, theirs, grads = muon_pair()
    settings = dict(lr=0.02, weight_decay=0.1, momentum=0.9, adjust_lr_fn=adjust_lr_fn)
    run_muon(device.Float32Muon(ours, **settings), ours, grads)
    bf16_theirs = [torch.nn.Parameter(p.detach().clone()) for p in muon_pair()[1]]
    run_muon(torch.optim.Muon(bf16_theirs, **settings), bf16_theirs, grads)
    monkeypatch.setattr(torch.optim._muon, '_zeropower_via_newtonschulz',
                        lambda grad, coefficients, steps, eps: device.orthogonalised(grad, coefficients, steps, eps))
    run_muon(torch.optim.Muon(theirs, **settings), theirs, grads)
    for a, b, c in zip(ours, theirs, bf16_theirs):
        assert torch.equal(a, b)
        assert torch.allclose(a, c, atol=0.02 * 0.2 * 48 ** 0.5 * 4 * 0.02)  # a few % of the steps' size


def test_float32_muon_takes_over_torchs_muon_state():
    ours, theirs, grads = muon_pair()
    torch_muon = torch.optim.Muon(theirs, lr=0.02)
    run_muon(torch_muon, theirs, grads[:2])
    float32_muon = device.Float32Muon(ours, lr=0.02)
    float32_muon.load_state_dict(torch_muon.state_dict())  # a checkpoint written on another machine
    assert all(torch.equal(float32_muon.state[p]['momentum_buffer'], torch_muon.state[q]['momentum_buffer'])
               for p, q in zip(ours, theirs))


@pytest.mark.parametrize('has_bf16, device_type, expected', [(False, 'cpu', 'Float32Muon'), (True, 'cpu', 'Muon'),
                                                             (False, 'cuda', 'Muon')])
def test_float32_muon_only_on_cpus_without_bf16(monkeypatch, has_bf16, device_type, expected):
    monkeypatch.setattr(device, 'cpu_has_bf16', lambda: has_bf16)
    assert device.muon_class(device_type).__name__ == expected


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this build")
def test_one_token_kernels_switch_onednn_off_for_one_token_only_and_restore_it():
    assert torch.backends.mkldnn.enabled
    with device.one_token_kernels(torch.zeros(1, 1, dtype=torch.long)):
        assert not torch.backends.mkldnn.enabled
    with device.one_token_kernels(torch.zeros(2, 1, dtype=torch.long)):
        assert torch.backends.mkldnn.enabled  # a batch of rows: oneDNN's matmul is faster
    with pytest.raises(RuntimeError):
        with device.one_token_kernels(torch.zeros(1, 1, dtype=torch.long)):
            raise RuntimeError
    assert torch.backends.mkldnn.enabled


def test_bf16_one_token_steps_through_the_cache_match_the_full_forward():
    """What sample.py runs on a bf16 CPU: one token at a time, the matrix-vector kernels, the preallocated cache."""
    model = tiny_gpt().eval().to(torch.bfloat16)
    seq = random_tokens(1, 8)
    with torch.no_grad():
        full, _ = model(seq, targets=seq)
        cache = KVCache(max_len=8)
        for t in range(8):
            with device.one_token_kernels(seq[:, t:t + 1]):
                step, _ = model(seq[:, t:t + 1], cache=cache)
            torch.testing.assert_close(step[:, -1], full[:, t], atol=3e-2, rtol=3e-2)


# ---------------------------------------------------------------------------
# GPU choices, driven on a CPU with fake device queries


def fake_gpu(monkeypatch, capability, name='NVIDIA Tesla V100-SXM2-16GB'):
    """Make torch.cuda answer like a GPU of this compute capability, with torch's real rule for bf16:
    emulated below 8.0 (is_bf16_supported() says True there unless including_emulation=False)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: name)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported',
                        lambda including_emulation=True: including_emulation or capability >= (8, 0))


@pytest.mark.parametrize('capability, expected', [((7, 0), 'float16'), ((7, 5), 'float16'), ((8, 0), 'bfloat16'),
                                                  ((9, 0), 'bfloat16')])
def test_auto_dtype_is_bf16_only_where_the_gpu_has_it(monkeypatch, capability, expected):
    fake_gpu(monkeypatch, capability)
    assert device.training_dtype('auto', 'cuda') == expected  # V100, T4: fp16 with the gradient scaler
    assert device.inference_dtype('auto', 'cuda') == expected  # sampling: half-size weights either way
    assert device.training_dtype('float32', 'cuda') == 'float32'  # an explicit choice stands


def test_compile_is_supported_from_volta_on(monkeypatch):
    fake_gpu(monkeypatch, (6, 1))
    assert not device.compile_supported('cuda')
    fake_gpu(monkeypatch, (7, 0))
    assert device.compile_supported('cuda') and device.compile_supported('cpu')


def test_any_cuda_device_becomes_the_current_one(monkeypatch):
    """--device=cuda:1 without torchrun: RNG state, bf16 queries and allocations must mean GPU 1."""
    fake_gpu(monkeypatch, (9, 0))
    chosen = []

    def set_device(name):  # as torch's: a device without an index is refused
        if torch.device(name).index is None:
            raise ValueError(f'Expected a torch.device with a specified index or an integer, but got:{name}')
        chosen.append(name)
    monkeypatch.setattr(torch.cuda, 'set_device', set_device)
    assert device.resolve_device('cuda') == 'cuda' and chosen == []  # nanoGPT's --device=cuda: the current GPU
    assert device.resolve_device('cuda:1') == 'cuda:1' and chosen == ['cuda:1']


@pytest.mark.parametrize('name, flops', [
    ('NVIDIA H100 80GB HBM3', 989e12), ('NVIDIA H100 PCIe', 756e12), ('NVIDIA H100 NVL', 835e12),
    ('NVIDIA H200', 989e12), ('NVIDIA H200 NVL', 835e12),
    ('NVIDIA L40', 181e12), ('NVIDIA L40S', 362e12), ('NVIDIA L4', 121e12), ('NVIDIA A100-SXM4-80GB', 312e12),
    ('NVIDIA A10G', 70e12), ('NVIDIA A10', 125e12), ('Tesla T4', 65e12), ('NVIDIA GeForce RTX 4090', 165e12),
    ('NVIDIA RTX A1000', None), ('NVIDIA RTX A6000', None), ('NVIDIA B200', None),
])
def test_gpu_names_match_whole_model_names_only(name, flops):
    assert device.gpu_table_peak(name) == flops


def test_a_gpu_missing_from_the_table_is_measured_and_a_known_one_is_not(monkeypatch):
    measured = []
    monkeypatch.setattr(device, 'measured_peak_flops', lambda dev, dtype: measured.append((dev, dtype)) or 1e15)
    fake_gpu(monkeypatch, (9, 0), name='NVIDIA B200')
    assert device.peak_flops('cuda:1', torch.bfloat16) == 1e15
    assert measured == [(torch.device('cuda:1'), torch.bfloat16)]  # on that GPU, in the dtype asked
    fake_gpu(monkeypatch, (9, 0), name='NVIDIA H100 80GB HBM3')
    assert device.peak_flops('cuda', torch.bfloat16) == 989e12
    assert device.peak_flops('cuda', torch.float32) == 989e12 / 2  # TF32: half the bf16 rate
    assert len(measured) == 1


class MatmulSpy:
    """Records each matrix product's operand and the number of products done at each device sync;
    with `seconds`, a fake clock (device.time.perf_counter) advances that much per product."""

    def __init__(self, monkeypatch, seconds=None):
        self.operands, self.syncs, self.clock = [], [], 0.0
        real_matmul, durations = torch.Tensor.__matmul__, iter(seconds or [])

        def matmul(a, b):
            self.operands.append(a)
            self.clock += next(durations, 0.0)
            return real_matmul(a, b)
        def synchronize(dev, _real=device.synchronize):
            self.syncs.append(len(self.operands))
            _real(dev)
        monkeypatch.setattr(torch.Tensor, '__matmul__', matmul)
        monkeypatch.setattr(device, 'synchronize', synchronize)
        if seconds is not None:
            monkeypatch.setattr(device.time, 'perf_counter', lambda: self.clock)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_measured_peak_multiplies_random_data_and_leaves_the_global_rng_alone(monkeypatch, dtype):
    """Constant matrices multiply faster than real ones (on a GPU, ~10%): the peak must be measured on
    random ones, drawn without moving the random stream that a resumed run has just restored."""
    monkeypatch.setitem(device.PEAK_MATMULS, 'cpu', (64, 2))
    spy = MatmulSpy(monkeypatch)
    before = torch.get_rng_state()
    assert device.measured_peak_flops('cpu', dtype) > 0
    assert torch.equal(torch.get_rng_state(), before)
    a = spy.operands[0]
    assert a.shape == (64, 64) and a.dtype == dtype
    assert a.float().std() > 0.5  # N(0, 1), not a constant


def test_measured_peak_is_2n3_over_the_best_rounds_time_per_matmul(monkeypatch):
    """Four rounds of `repeats` products, a sync before each: the clock reads only finished work."""
    monkeypatch.setitem(device.PEAK_MATMULS, 'cpu', (32, 3))
    spy = MatmulSpy(monkeypatch, seconds=[4e-3] * 3 + [2e-3] * 3 + [3e-3] * 3 + [5e-3] * 3)  # a fake clock
    assert device.measured_peak_flops('cpu', torch.float32) == pytest.approx(2 * 32 ** 3 / 2e-3)
    assert spy.syncs == [0, 3, 6, 9] and len(spy.operands) == 12


def test_cpu_peak_is_measured_in_the_dtype_asked():
    assert device.peak_flops('cpu', torch.float32) > 1e8
