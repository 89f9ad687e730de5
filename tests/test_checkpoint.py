"""checkpoint.py: how a checkpoint is read back."""
import pytest
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


def test_a_checkpoint_of_the_earlier_version_loads_when_it_used_the_removed_options_defaults(tmp_path):
    """Written before n_kv_head, rope_theta, tie_embeddings, share_embeddings and rdrop were removed and the
    masked-LM head's `decoder` became `out_proj`: it loads, with the same weights; a removed option at
    another value than its default is a one-line error."""
    from errors import UserError
    from model import Encoder, EncoderConfig
    torch.manual_seed(0)
    model = Encoder(EncoderConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=8))
    state = {name.replace('mlm_head.out_proj.', 'mlm_head.decoder.'): w for name, w in model.state_dict().items()}
    old_args = {**vars(model.config), 'n_kv_head': 0, 'rope_theta': 10000.0, 'tie_embeddings': True, 'rdrop': 0.5}
    checkpoint.save_checkpoint({'model': state, 'model_args': old_args, 'iter_num': 3, 'model_type': 'encoder'},
                               str(tmp_path))
    loaded = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(str(tmp_path)))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    checkpoint.save_checkpoint({'model': state, 'model_args': {**old_args, 'n_kv_head': 1}, 'iter_num': 3,
                                'model_type': 'encoder'}, str(tmp_path))
    with pytest.raises(UserError, match='trained with n_kv_head=1, an option this version no longer has'):
        checkpoint.load_checkpoint(str(tmp_path))
