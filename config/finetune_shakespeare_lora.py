# LoRA twin of finetune_shakespeare.py: GPT-2 XL on tiny Shakespeare (BPE tokens) through rank-8 adapters of
# attention and MLP (9.8M of its 1.56B weights trained, 0.63%; AdamW's state 79 MB instead of 12.5 GB). Then:
#   python prepare/shakespeare.py && python train.py config/finetune_shakespeare_lora.py
#   python sample.py --out_dir=out-shakespeare-lora  # base + adapters; export.py merges them into GPT-2
# Not run yet (it needs a GPU and the weights); the CPU comparison with full fine-tuning: docs/experiments.md.
import time

out_dir = 'out-shakespeare-lora'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-lora-' + str(time.time())

dataset = 'shakespeare'
init_from = 'gpt2-xl'  # the base: frozen; the checkpoint records its name and a hash of its weights
block_size = 1024
lora_rank = 8
lora_alpha = 16.0
lora_targets = 'attn+mlp'
activation_checkpointing = 'block'  # the activations of 1,024 tokens through 48 blocks: recomputed, not kept

always_save_checkpoint = False  # only when the validation loss improves

# 1 sequence x 32 micro-steps x 1024 tokens = 32,768 tokens per step;
# shakespeare has 301,966 training tokens, so an epoch is ~9.2 steps
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

learning_rate = 3e-4  # constant; adapters take a larger rate than whole-model fine-tuning's 3e-5
decay_lr = False
beta2 = 0.95
dropout = 0.0
compile = True
