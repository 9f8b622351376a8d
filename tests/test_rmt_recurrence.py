"""The recurrence: scan == loop, truncated BPTT, empty segments, token padding, retrieval."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmt_jax import RMT, answer_logits, get_config, loop_segments, loss_fn, scan_segments

SEG = 8  # segment_len of the 'test' preset
# Tests check numbers, not speed: XLA's backend optimisations only cost compile time here.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def jit(fn, model):
    """`fn(model, *args)` compiled with the model's parameters as traced inputs."""
    graphdef, params = nnx.split(model)
    compiled = jax.jit(lambda p, *a: fn(nnx.merge(graphdef, p), *a),
                       compiler_options=FAST_COMPILE)
    return lambda *args: compiled(params, *args)


# the memory variants that carry state between segments, as config fields of the test preset
VARIANTS = {"rmt": {}, "rmt_r": {"memory": "rmt_r"}, "armt": {"memory": "armt", "d_mem": 8}}


def with_associations(model: RMT) -> RMT:
    """ARMT's W_v starts at zero (its memory says nothing at first) and the test preset's
    small weights make tiny keys: larger random ones, so the tests see the associations at
    work."""
    for i, layer in enumerate(model.associative or ()):
        for j, (w, std) in enumerate(((layer.wq, 0.5), (layer.wk, 0.5), (layer.wv, 0.3))):
            w[...] = std * jax.random.normal(jax.random.key(100 + 3 * i + j), w.shape)
    return model


def carried(state):
    """What a segment passes to the next: the memory, or ARMT's associative matrices."""
    return state.memory if state.assoc is None else state.assoc.matrix


@functools.cache
def make_model(**overrides) -> RMT:
    return with_associations(RMT(get_config("test", **overrides), rngs=nnx.Rngs(0)))


def random_tokens(shape, seed=0):
    return np.random.RandomState(seed).randint(1, 64, shape).astype(np.int32)


def rel_err(a, b) -> float:
    a = jnp.concatenate([x.ravel() for x in jax.tree.leaves(a)])
    b = jnp.concatenate([x.ravel() for x in jax.tree.leaves(b)])
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def objective(runner, context, mask=None, key=None, **kw):
    """A scalar that depends on every segment (answer log-likelihood), with the state as aux."""
    query = jnp.arange(6, dtype=jnp.int32)[None].repeat(context.shape[0], 0)

    def f(model):
        state, _ = runner(model, context, mask, key=key, **kw)
        k_ans = None if key is None else jax.random.fold_in(key, 99)
        logits = answer_logits(model, state, query, k_ans)
        return -jax.nn.log_softmax(logits)[:, :-1].mean() + (state.memory**2).mean(), state

    return f


def value_and_grad(f, model):
    """-> ((value, final state), grads)."""
    return jit(nnx.value_and_grad(f, has_aux=True), model)()


@pytest.mark.parametrize("memory", VARIANTS)
def test_scan_equals_loop_outputs_and_grads(memory, monkeypatch):
    """The scan (and the scan unrolled by 2 over 3 segments, not a multiple) gives the
    loop's outputs and gradients."""
    unrolls = []
    scan = jax.lax.scan

    def recording_scan(*args, **kwargs):
        unrolls.append(kwargs.get("unroll", 1))
        return scan(*args, **kwargs)

    monkeypatch.setattr(jax.lax, "scan", recording_scan)
    model = make_model(**VARIANTS[memory], dropout=0.1)
    context = random_tokens((2, 3 * SEG - 3))
    key = jax.random.key(1)
    (v_loop, loop_state), g_loop = value_and_grad(objective(loop_segments, context, key=key),
                                                  model)
    for unroll in (1, 2):
        unrolls.clear()
        (v_scan, scan_state), g_scan = value_and_grad(
            objective(scan_segments, context, key=key),
            make_model(**VARIANTS[memory], dropout=0.1, scan_unroll=unroll))
        assert unroll in unrolls  # the segment scan was unrolled as asked
        assert rel_err(scan_state, loop_state) <= 1e-5
        assert abs(float(v_scan - v_loop)) <= 1e-5 * abs(float(v_loop))
        assert rel_err(g_scan, g_loop) <= 1e-5
        assert rel_err(g_scan, jax.tree.map(jnp.zeros_like, g_loop)) > 0.5  # grads not zero


