"""checkpoint.py: how a checkpoint is read back."""
import torch

import checkpoint


def test_a_checkpoint_is_memory_mapped_not_read_whole(tmp_path, monkeypatch):
    """Every rank of a resumed run loads the checkpoint: mapped, the ranks share the page cache
    instead of each holding the whole file (GPT-2 XL with AdamW state: ~18 GB a rank)."""
    state = {'model': {'w': torch.randn(4, 4)}, 'model_args': {}, 'iter_num': 3}
    checkpoint.save_checkpoint(state, tmp_path)
    calls = []
    load = torch.load
    monkeypatch.setattr(torch, 'load', lambda *args, **kwargs: calls.append(kwargs) or load(*args, **kwargs))
    loaded = checkpoint.load_checkpoint(tmp_path)
    assert calls and calls[0].get('mmap') is True and calls[0].get('weights_only') is True
    assert torch.equal(loaded['model']['w'], state['model']['w']) and loaded['iter_num'] == 3
