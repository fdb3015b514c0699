"""Count likelihoods: negative binomial and zero-inflated negative binomial.

Parameterised by the mean ``mu`` (already scaled by the size factor) and the
inverse dispersion ``theta`` (``var = mu + mu**2 / theta``). All functions return
the log-likelihood per entry; they are numerically safe at zero counts, tiny
means and extreme dispersions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-8


def log_nb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """log NB(x | mu, theta), elementwise."""
    theta = theta.clamp(min=_EPS)
    log_theta_mu = torch.log(theta + mu + _EPS)
    return (
        theta * (torch.log(theta + _EPS) - log_theta_mu)
        + x * (torch.log(mu + _EPS) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )


def log_zinb(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, pi_logits: torch.Tensor
) -> torch.Tensor:
    """log ZINB(x | mu, theta, pi), elementwise; ``pi = sigmoid(pi_logits)`` is the dropout probability."""
    theta = theta.clamp(min=_EPS)
    softplus_neg_pi = F.softplus(-pi_logits)  # -log(1 - pi)
    log_theta_eps = torch.log(theta + _EPS)
    log_theta_mu_eps = torch.log(theta + mu + _EPS)
    pi_theta_log = -pi_logits + theta * (log_theta_eps - log_theta_mu_eps)
    case_zero = F.softplus(pi_theta_log) - softplus_neg_pi
    case_non_zero = (
        -softplus_neg_pi
        - pi_logits
        + theta * (log_theta_eps - log_theta_mu_eps)
        + x * (torch.log(mu + _EPS) - log_theta_mu_eps)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )
    is_zero = (x < 1e-8).to(case_zero.dtype)
    return is_zero * case_zero + (1 - is_zero) * case_non_zero


def log_poisson(x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """log Poisson(x | rate), elementwise."""
    return x * torch.log(rate + _EPS) - rate - torch.lgamma(x + 1)


def zinb_mean(mu: torch.Tensor, pi_logits: torch.Tensor) -> torch.Tensor:
    """Expected value of a ZINB: (1 - pi) * mu."""
    return torch.sigmoid(-pi_logits) * mu