def test_dropout_key_changes_output_and_none_is_deterministic():
    model = make_model(dropout=0.1)
    context = random_tokens((1, 3 * SEG))
    run = jit(lambda m, k: scan_segments(m, context, key=k)[0].memory, model)
    a, b = run(jax.random.key(0)), run(jax.random.key(1))
    assert float(jnp.abs(a - b).max()) > 1e-4
    off = jit(lambda m: scan_segments(m, context)[0].memory, model)
    np.testing.assert_array_equal(off(), off())


def test_each_segment_gets_its_own_dropout_key(monkeypatch):
    """NNX's broadcast Rngs would reuse one mask per step; keys must differ by segment."""
    model = make_model(dropout=0.1)
    seen = []
    real = type(model).segment

    def spy(self, read, write, tokens, lengths, key=None, return_attention=False):
        seen.append(np.asarray(jax.random.key_data(key)).tobytes())
        return real(self, read, write, tokens, lengths, key, return_attention)

    monkeypatch.setattr(type(model), "segment", spy)
    loop_segments(model, random_tokens((1, 4 * SEG)), key=jax.random.key(0))
    assert len(seen) == 4 and len(set(seen)) == 4


def test_truncated_bptt_cuts_gradients_of_older_segments():
    model = make_model()
    context = random_tokens((2, 4 * SEG), seed=3)
    _, g_full = value_and_grad(objective(scan_segments, context, bptt_segments=None), model)
    _, g_all = value_and_grad(objective(scan_segments, context, bptt_segments=4), model)
    _, g_k1 = value_and_grad(objective(scan_segments, context, bptt_segments=1), model)
    assert rel_err(g_all, g_full) <= 1e-6  # k covering every segment is full BPTT
    assert float(jnp.abs(g_full["memory"][...]).max()) > 0
    # With k=1 the learned initial memory only reaches the loss through older segments.
    assert float(jnp.abs(g_k1["memory"][...]).max()) == 0.0

    # k=1 equals running the last segment from a constant memory computed by the first three.
    prefix_state, _ = jit(lambda m: scan_segments(m, context[:, : 3 * SEG]), model)()
    frozen = jax.tree.map(jax.lax.stop_gradient, prefix_state)
    _, g_ref = value_and_grad(
        objective(
            lambda m, c, mk, key: scan_segments(m, c, mk, state=frozen, key=key),
            context[:, 3 * SEG :],
        ),
        model,
    )
    assert rel_err(g_k1, g_ref) <= 1e-5
    assert rel_err(g_k1, g_full) > 1e-3  # truncation did change something


@pytest.mark.parametrize("memory", VARIANTS)
def test_truncated_scan_equals_loop_with_padding_in_front(memory):
    """The scan's forward-only head gives the loop's outputs and gradients (the loop cuts
    the gradient at the same segment with the parameters live before it), with dropout,
    and with one sample whose segments before the cut are all empty."""
    model = make_model(**VARIANTS[memory], dropout=0.1)
    context = random_tokens((2, 5 * SEG), seed=5)
    mask = np.ones(context.shape, bool)
    mask[1, : 3 * SEG + 2] = False  # sample 1: 2 real segments, padding in front
    key = jax.random.key(2)
    (v_loop, s_loop), g_loop = value_and_grad(
        objective(loop_segments, context, mask, key=key, bptt_segments=2), model)
    (v_scan, s_scan), g_scan = value_and_grad(
        objective(scan_segments, context, mask, key=key, bptt_segments=2), model)
    assert rel_err(s_scan, s_loop) <= 1e-5
    assert abs(float(v_scan - v_loop)) <= 1e-5 * abs(float(v_loop))
    assert rel_err(g_scan, g_loop) <= 1e-5
    (_, s_full), g_full = value_and_grad(
        objective(scan_segments, context, mask, key=key, bptt_segments=None), model)
    assert rel_err(s_scan, s_full) <= 1e-6  # truncation changes gradients only
    assert rel_err(g_scan, g_full) > 1e-3


