"""TOVA (Oren et al. 2024): keep the tokens the most recent query attends to most (head mean)."""

from .base import Policy


class TOVAPolicy(Policy):
    name = "tova"
    attention_queries = "last"

    def observe(self, il, obs):
        n = len(obs.attn_mass)
        self.state[il, :n] = obs.attn_mass
        self.state[il, n:] = 0.0
