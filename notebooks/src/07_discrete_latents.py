# ruff: noqa: E402 - the imports follow the warning filters of the first cell
# %% [markdown]
# # Discrete latents: summed out exactly, or estimated by the score function
#
# A discrete latent in a Pyro program is one more `pyro.sample` statement. Its gradient cannot
# be reparameterized, so an ELBO either **sums it out** (enumeration: `TraceEnum_ELBO` runs the
# program once over all its values at once, on a tensor dimension of its own) or **samples it**
# and differentiates $\mathbb E_q[f]$ with the score function,
# $\nabla \mathbb E_q[f] = \mathbb E_q[f \nabla \log q]$, whose variance a baseline reduces.
# This notebook measures both on a model whose marginal likelihood is known in closed form:
#
# $$c \sim \mathrm{Cat}(\tfrac13), \qquad z \mid c \sim \mathcal N(\mu_c, 1), \qquad
#   x \mid z \sim \mathcal N(w z + b, s^2 I), \qquad
#   p(x) = \tfrac13 \sum_c \mathcal N(x;\, w\mu_c + b,\; w w^\top + s^2 I).$$
#
# Then it derives the semi-supervised VAE's objective (Kingma et al. 2014, M2), whose unlabelled
# images carry their class as such a latent, and checks it against the explicit sum.

# %%
import os
import warnings

SMALL = os.environ.get("PPVAE_NOTEBOOK_SMALL") == "1"  # the quick run of the test suite
REPEATS = 30 if SMALL else 400  # gradient draws per estimator
N = 100 if SMALL else 1000  # points of the mixture data
warnings.filterwarnings("ignore", message="ArviZ is undergoing")

# %%
import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO

import ppvae
from ppvae import evaluate

LOCS, W, B, S2 = torch.tensor([-2.0, 0.5, 2.5]), torch.tensor([1.2, -0.7]), 0.3, 0.5
g = torch.Generator().manual_seed(0)
c_true = torch.randint(0, 3, (N,), generator=g)
z_true = LOCS[c_true] + torch.randn(N, generator=g)
X = z_true[:, None] * W + B + S2**0.5 * torch.randn(N, 2, generator=g)
cov = torch.outer(W, W) + S2 * torch.eye(2)
exact = (dist.MultivariateNormal(LOCS[:, None, None] * W + B, cov).log_prob(X)
         .logsumexp(0) - math.log(3))  # fmt: skip
print(f"{N} points; exact mean log p(x) = {float(exact.mean()):.4f} nats")

# %% [markdown]
# ## 1. The program, and the shapes of plates and enumeration
#
# The model marks $c$ for parallel enumeration. Under `poutine.enum`, Pyro gives $c$ a new
# dimension to the left of every plate (here the data plate is dimension $-1$, so $c$ takes
# $-2$): its value is the column $(0, 1, 2)^\top$ of shape (3, 1), and every log-density computed
# from it broadcasts to (3, N): here $\log p(z \mid c)$, while $\log p(x \mid z)$, which does
# not read $c$, keeps the shape (N,). The guide samples only $z$.


# %%
def model(x):
    bias = pyro.param("bias", torch.tensor(B))
    with pyro.plate("data", len(x)):
        c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3), infer={"enumerate": "parallel"})
        z = pyro.sample("z", dist.Normal(LOCS[c], 1.0))
        pyro.sample("x", dist.Normal(z.unsqueeze(-1) * W + bias, S2**0.5).to_event(1), obs=x)


def guide(x):
    with pyro.plate("data", len(x)):
        prec = 1.0 + W.dot(W) / S2
        pyro.sample("z", dist.Normal((x - B) @ W / S2 / prec, 1.5 / prec**0.5))


guide_tr = poutine.trace(guide).get_trace(X[:4])
tr = poutine.trace(poutine.replay(poutine.enum(model, first_available_dim=-2), guide_tr)
                   ).get_trace(X[:4])  # fmt: skip
tr.compute_log_prob()
for name in ("c", "z", "x"):
    site = tr.nodes[name]
    print(f"{name}: value {tuple(site['value'].shape)}, log_prob {tuple(site['log_prob'].shape)}")
assert tr.nodes["c"]["value"].shape == (3, 1) and tr.nodes["z"]["log_prob"].shape == (3, 4)
assert tr.nodes["x"]["log_prob"].shape == (4,)

# %% [markdown]
# Summing the three values of $c$ inside each importance weight gives
# $\log p(x, z) = \log \sum_c p(c)\, p(z \mid c)\, p(x \mid z)$, and the weight
# $p(x, z)/q(z \mid x)$ is over the continuous latent only. `ppvae.fit` chooses `TraceEnum_ELBO`
# for such a program and the estimators enumerate inside each weight:

# %%
pyro.clear_param_store()
history = ppvae.fit(model, guide, X, epochs=3, batch_size=100, lr=1e-3, progress=False)
pyro.set_rng_seed(1)
est = evaluate.estimate_log_likelihood((model, guide), X, num_samples=500)
print(f"estimator {history.config['elbo']!r}; IW estimate {est.mean:.4f} +- "
      f"{float(est.mc_se.mean()):.4f} (MC, per point) against exact {float(exact.mean()):.4f}")
assert history.config["elbo"] == "enum"
assert abs(est.mean - float(exact.mean())) < 4 * float(est.mc_se.pow(2).mean().sqrt()) + 0.01

