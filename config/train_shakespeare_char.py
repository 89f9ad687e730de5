# A baby GPT on tiny Shakespeare, characters: nanoGPT's recipe, unchanged, so its commands give the same results here.
# On one GPU: python train.py config/train_shakespeare_char.py (on a CPU config/train_shakespeare_char_cpu.py is faster)
out_dir = 'out-shakespeare-char'
eval_interval = 250  # frequent, because this small dataset overfits
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # keep the best validation loss
wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # context of up to 256 previous characters
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
bias = False
learning_rate = 1e-3  # small networks can take a higher rate
max_iters = 5000
lr_decay_iters = 5000  # usually max_iters
min_lr = 1e-4  # usually learning_rate / 10
beta2 = 0.99  # a bit larger, because each step sees few tokens
warmup_iters = 100
compile = True  # on a GPU; add --compile=False --device=cpu on a laptop
