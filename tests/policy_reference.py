"""Plain numpy reference of every eviction policy, written from the papers' definitions and
independent of the engine's code: a dict of tokens by position, attention recomputed from
the step's queries and the kept keys, scores, top-B with sinks and a recent window."""

import numpy as np


def f16(x):
    return np.asarray(x, dtype=np.float16).astype(np.float64)


class ReferenceLayer:
    def __init__(
        self,
        policy,
        il,
        budget,
        sinks,
        window,
        tau,
        n_head,
        n_head_kv,
        kq_scale,
        obs_window=32,
        pool_kernel=5,
        seed=0,
        recent_ratio=0.5,
    ):
        self.policy, self.il = policy, il
        self.budget, self.sinks, self.window, self.tau = budget, sinks, window, tau
        self.n_head, self.group = n_head, n_head // n_head_kv
        self.kq_scale = kq_scale
        self.obs_window, self.pool_kernel, self.seed = obs_window, pool_kernel, seed
        self.recent = int(budget * recent_ratio) if policy == "h2o" else 0  # H2O's recent half
        self.keys = {}  # position -> [n_head_kv, head_dim] (as stored: float16)
        self.raw_keys = {}  # position -> float32 key (keydiff works on these)
        self.state = {}  # position -> accumulated score

    def _attention_mass(self, positions, q):
        """Sum over heads of each key's softmax weight, for each query in ``q``."""
        order = sorted(self.keys)
        keys = np.stack([self.keys[p] for p in order])  # [n, Hkv, hd]
        mass = dict.fromkeys(order, 0.0)
        for p_q, q_t in zip(positions, q):
            visible = [i for i, p in enumerate(order) if p <= p_q]
            for h in range(self.n_head):
                logits = np.array([f16(q_t[h]) @ keys[i, h // self.group] for i in visible]) * self.kq_scale
                w = np.exp(logits - logits.max())
                w /= w.sum()
                for i, wi in zip(visible, w):
                    mass[order[i]] += wi
        return mass

    def step(self, positions, q, k):
        """Feed one step; return the kept set if this step compresses, else None."""
        for p, k_t in zip(positions, k):
            self.keys[p] = f16(k_t)
            self.raw_keys[p] = np.asarray(k_t, dtype=np.float64)
            self.state.setdefault(p, 0.0)
        n = len(positions)
        if self.policy == "h2o":
            for p, m in self._attention_mass(positions, q).items():
                self.state[p] += m
        elif self.policy == "tova":
            self.state = self._attention_mass(positions[-1:], q[-1:])
        elif self.policy == "snapkv":
            w = min(n, self.obs_window)
            for p, m in self._attention_mass(positions[-w:], q[-w:]).items():
                self.state[p] += m
        over = len(self.keys) - self.budget
        if over <= 0 or (n == 1 and over < self.tau):
            return None
        return self._select()

    def scores(self):
        order = sorted(self.keys)
        if self.policy == "streaming":
            return {p: float(p) for p in order}
        if self.policy == "random":
            from indexmem.engine.policies.random import token_priority  # the definition of "random"

            return dict(zip(order, token_priority(self.seed, self.il, np.array(order))))
        if self.policy == "keydiff":
            unit = {
                p: self.raw_keys[p] / np.linalg.norm(self.raw_keys[p], axis=-1, keepdims=True) for p in order
            }
            mean = np.mean([unit[p] for p in order], axis=0)
            mean /= np.linalg.norm(mean, axis=-1, keepdims=True)
            return {p: -float(np.mean(np.sum(unit[p] * mean, axis=-1))) for p in order}
        if self.policy == "snapkv":
            half = self.pool_kernel // 2
            vals = [self.state[p] for p in order]
            return {p: max(vals[max(0, i - half) : i + half + 1]) for i, p in enumerate(order)}
        return {p: self.state[p] for p in order}  # h2o, tova

    def _select(self):
        scores = self.scores()
        newest = max(self.keys)
        for p in scores:
            if p < self.sinks or p > newest - max(self.window, self.recent):
                scores[p] = np.inf
        ranked = sorted(scores, key=lambda p: (-scores[p], -p))
        self.last_scores = scores
        self.cut = scores[ranked[self.budget - 1]]
        return set(ranked[: self.budget])

    def sync(self, kept, compressed):
        """Adopt the engine's decision, so later steps start from the same kept set."""
        for p in list(self.keys):
            if p not in kept:
                del self.keys[p], self.raw_keys[p], self.state[p]
        if compressed and self.policy == "snapkv":
            self.state = dict.fromkeys(self.keys, 0.0)
