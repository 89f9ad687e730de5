"""Stepping the optimizers without waiting for the device (NonFiniteSteps), and restoring their state."""

import torch
import torch.distributed as dist

from errors import UserError


class NonFiniteSteps:
    """A step whose loss or gradients are not finite (NaN, inf) is skipped rather than ruin the weights;
    max_skipped_steps in a row stop the run. Checks and counts stay on the device, so no step waits to learn if it
    was finite: fused AdamW skips on the device, given the flag as `found_inf` (as float16's GradScaler sets it);
    Muon and unfused AdamW (MPS) read it, one sync a step. The counts are read with the log line: a diverged run stops
    there. float16's scaler skips overflowing steps itself (how it finds its scale): only a non-finite loss counts."""

    def __init__(self, device, scaler, limit):
        self.scaler, self.limit, self.skipped = scaler, limit, 0
        self.counts = torch.zeros(2, device=device)  # [skipped since the last read, bad steps in a row]

    def step(self, optimizers, grad_norm, loss_sum):
        """Step each optimizer unless the step is not finite; count it."""
        skip = (~torch.isfinite(grad_norm)).float()
        bad = (~torch.isfinite(loss_sum)).float() if self.scaler.is_enabled() else skip
        self.counts = torch.stack([self.counts[0] + bad, (self.counts[1] + bad) * bad])
        skip_on_host = None
        for opt in optimizers:
            if self.scaler.is_enabled():  # the scaler checks the gradients itself, NaNs included
                self.scaler.step(opt)
            elif getattr(opt, '_step_supports_amp_scaling', False):  # fused: reads found_inf and grad_scale
                opt.found_inf, opt.grad_scale = skip, None
                try:
                    opt.step()
                finally:
                    del opt.found_inf, opt.grad_scale
            else:
                skip_on_host = bool(skip.item()) if skip_on_host is None else skip_on_host
                if not skip_on_host:
                    opt.step()

    def read(self):
        """The counts as a tensor, for the caller to read (the most over the ranks); the first is reset."""
        counts = self.counts.clone()
        if dist.is_initialized():
            dist.all_reduce(counts, op=dist.ReduceOp.MAX)
        self.counts[0] = 0
        return counts

    def report(self, new, in_a_row, iter_num, out_dir, log):
        """The host's side, with the counts as read: a line, and the stop of a diverged run."""
        new, in_a_row = int(new), int(in_a_row)
        if new:
            self.skipped += new
            log(f"iter {iter_num}: non-finite gradient norm, {'step skipped' if new == 1 else f'{new} steps skipped'} "
                f"({self.skipped} so far)")
        if in_a_row >= self.limit:
            raise UserError(f"training diverged: {in_a_row} non-finite steps in a row at iteration {iter_num}; the "
                            f"last checkpoint in {out_dir} is kept. Lower the learning_rate or resume from it")


def restore_optimizers(optimizers, checkpoint, fsdp, log):
    """The optimizers' state from a checkpoint, on this device's fused kernels (keep_fused)."""
    if fsdp and 'dcp' in checkpoint:  # FSDP has loaded it with the weights, sharded (load_sharded)
        return
    states = checkpoint.get('optimizer', [])
    states = states if isinstance(states, list) else [states]  # nanoGPT saved one dict
    if states and (fsdp or len(states) != len(optimizers)):  # FSDP from a ckpt.pt: that state is not sharded
        log("the checkpoint's optimizer differs from this run's: its state starts fresh")
        return
    for opt, state in zip(optimizers, states):
        opt.load_state_dict(state)
        keep_fused(opt)


def keep_fused(optimizer):
    """After load_state_dict: the fused kernels as this device decided them, not as the saved run's did (a
    checkpoint from MPS would resume unfused on CUDA, and fail the fused step that float16's scaler expects)."""
    fused = optimizer.defaults.get('fused')
    if fused is None:  # an optimizer without fused kernels (Muon)
        return
    for group in optimizer.param_groups:
        group['fused'] = fused
        for p in group['params'] if fused else ():  # the fused step keeps the step counts on the parameters' device
            step = optimizer.state.get(p, {}).get('step')
            if torch.is_tensor(step):
                optimizer.state[p]['step'] = step.to(p.device, torch.float32)
