# GPT-2 XL finetuned on tiny Shakespeare: python prepare/shakespeare.py && python train.py config/finetune_shakespeare.py
import time
out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())
dataset = 'shakespeare'
init_from = 'gpt2-xl'  # the largest GPT-2
block_size = 1024
always_save_checkpoint = False  # only when the validation loss improves
batch_size = 1
gradient_accumulation_steps = 32  # x 1 sequence x 1024 tokens = 32,768 tokens per step: ~9.2 steps an epoch
max_iters = 20
learning_rate = 3e-5  # constant
decay_lr = False
beta2 = 0.95
dropout = 0.0
compile = True
