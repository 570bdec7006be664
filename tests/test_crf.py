"""Linear-chain CRF (jmtl.models.crf) against brute-force enumeration of every tag sequence, the
crf_tagging task kind, and a tagger with a CRF head trained by the jitted step."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmtl import weighting
from jmtl.models import crf, sequence
from jmtl.tasks import CRF_TAGGING, Task, check_labels
from jmtl.training import step as step_lib

B, T, C = 4, 5, 3
LENGTHS = (5, 3, 1, 0)


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    out = crf.CRFOutput(
        jnp.asarray(rng.normal(size=(B, T, C)) * 2, jnp.float32),
        jnp.asarray(rng.normal(size=(C, C)) * 2, jnp.float32),
        jnp.asarray(rng.normal(size=(C,)), jnp.float32),
        jnp.asarray(rng.normal(size=(C,)), jnp.float32),
    )
    mask = jnp.asarray(np.arange(T)[None] < np.asarray(LENGTHS)[:, None], jnp.float32)
    return out, mask


def _score(out, row, tags):
    """s(y) straight from the definition, in float64."""
    e, a, s, f = (np.asarray(x, np.float64) for x in out)
    if not tags:
        return 0.0
    total = s[tags[0]] + f[tags[-1]] + sum(e[row, t, y] for t, y in enumerate(tags))
    return total + sum(a[tags[t - 1], tags[t]] for t in range(1, len(tags)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partition_score_and_viterbi_equal_brute_force(seed):
    out, mask = _problem(seed)
    log_z = np.asarray(jax.jit(crf.log_partition)(out, mask))
    best = np.asarray(jax.jit(crf.viterbi)(out, mask))
    rng = np.random.default_rng(seed + 10)
    tags = rng.integers(0, C, (B, T)).astype(np.int32)
    scores = np.asarray(crf.sequence_score(out, jnp.asarray(tags), mask))
    for row, n in enumerate(LENGTHS):
        every = {seq: _score(out, row, list(seq)) for seq in itertools.product(range(C), repeat=n)}
        ref = np.log(np.sum(np.exp(list(every.values())))) if n else 0.0
        np.testing.assert_allclose(log_z[row], ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(scores[row], _score(out, row, tags[row, :n].tolist()), rtol=1e-5, atol=1e-5)
        argmax = max(every, key=every.get)
        assert best[row, :n].tolist() == list(argmax) and np.all(best[row, n:] == 0)


def test_marginals_from_the_gradient_sum_to_one_at_real_tokens():
    out, mask = _problem(3)
    marg = jax.grad(lambda e: jnp.sum(crf.log_partition(out._replace(emissions=e), mask)))(out.emissions)
    np.testing.assert_allclose(np.asarray(marg.sum(-1)), np.asarray(mask), atol=1e-5)
    assert np.all(np.asarray(marg) >= -1e-7)


def test_zero_transitions_decode_to_the_per_token_argmax():
    out, mask = _problem(4)
    zero = out._replace(transitions=jnp.zeros((C, C)), start=jnp.zeros(C), end=jnp.zeros(C))
    path = np.asarray(crf.viterbi(zero, mask))
    np.testing.assert_array_equal(path, np.where(np.asarray(mask) > 0, np.argmax(np.asarray(out.emissions), -1), 0))


def test_crf_task_loss_is_the_token_scaled_negative_log_likelihood():
    out, mask = _problem(5)
    labels = np.random.default_rng(0).integers(0, C, (B, T)).astype(np.int32)
    labels[np.asarray(mask) == 0] = -1
    task = Task("chunk", CRF_TAGGING, C)
    loss = np.asarray(task.loss(out, jnp.asarray(labels)))
    nll = -np.asarray(crf.log_likelihood(out, jnp.maximum(jnp.asarray(labels), 0), mask))
    np.testing.assert_allclose(loss, nll * B / sum(LENGTHS), rtol=1e-5)
    # accuracy is the Viterbi path's, over real tokens
    acc = np.asarray(task.metrics[0].fn(out, jnp.asarray(labels)))
    path = np.asarray(crf.viterbi(out, mask))
    right = ((path == labels) & (labels >= 0)).sum(1)
    np.testing.assert_allclose(acc, right * B / sum(LENGTHS), rtol=1e-6)
    with pytest.raises(ValueError, match="-1 for padding"):
        check_labels([task], {"chunk": np.full((2, 3), C)})


def test_tagger_with_a_crf_head_trains_and_owns_its_transitions():
    tasks = (Task("pos", "tagging", 5), Task("chunk", CRF_TAGGING, 4))
    m = sequence.build(
        tasks,
        dict(pos=1, chunk=2),
        num_words=30,
        num_chars=12,
        num_layers=2,
        hidden=8,
        word_dim=8,
        char_dim=4,
        char_features=6,
        dropout_rate=0.0,
    )
    rng = np.random.default_rng(0)
    lengths = (6, 4, 1)
    words = rng.integers(2, 30, (3, 6)).astype(np.int32)
    chars = rng.integers(1, 12, (3, 6, 5)).astype(np.int32)
    chunk = rng.integers(0, 4, (3, 6)).astype(np.int32)
    chunk[:, 1:] = chunk[:, :-1]  # tags repeat: transitions carry information
    pos = rng.integers(0, 5, (3, 6)).astype(np.int32)
    for i, n in enumerate(lengths):
        words[i, n:] = chars[i, n:] = 0
        chunk[i, n:] = pos[i, n:] = -1
    x = {"words": jnp.asarray(words), "chars": jnp.asarray(chars)}
    batch = {"inputs": x, "pos": jnp.asarray(pos), "chunk": jnp.asarray(chunk)}
    t = weighting.get("equal")
    opt = optax.adam(0.05)
    state = step_lib.init_state(m, t, opt, x, len(tasks), seed=0)
    head = state.params["tasks"]["chunk"]
    assert set(head["crf"]) == {"transitions", "start", "end"} and head["crf"]["transitions"].shape == (4, 4)
    assert "crf" not in state.params["tasks"]["pos"]
    fn = jax.jit(step_lib.make_train_step(m, tasks, t, opt, step_lib.StepConfig(input_key="inputs")))
    first = None
    for _ in range(40):
        state, metrics = fn(state, batch)
        first = np.asarray(metrics["losses"]) if first is None else first
    last = np.asarray(metrics["losses"])
    assert bool(metrics["finite"]) and last[1] < 0.5 * first[1], (first, last)
    assert float(jnp.abs(state.params["tasks"]["chunk"]["crf"]["transitions"]).max()) > 0.01  # they learn
    out = m.apply({"params": state.params}, x)
    path = np.asarray(crf.viterbi(out["chunk"], x["words"] > 0))
    assert ((path == chunk) | (chunk < 0)).mean() > 0.9  # fits the 3 sentences
