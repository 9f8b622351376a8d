r"""RMT, RMT-R, ARMT and a full-attention baseline trained on BABILong with a curriculum over
segment counts.

    python -m launch.train --config=configs/rmt_babilong.py:small,qa1 --workdir=/tmp/rmt_qa1
    python -m launch.train --config=configs/rmt_babilong.py:gpt2_small,qa1,retrieval \
        --workdir=gs://BUCKET/rmt_r_qa1 --config.train.batch_size=64

`gpt2_small` is the paper's recipe: GPT-2 small (its tokenizer, 50257 tokens, 1024 positions,
segments of 512 + 16 memory tokens) starting from the pretrained weights, a local Hugging Face
checkpoint folder (`config.json` + `model.safetensors` or `pytorch_model.bin`) or a hub name:

    python -m launch.train --config=configs/rmt_babilong.py:gpt2_small,qa1 \
        --config.model.init_from=/path/to/gpt2 --workdir=/tmp/rmt_gpt2_qa1

(A downloaded GPT-2 folder also holds the tokenizer: `--config.data.tokenizer=gpt2:/path/to/gpt2`.)
A checkpoint of another shape, vocabulary or architecture stops with an `error:` line before
anything is compiled or written. `init_from` may also name one of our own models (a training
workdir or an exported model, `rmt_jax/warm_start.py`): the shared parameters are copied, so
an RMT's backbone can start RMT-R, ARMT or the full-attention baseline.

The argument is a comma-separated list: one size (a name in `rmt_jax.core.config.PRESETS`, the
project's one table of sizes: `smoke`, `quick`, `tiny`, `small`, `gpt2_small`, ...), the
tasks to train on (any of qa1..qa5, several allowed; default qa1), the memory (`retrieval` or
`rmt_r` for RMT-R, `armt` for the associative memory, `full` for no memory: the backbone over
one window as long as the longest stage; RMT when none is named), and `synthetic` for
random-token batches of the same shapes (tests and throughput, no data needed):

    python -m launch.train --config=configs/rmt_babilong.py:smoke,synthetic --workdir=/tmp/rmt_t

The curriculum advances every `stage_steps` steps by default; `--config.curriculum.advance_on=
heldout` trains each stage until a held-out set's exact match stops improving (early stopping,
as the official RMT fine-tuning does) and starts the next stage from the best state.

Any field can be overridden on the command line (`--config.optim.learning_rate=3e-4`); the
config is locked, so a misspelt field is an error.
"""

from __future__ import annotations

import ml_collections

from rmt_jax.core.config import PRESETS

# The model sizes: the project's one table (rmt_jax.core.config.PRESETS). `smoke` trains in
# seconds (tests), `quick` is the CPU quickstart's model.
SIZES = tuple(PRESETS)
TASK_CHOICES = ("qa1", "qa2", "qa3", "qa4", "qa5")
# Every variant that tests/test_configs.py loads and builds.
VARIANTS = (
    "smoke,synthetic", "smoke,synthetic,retrieval", "quick,qa1", "quick,qa1,retrieval",
    "tiny,qa1",
    *(f"small,{t}" for t in TASK_CHOICES), *(f"small,{t},retrieval" for t in TASK_CHOICES),
    "small,qa1,qa2,qa3,qa4,qa5", "gpt2_small,qa1", "gpt2_small,qa1,retrieval",
    "smoke,synthetic,armt", "smoke,synthetic,full", "quick,qa1,armt", "quick,qa1,full",
    "small,qa1,armt", "small,qa1,full", "gpt2_small,qa1,armt",
)


# config parts naming the memory (rmt_jax.core.config.MEMORIES); no part: RMT
MEMORY_PARTS = {"retrieval": "rmt_r", "rmt_r": "rmt_r", "armt": "armt", "full": "none"}