def test_truncation_keeps_the_initial_memory_gradient_of_a_sample_padded_in_front():
    """A sample with no real token before the cut enters the back-propagated segments with
    the learned memory itself: with k covering its real segments, its gradients are full
    BPTT's."""
    model = make_model()
    context = random_tokens((1, 4 * SEG), seed=6)
    mask = np.ones(context.shape, bool)
    mask[:, : 2 * SEG] = False  # two empty segments, then two real ones
    _, g_full = value_and_grad(objective(scan_segments, context, mask, bptt_segments=None), model)
    _, g_k2 = value_and_grad(objective(scan_segments, context, mask, bptt_segments=2), model)
    assert float(jnp.abs(g_full["memory"][...]).max()) > 0
    assert rel_err(g_k2, g_full) <= 1e-6


def test_truncated_loss_counts_real_segments_of_contexts_padded_at_the_end():
    """The separate answer segment's contexts are padded at the end; k counts real
    segments: a row of 2 real segments in a 6-segment batch with k=2 gets full BPTT's
    gradients (a cut by position would leave its context none)."""
    context = np.zeros((1, 6 * SEG), np.int32)
    context[:, : 2 * SEG - 3] = random_tokens((1, 2 * SEG - 3), seed=8)
    batch = {"context": context, "context_mask": context > 0,
             "query": np.arange(1, 7, dtype=np.int32)[None],
             "loss_mask": np.array([[0, 0, 0, 1, 1, 1]], np.float32)}

    def grads(k):
        model = make_model(bptt_segments=k)
        return jit(lambda m: nnx.grad(lambda m: loss_fn(m, batch)[0])(m), model)()

    full, truncated = grads(None), grads(2)
    assert float(jnp.abs(full["memory"][...]).max()) > 0
    assert rel_err(truncated, full) <= 1e-6
    assert rel_err(grads(1), full) > 1e-3  # one real segment: the first is cut off


def test_truncated_scan_returns_attention_maps_in_the_input_order():
    """Segments moved for the cut come back in place: the maps of a context padded at the
    end equal the untruncated scan's at every real segment (an empty one's maps, over
    padding, depend on where it ran)."""
    model = make_model(attention_map_layers=(0,))
    context = random_tokens((2, 5 * SEG), seed=9)
    mask = np.ones(context.shape, bool)
    mask[0, 2 * SEG :] = False  # sample 0: 2 real segments, padding at the end

    def maps(k):
        run = jit(lambda m: scan_segments(m, context, mask, bptt_segments=k,
                                          return_attention=True)[1], model)
        return run()

    full, truncated = maps(None)["layer_0"], maps(2)["layer_0"]  # [S, B, h, T, T]
    assert truncated.shape == full.shape
    assert rel_err(truncated[:, 1], full[:, 1]) <= 1e-6  # sample 1: all real
    assert rel_err(truncated[:2, 0], full[:2, 0]) <= 1e-6  # sample 0's real segments