# %% [markdown]
# ## 2. Enumeration against the score function
#
# Move $c$ into the guide, $q(c \mid x) = \mathrm{Cat}(\mathrm{softmax}(A x + a))$ with
# $q(z \mid x, c)$ the exact conditional posterior, and measure the variance of the gradient of
# the ELBO with respect to the classifier's parameters, over repeated draws, three ways: $c$
# enumerated in the guide (`TraceEnum_ELBO`), $c$ sampled (Pyro's score-function term, inside
# `Trace_ELBO`), and sampled with a decaying-average baseline (`TraceGraph_ELBO`, which also
# keeps only the terms downstream of $c$ in its score-function term).


# %%
def model2(x):
    with pyro.plate("data", len(x)):
        c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3))
        z = pyro.sample("z", dist.Normal(LOCS[c], 1.0))
        pyro.sample("x", dist.Normal(z.unsqueeze(-1) * W + B, S2**0.5).to_event(1), obs=x)


def make_guide(infer):
    def guide2(x):
        A = pyro.param("A", torch.zeros(2, 3))
        a = pyro.param("a", torch.zeros(3))
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(logits=x @ A + a), infer=infer)
            prec = 1.0 + W.dot(W) / S2
            loc = (LOCS[c] + (x - B) @ W / S2) / prec
            pyro.sample("z", dist.Normal(loc, prec**-0.5))

    return guide2


def gradient_variance(elbo, infer, x, repeats):
    pyro.clear_param_store()
    guide2 = make_guide(infer)
    grads = []
    for i in range(repeats):
        pyro.set_rng_seed(i)
        for name in ("A", "a"):  # created on the first call
            if name in pyro.get_param_store():
                pyro.param(name).unconstrained().grad = None
        elbo.loss_and_grads(model2, guide2, x)  # every ELBO class has it
        params = [pyro.param("A").unconstrained(), pyro.param("a").unconstrained()]
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    grads = torch.stack(grads)
    return float(grads.var(0).sum()), grads.mean(0)


x_small = X[:50]
variances = {}
variances["enumerated"], g_enum = gradient_variance(
    TraceEnum_ELBO(max_plate_nesting=1), {"enumerate": "parallel"}, x_small, REPEATS)
variances["score function"], g_sf = gradient_variance(Trace_ELBO(), {}, x_small, REPEATS)
variances["score function + baseline"], _ = gradient_variance(
    TraceGraph_ELBO(), {"baseline": {"use_decaying_avg_baseline": True}}, x_small, REPEATS)
for name, v in variances.items():
    print(f"{name:26s} total gradient variance {v:12.4f}")
assert variances["enumerated"] < 0.01 * variances["score function + baseline"]
assert variances["score function + baseline"] < variances["score function"]

# %% [markdown]
# The enumerated gradient's only noise is that of $z$, here nearly none (the guide's $q(z \mid
# x, c)$ is exact), so its variance is orders of magnitude below the score function's. Both are
# unbiased for the same gradient: their means agree within the score function's standard error.

# %%
se = math.sqrt(variances["score function"] / REPEATS)  # of the mean gradient, as a norm
print(f"|mean difference| {float((g_enum - g_sf).norm()):.3f}, score-function SE (norm) "
      f"{se:.3f}")
assert float((g_enum - g_sf).norm()) < 4 * se

# %% [markdown]
# ## 3. The semi-supervised VAE's objective (M2)
#
# For a labelled image the ELBO is that of $(x, y)$ with $y$ observed,
# $\mathcal L(x, y) = \mathbb E_{q(z \mid x, y)}[\log p(x \mid y, z) + \log p(y) + \log p(z) -
# \log q(z \mid x, y)]$. For an unlabelled one $y$ is latent with guide $q(y \mid x)$:
#
# $$\mathcal U(x) = \sum_y q(y \mid x)\, \mathcal L(x, y) + \mathcal H[q(y \mid x)],$$
#
# and M2 adds $\alpha \log q(y \mid x)$ on labelled images so that the classifier also learns
# from the labels. `ppvae.SemiSupervisedVAE` writes both kinds of rows as one program (an
# enumerated guide site for a missing label), and `TraceEnum_ELBO` computes $\mathcal U$ by
# parallel enumeration. On the same draws of $z$ it equals the explicit sum:

# %%
digits = ppvae.load_dataset("digits", seed=0)
xd = (digits.train[:10] > 0.5).float()
torch.manual_seed(0)
m2 = ppvae.SemiSupervisedVAE(64, 10, 3, hidden=(16,), alpha=5.0)
unlabelled = torch.full((10,), ppvae.data.UNLABELLED)
pyro.set_rng_seed(3)
enumerated = -TraceEnum_ELBO(max_plate_nesting=1).loss(m2.model, m2.guide, xd, unlabelled)
pyro.set_rng_seed(3)
with torch.no_grad():
    gtr = poutine.trace(poutine.enum(m2.guide, first_available_dim=-2)).get_trace(xd, unlabelled)
    z = gtr.nodes["z"]["value"]  # (10 classes, 10 images, k): one draw per class
    onehot = torch.eye(10)[:, None, :].expand(10, 10, 10)
    log_px = m2.likelihood(m2.decoder(torch.cat([z, onehot], -1))).log_prob(xd)
    log_pz = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    loc, scale = m2.encoder(torch.cat([xd.expand(10, 10, 64), onehot], -1))
    per_class = log_px + log_pz - dist.Normal(loc, scale).log_prob(z).sum(-1) - math.log(10)
    q_y = torch.softmax(m2.classifier(xd), -1)
    explicit = float(((q_y.T * per_class).sum(0) - (q_y * q_y.log()).sum(-1)).sum())
print(f"TraceEnum_ELBO {enumerated:.4f}, explicit sum over classes + entropy {explicit:.4f}")
assert abs(enumerated - explicit) < 1e-5 * abs(explicit)