def parse_arg(arg: str) -> tuple[str, tuple[str, ...], str, bool]:
    """'small,qa1,qa2,retrieval' -> ('small', ('qa1', 'qa2'), 'rmt_r', False)."""
    size, tasks, memory, synthetic = "small", [], "rmt", False
    for part in (p.strip() for p in (arg or "").split(",") if p.strip()):
        if part in SIZES:
            size = part
        elif part in TASK_CHOICES:
            tasks.append(part)
        elif part in MEMORY_PARTS:
            memory = MEMORY_PARTS[part]
        elif part == "synthetic":
            synthetic = True
        else:
            raise ValueError(
                f"unknown config part {part!r}: expected a size ({', '.join(SIZES)}), tasks "
                f"({', '.join(TASK_CHOICES)}), a memory ({', '.join(MEMORY_PARTS)}; none: RMT) "
                "or 'synthetic'"
            )
    return size, tuple(tasks) or ("qa1",), memory, synthetic


def get_config(arg: str = "small,qa1") -> ml_collections.ConfigDict:
    size, tasks, memory, synthetic = parse_arg(arg)
    retrieval = memory == "rmt_r"
    preset = PRESETS[size]
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict()
    config.model.layers = preset.layers  # transformer blocks
    config.model.d_model = preset.d_model  # residual width
    config.model.heads = preset.heads  # attention heads (divide d_model)
    config.model.vocab_size = 0  # 0: the tokenizer's vocabulary size
    config.model.segment_len = preset.segment_len  # context tokens per segment
    # memory vectors carried between segments (ARMT: written in every segment; none: 0)
    config.model.mem_tokens = preset.mem_tokens if memory != "none" else 0
    # learned positions (GPT-2's 1024 for gpt2_small: a segment needs 512 + 3 * 16 of them)
    config.model.max_positions = preset.max_positions
    config.model.param_dtype = "float32"  # parameter storage: float32 | bfloat16
    config.model.dtype = "float32" if size != "gpt2_small" else "bfloat16"  # compute dtype
    # 'rmt' | 'rmt_r' (self-retrieval over past memory states) | 'armt' (associative memory
    # in every layer) | 'none' (the backbone alone over one window: the full-attention baseline)
    config.model.memory = memory
    # ARMT's key width (the published 64 for gpt2_small, else d/4); 0 for the other memories
    d_mem = 64 if size == "gpt2_small" else max(1, preset.d_model // 4)
    config.model.d_mem = d_mem if memory == "armt" else 0
    config.model.dropout = 0.0  # backbone dropout
    # dropout inside RMT-R's retrieval block (unset for the other memories)
    config.model.retrieval_dropout = (0.1 if retrieval
                                      else ml_collections.config_dict.placeholder(float))
    # RMT-R's retrieval block: 'official' (the published code's) | 'shared_norm' (unset otherwise)
    config.model.retrieval_variant = (
        "official" if retrieval else ml_collections.config_dict.placeholder(str))
    config.model.remat_policy = "none" if size != "gpt2_small" else "dots_saveable"
    config.model.scan_unroll = 1  # segments per iteration of the scan loop (1: no unrolling)
    # back-propagate through the last k context segments (earlier ones run forward only); 0 = all
    config.model.bptt_segments = 0
    config.model.attention_impl = ""  # '': 'einsum' on a CPU, else JAX's; 'cudnn' on NVIDIA GPUs
    # queries per attention block in windows longer than this (0: whole windows); the
    # full-attention baseline's windows of thousands of tokens need blocks on a CPU
    config.model.attention_chunk = 512 if memory == "none" else 0
    # 'in_context': question and answer end the last context segment (the official fine-tuning);
    # 'separate': an extra answer segment reads them after the context (rmt_jax.core.answer)
    config.model.answer_mode = "in_context"
    # 'learned' (GPT-2's embeddings) | 'alibi' (a recency bias in attention) | 'rope'
    config.model.positions = "learned"
    # learned positions of their own for the write tokens ('own', ARMT as its reference code
    # runs GPT-2) or the positions after the tokens ('follow'); only with learned positions
    config.model.write_positions = "own" if memory == "armt" else "follow"
    # std of fresh weights: 0.02 is GPT-2's (gpt2_small loads GPT-2's weights anyway)
    config.model.init_std = 0.02
    # GPT-2's output projections at init_std / sqrt(2 layers); False: at init_std
    config.model.scaled_residual_init = True
    # the LM head is the token embedding (GPT-2's tie); False: a [vocab, d] head of its own
    config.model.tied_head = True
    # Canon layers (rmt_jax.core.config.ModelConfig.canon_kernel): a causal depthwise convolution
    # of this many taps before every attention and MLP, starting as the identity; 0: off
    config.model.canon_kernel = 0
    # Weights to start from: a Hugging Face GPT-2 checkpoint for the backbone (folder or hub
    # name, rmt_jax.pretrained), or one of our models (a training workdir or an exported
    # model, any memory: rmt_jax.warm_start); checked at every start, loaded on a fresh one
    # only; '' = random initialisation.
    config.model.init_from = ""

    config.data = ml_collections.ConfigDict()
    config.data.tasks = ",".join(tasks)  # tasks mixed in every batch
    config.data.babi_source = "generated"  # 'generated' (fresh stories) or 'files'
    config.data.babi_synonyms = False  # generated stories: also verbs bAbI never uses
    # generated training stories: the chance a question asks about one of the last two
    # statements (None: bAbI's own, 0.6 for qa1; 0.0: any person alike). Held-out and test
    # questions keep bAbI's.
    config.data.question_recency = ml_collections.config_dict.placeholder(float)
    config.data.babi_dir = "../shared/data/babi"  # bAbI files (for 'files' and evaluation)
    config.data.haystack_dir = "../shared/data/haystack"  # books for the background
    # How samples are made: the project's legacy options, named (babilong_tfds.compose.Recipe;
    # the dataset builder's defaults are the official generator's: 'gpt2', 'punkt',
    # 'official', 'lines', 'exact').
    # the shipped sentencepiece model; gpt2_small reads GPT-2's BPE (its vocabulary, 50257)
    config.data.tokenizer = ("gpt2:../shared/data/gpt2_tokenizer" if size == "gpt2_small"
                             else "sentencepiece")
    config.data.splitter = "blingfire"  # background sentences: 'blingfire' | 'punkt'
    config.data.length_table = "pow2"  # evaluation lengths: 'pow2' (1k = 1,024) | 'official'
    config.data.story_filter = "tokens"  # evaluation filter: fact tokens <= L/8 | 'lines'
    config.data.fill = "whole_sentences"  # whole sentences within tolerance | 'exact'
    # question tokens (longer ones are cut from the left): every bAbI question fits 12, in
    # both tokenizers
    config.data.max_question_len = 12
    config.data.max_answer_len = 4  # answer tokens + end of answer (qa1..qa5 need 3 at most)
    config.data.worker_count = 0  # grain worker processes (0: in the main process)
    config.data.seed = 0  # the data stream depends on this seed and the step alone
    config.data.synthetic = synthetic  # random-token batches (copy the first token): no files

    config.curriculum = ml_collections.ConfigDict()
    config.curriculum.segments = (1, 2, 4, 6, 8, 16, 32)  # segment counts, one per stage
    config.curriculum.stage_steps = 2000  # steps per stage (the last stage runs to the end)
    config.curriculum.advance_accuracy = 0.0  # advance early once train accuracy passes it (0: off)
    config.curriculum.mix_shorter = True  # draw each sample's segment count from 1..stage's
    # with mix_shorter: one count per batch, the batch only that wide (about half the compute
    # of a many-segment stage; each width compiles once)
    config.curriculum.same_length_batches = False
    config.curriculum.accuracy_decay = 0.98  # EMA decay of the accuracy compared to that
    # 'steps': the above; 'heldout': each stage trains until the exact match on a held-out set
    # of generated stories at its lengths stops improving, then the next starts from its best
    # state (rmt_jax.curriculum, rmt_jax.early_stopping); the fields below are for 'heldout'
    config.curriculum.advance_on = "steps"
    config.curriculum.eval_every = 200  # steps of a stage between held-out evaluations
    config.curriculum.patience = 5  # evaluations without improvement that end a stage
    config.curriculum.min_delta = 0.0  # an improvement beats the stage's best by more than this
    config.curriculum.heldout_samples = 64  # samples in each stage's held-out set
    config.curriculum.max_stage_steps = 5000  # most steps of a stage
    # share of every batch drawn at the earlier stages' lengths (0: off; with mix_shorter=False)
    config.curriculum.mixed_length_ratio = 0.0
    # one per stage, for simulated stories: each ends after at most this many questions (qa1
    # asks one every two statements: 1 gives two-fact stories, the name lookup without the
    # recency); 0 for the tasks' own lengths; () for none (rmt_jax.curriculum)
    config.curriculum.story_questions = ()
    # share of the batches of every stage of whole segments drawn as bare stories (0k, one
    # segment): the plain lookup kept in training past the bare stages (0: off)
    config.curriculum.bare_share = 0.0
    # 'in_context': a stage of k segments is k segments in all, the question and answer slots
    # (max_question_len + max_answer_len tokens) ending the last, as the official code counts
    # them; False: k segments of context, then the question and answer in one more
    # (set below: segments too short to hold the question, as smoke's, keep the extra one)
    config.curriculum.whole_segments = True

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 5e-5 if retrieval else 1e-4  # peak learning rate
    config.optim.warmup_steps = 500  # linear warm-up
    config.optim.schedule = "cosine"  # decay after warm-up: cosine | linear | constant
    config.optim.end_lr_fraction = 0.1  # final learning rate as a fraction of the peak
    # the last updates before train.num_steps over which the rate falls linearly to 0 (0: none);
    # on resume, with a new num_steps: --allow_config_change=train.num_steps,optim.cooldown_steps
    config.optim.cooldown_steps = 0
    config.optim.weight_decay = 0.01  # AdamW decoupled weight decay
    config.optim.grad_clip = 1.0  # global-norm clipping
    config.optim.b1 = 0.9
    config.optim.b2 = 0.99
    # a factor on the learning rate per curriculum stage, one per curriculum.segments entry
    # (): 1 in every stage
    config.optim.stage_lr_scales = ()

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64  # global batch, split over the data axis
    config.train.num_steps = 20_000  # total steps
    config.train.log_every = 100  # steps between metric writes
    config.train.checkpoint_every = 1000  # steps between checkpoints
    config.train.keep_checkpoints = 3  # newest checkpoints kept (the best is kept apart)
    config.train.async_checkpoint = True  # write checkpoints in the background
    config.train.seed = 0  # parameter init and dropout
    config.train.answer_rows = 16  # train-batch rows answered greedily at each log step (0: off)
    # the batch's gradient accumulated over this many slices (memory of one slice, same step)
    config.train.microbatches = 1

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # devices on the data axis (-1: all that the model axis leaves)
    config.mesh.model = 1  # devices on the model (tensor-parallel) axis

    config.eval = ml_collections.ConfigDict()
    config.eval.every = 2000  # steps between evaluations during training (0: off)
    config.eval.lengths = "0k,1k,2k,4k"  # lengths evaluated during and after training
    config.eval.num_samples = 100  # samples per task and length
    config.eval.batch_size = 32
    config.eval.source = "files"  # 'files': the original bAbI test questions; 'generated'

    if synthetic:
        config.model.vocab_size = 64  # no tokenizer: a small vocabulary of random tokens
        config.data.max_question_len = 4
        config.data.max_answer_len = 2  # the copied token + end of answer
    if size in ("test", "smoke"):  # seconds on a CPU: for tests and smoke runs
        config.curriculum.segments = (1, 2, 4)
        config.curriculum.stage_steps = 10
        config.optim.learning_rate = 3e-3
        config.optim.warmup_steps = 5
        config.train.batch_size = 8
        config.train.num_steps = 40
        config.train.log_every = 10
        config.train.checkpoint_every = 10
        config.train.answer_rows = 4
        config.eval.every = 20
        config.eval.lengths = "0k"
        config.eval.num_samples = 16
        config.eval.batch_size = 8
    config.curriculum.whole_segments = (
        preset.segment_len > config.data.max_question_len + config.data.max_answer_len)
    if memory == "none":  # one window holds the longest stage (GPT-2: its 1024 positions)
        config.model.max_positions = (1024 if size == "gpt2_small" else max(
            preset.max_positions, max(config.curriculum.segments) * preset.segment_len))
        config.eval.batch_size = min(config.eval.batch_size, 8)  # [b, h, t, t] attention
    return config.lock()