def test_truncated_head_runs_forward_only():
    """The segments before the cut appear once in the gradient's program (no backward scan
    over them), the back-propagated ones twice (forward and backward)."""
    model = make_model()
    context = random_tokens((2, 6 * SEG), seed=7)
    graphdef, params = nnx.split(model)

    def loss(p, k):
        return objective(scan_segments, context, bptt_segments=k)(nnx.merge(graphdef, p))[0]

    def scan_lengths(k):
        jaxpr = jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params, k)
        return sorted(e.params["length"] for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan")

    assert scan_lengths(None) == [6, 6]
    assert scan_lengths(2) == [2, 2, 4]


@pytest.mark.parametrize("memory", VARIANTS)
def test_empty_segments_leave_memory_unchanged(memory):
    model = make_model(**VARIANTS[memory])
    context = random_tokens((1, 3 * SEG), seed=4)
    # Same tokens with an empty segment inserted in the middle and two appended at the end.
    padded = np.zeros((1, 6 * SEG), np.int32)
    mask = np.zeros((1, 6 * SEG), bool)
    for src, dst in ((0, 0), (1, 2), (2, 3)):
        padded[:, dst * SEG : (dst + 1) * SEG] = context[:, src * SEG : (src + 1) * SEG]
        mask[:, dst * SEG : (dst + 1) * SEG] = True
    padded[~mask] = 7  # pad values must not matter

    def answer(model, context, mask):
        state, _ = scan_segments(model, context, mask)
        ones = jnp.ones((context.shape[0], 4), jnp.int32)
        return carried(state), answer_logits(model, state, ones)

    answer = jit(answer, model)
    mem_a, logits_a = answer(context, np.ones(context.shape, bool))
    mem_b, logits_b = answer(padded, mask)
    np.testing.assert_allclose(mem_b, mem_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits_b, logits_a, rtol=1e-5, atol=1e-5)
    # a batch whose rows have different segment counts gives each row its own answer
    both = np.concatenate([np.pad(context, ((0, 0), (0, 3 * SEG))), padded])
    both_mask = np.concatenate(
        [np.pad(np.ones_like(mask[:, : 3 * SEG]), ((0, 0), (0, 3 * SEG))), mask]
    )
    mem_ab, _ = answer(both, both_mask)
    np.testing.assert_allclose(mem_ab[0], mem_a[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mem_ab[1], mem_a[0], rtol=1e-5, atol=1e-6)
    # an extra *non-empty* segment does change the memory
    mask[:, SEG] = True
    mem_c, _ = answer(padded, mask)
    assert float(jnp.abs(mem_c - mem_a).max()) > 1e-4


def test_token_padding_is_invisible():
    model = make_model()
    run = jit(lambda m, c, mk: scan_segments(m, c, mk)[0].memory, model)
    context = random_tokens((2, 2 * SEG + 5), seed=5)  # not a whole number of segments
    ref = run(context, None)
    # explicit padding to 3 whole segments, pad values arbitrary
    padded = np.pad(context, ((0, 0), (0, SEG - 5)), constant_values=9)
    mask = np.pad(np.ones(context.shape, bool), ((0, 0), (0, SEG - 5)))
    np.testing.assert_allclose(run(padded, mask), ref, rtol=1e-5, atol=1e-6)
    # masked tokens anywhere inside a segment act as if removed from that segment:
    # segment 1 = [a0 a1 X X a2 a3 a4 a5] with X masked == [a0 .. a5 pad pad]
    a = context[:, SEG : SEG + 6]
    holes, hole_mask = padded.copy(), mask.copy()
    holes[:, SEG : 2 * SEG] = np.concatenate([a[:, :2], np.full((2, 2), 5), a[:, 2:]], axis=1)
    hole_mask[:, SEG + 2 : SEG + 4] = False
    short, short_mask = padded.copy(), mask.copy()
    short[:, SEG : 2 * SEG] = np.concatenate([a, np.zeros((2, 2), np.int32)], axis=1)
    short_mask[:, SEG + 6 : 2 * SEG] = False
    np.testing.assert_allclose(
        run(holes, hole_mask), run(short, short_mask), rtol=1e-5, atol=1e-6
    )
    # and the pad values really are ignored, while a real token change is not
    assert float(jnp.abs(run(padded + (~mask) * 3, mask) - ref).max()) < 1e-6
    changed = context.copy()
    changed[:, -1] += 1
    assert float(jnp.abs(run(changed, None) - ref).max()) > 1e-5


def test_retrieval_is_causal_in_outputs_and_gradients():
    model = make_model(memory="rmt_r")
    context = random_tokens((2, 5 * SEG), seed=6)
    later = context.copy()
    later[:, 3 * SEG :] = random_tokens((2, 2 * SEG), seed=7)  # perturb segments 4 and 5

    def early(model, context):
        def f(model):  # depends on the memories written by segments 1..3 only
            state, _ = scan_segments(model, context)
            return (state.buffer[:, :3] ** 2).sum(), state

        return nnx.value_and_grad(f, has_aux=True)(model)

    early = jit(early, model)
    (v_a, state_a), g_a = early(context)
    (v_b, state_b), g_b = early(later)
    np.testing.assert_array_equal(state_a.buffer[:, :3], state_b.buffer[:, :3])
    assert float(v_a) == float(v_b)
    assert rel_err(g_b, g_a) == 0.0
    assert float(jnp.abs(state_a.buffer[:, 3:] - state_b.buffer[:, 3:]).max()) > 1e-4
    assert bool(state_a.buffer_valid.all())


@pytest.mark.parametrize("memory", VARIANTS)
def test_a_later_segment_never_reaches_an_earlier_one(memory):
    """Every layer's attention in segments 1..3 (which sees what the state carried in: RMT's
    read memory, RMT-R's retrieval, ARMT's reads of the associations in every layer) is the
    same bit for bit when segments 4 and 5 change; segment 4's is not."""
    model = make_model(**VARIANTS[memory], attention_map_layers=(0, 1))
    context = random_tokens((2, 5 * SEG), seed=8)
    later = context.copy()
    later[:, 3 * SEG:] = random_tokens((2, 2 * SEG), seed=9)
    run = jit(lambda m, c: scan_segments(m, c, return_attention=True), model)
    (state_a, maps_a), (state_b, maps_b) = run(context), run(later)
    for layer in maps_a:
        np.testing.assert_array_equal(maps_a[layer][:3], maps_b[layer][:3])
        assert float(jnp.abs(maps_a[layer][3] - maps_b[layer][3]).max()) > 1e-4
    assert float(jnp.abs(carried(state_a) - carried(state_b)).max()) > 1e-4


@pytest.mark.parametrize("variant", ["official", "shared_norm"])
def test_retrieval_reads_only_valid_states(variant):
    model = RMT(get_config("test", memory="rmt_r", retrieval_variant=variant), rngs=nnx.Rngs(0))
    retrieval = model.retrieval
    rng = np.random.RandomState(8)
    if variant == "official":  # non-zero biases and LayerNorms of their own, to be seen
        retrieval.biases[...] = 0.1 * jnp.asarray(rng.randn(4, 32), jnp.float32)
        retrieval.ln_q.scale[...] = 1.0 + 0.5 * jnp.asarray(rng.randn(32), jnp.float32)
    m = jnp.asarray(rng.randn(2, 4, 32), jnp.float32) * 0.1
    states = jnp.asarray(rng.randn(2, 3, 4, 32), jnp.float32)
    valid = jnp.array([[True, True, False], [True, False, False]])

    def read(states, valid):
        return retrieval(m, retrieval.keys_values(states), valid)

    r = read(states, valid)
    r2 = read(states.at[0, 2].set(5.0).at[1, 1:].set(-3.0), valid)
    np.testing.assert_allclose(r2, r, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(read(states.at[0, 1].set(5.0), valid) - r).max()) > 1e-4
    # The spec's formula, projecting the stored states at read time, gives the same r
    # (the official block: ln_q for the query, ln_kv for the states, biased projections).
    ln_q = retrieval.ln_q if variant == "official" else retrieval.ln_in
    bq, bk, bv, bo = (retrieval.biases[...] if variant == "official" else jnp.zeros((4, 32)))
    q = ln_q(m) @ retrieval.wq[...] + bq
    k = retrieval.ln_in(states.reshape(2, 12, 32)) @ retrieval.wk[...] + bk
    v = retrieval.ln_in(states.reshape(2, 12, 32)) @ retrieval.wv[...] + bv
    scores = jnp.einsum("bqd,bsd->bqs", q, k) / np.sqrt(32)
    mask = jnp.repeat(valid, 4, axis=1)[:, None]
    att = jnp.where(mask, jax.nn.softmax(jnp.where(mask, scores, -1e30), -1), 0.0)
    spec = m + jnp.einsum("bqs,bsd->bqd", att, v) @ retrieval.wo[...] + bo
    spec = spec + retrieval.mlp(retrieval.ln_mlp(spec))
    np.testing.assert_allclose(r, spec, rtol=1e-5, atol=1e-6)
    # first segment, nothing stored: the official RMT-R reads its 2N learned rows; the
    # shared-norm block reads [m; m + MLP(LN(m))]
    nothing = jnp.zeros((2, 3), bool)
    first = model.read_memory(m, retrieval.keys_values(states), nothing)
    if variant == "official":
        assert model.memory.shape == (8, 32)
        np.testing.assert_allclose(first, jnp.broadcast_to(model.memory[...], (2, 8, 32)))
        later = model.read_memory(m, retrieval.keys_values(states), valid)
        np.testing.assert_allclose(later, jnp.concatenate([m, r], 1), rtol=1e-6, atol=1e-6)
    else:
        assert model.memory.shape == (4, 32)
        np.testing.assert_allclose(first[:, 4:], m + retrieval.mlp(retrieval.ln_mlp(m)),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("policy", ["dots_saveable", "dots_with_no_batch_dims_saveable",
                                    "full"])
def test_remat_policy_keeps_gradients(policy):
    context = random_tokens((1, 3 * SEG), seed=9)
    _, g_ref = value_and_grad(objective(scan_segments, context), make_model())
    _, g_remat = value_and_grad(objective(scan_segments, context),
                                make_model(remat_policy=policy))
    assert rel_err(g_remat, g_ref) <= 1e-5
