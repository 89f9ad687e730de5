# finetune_shakespeare.py through LoRA: rank-8 adapters of attention and MLP train (9.8M of 1.56B weights, 0.63%;
# AdamW's state 79 MB, not 12.5 GB), the rest frozen. Not run yet (GPU needed); CPU comparison: docs/experiments.md
#   python prepare/shakespeare.py && python train.py config/finetune_shakespeare_lora.py
#   python sample.py --out_dir=out-shakespeare-lora  # base + adapters; export.py merges them into a GPT-2
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
activation_checkpointing = 'block'  # 1,024 tokens through 48 blocks: their activations recomputed, not kept
always_save_checkpoint = False  # only when the validation loss improves
batch_size = 1
gradient_accumulation_steps = 32  # x 1 sequence x 1024 tokens = 32,768 tokens per step: ~9.2 steps an epoch
max_iters = 20
learning_rate = 3e-4  # constant; adapters take a larger rate than whole-model fine-tuning's 3e-5
decay_lr = False
beta2 = 0.95
dropout = 0.0
compile = True
