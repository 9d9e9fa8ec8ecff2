# ruff: noqa: E402 - the imports follow the warning filters of the first cell
# %% [markdown]
# # From PCA to the VAE, one model at a time
#
# A variational autoencoder is what a linear autoencoder becomes after a sequence of changes:
# give the code a prior and the reconstruction noise (PPCA), fit by EM, replace the exact
# posterior by a per-point variational distribution (variational EM), share one recognition
# model across data points (amortization), and make the linear maps nonlinear (the VAE).
# For every step up to the last, probabilistic PCA supplies exact answers: its marginal
# likelihood and its posterior are Gaussian, in closed form. Each claim below is checked
# numerically with an `assert` in the cell that makes it.
#
# | step | model | fitted by |
# |---|---|---|
# | 1 | linear autoencoder | least squares: it is PCA |
# | 2 | PPCA, a Pyro program | closed-form maximum likelihood (`ppvae.PPCA`) |
# | 3 | its evidence $p(x)$ | naive Monte Carlo vs importance sampling |
# | 4 | the ELBO | exact decomposition $\log p(x) = \mathrm{ELBO} + \mathrm{KL}$ |
# | 5 | why $\mathrm{KL}(q\,\|\,p)$ | mode seeking vs mass covering |
# | 6 | PPCA | EM (`PPCA(method="em")`) |
# | 7 | PPCA with one $q_n(z)$ per point | variational EM by SVI in Pyro |
# | 8 | PPCA with $q(z \mid x)$ | amortized SVI (`ppvae.LinearVAE`) |
# | 9 | networks instead of matrices | SVI (`ppvae.VAE`) |
# | 10 | the gradient of the ELBO | score function vs reparameterization |
#
# All log-densities are in nats, per image unless stated otherwise. The data are scikit-learn's
# 8 x 8 digits, uniformly dequantized to $[0, 1]^{64}$, so densities are honest densities.

# %%
# %matplotlib inline
import os
import warnings

SMALL = os.environ.get("PPVAE_NOTEBOOK_SMALL") == "1"  # the quick run of the test suite
IS_SAMPLES = 20_000 if SMALL else 100_000  # section 3: importance samples per image
IS_POINTS = 3 if SMALL else 5  # section 3: test images checked
KL_MC_SAMPLES = 2_000 if SMALL else 20_000  # section 4: Monte Carlo samples per KL
KL_SVI_STEPS = 400 if SMALL else 1500  # section 5: SVI steps of the reverse-KL fit
VEM_STEPS = 300 if SMALL else 1500  # section 7: full-batch SVI steps, local guide
MINIBATCH_DRAWS = 200 if SMALL else 2000  # section 7: minibatches in the scaling check
LINEAR_EPOCHS = 300 if SMALL else 1500  # section 8: full-batch epochs of the LinearVAE
VAE_EPOCHS = 20 if SMALL else 200  # section 9
IW_SAMPLES = 200 if SMALL else 2000  # section 9: importance samples per test image
GRAD_REPEATS = 200 if SMALL else 2000  # section 10: single-sample gradient estimates

# pyro and ppvae import tqdm.auto, which warns in Jupyter when ipywidgets is absent
warnings.filterwarnings("ignore", message="IProgress not found")
warnings.filterwarnings("ignore", message="ArviZ is undergoing a major refactor")

# %%
import logging
import math

import arviz
import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import MultivariateNormal, kl_divergence

import ppvae
from ppvae import evaluate

torch.set_num_threads(1)  # matrices here are small: one thread is the fastest
pyro.enable_validation(True)
pyro.set_rng_seed(0)
logging.getLogger("pyro").setLevel(logging.WARNING)
plt.rcParams.update({"figure.dpi": 90, "axes.grid": True, "grid.alpha": 0.3})

data = ppvae.load_dataset("digits", seed=0)
X = data.train.double()  # (1438, 64): training images
X_test = data.test.double()  # (359, 64)
N, D = X.shape
K = 8  # latent dimensions
print(data)
print(f"SMALL={SMALL}, N={N}, D={D}, K={K}")

# %% [markdown]
# ## 1. A linear autoencoder is PCA
#
# Encode with $A \in \mathbb{R}^{k \times D}$, decode with $B \in \mathbb{R}^{D \times k}$,
# and minimize the mean squared reconstruction error of the centred data. With the sample
# covariance $S = \frac1N \sum_n (x_n - \bar x)(x_n - \bar x)^\top$ (eigenvalues
# $\lambda_1 \ge \dots \ge \lambda_D$) the loss is
#
# $$L(A, B) = \frac1N \sum_n \lVert (x_n - \bar x) - BA(x_n - \bar x) \rVert^2
#   = \operatorname{tr}\big[(I - BA)\,S\,(I - BA)^\top\big]
#   \;\ge\; \sum_{j > k} \lambda_j ,$$
#
# with equality exactly when $BA$ is the orthogonal projector onto the top-$k$ eigenvectors
# (Eckart-Young; Baldi & Hornik 1989). The autoencoder finds the principal *subspace*, not
# the eigenvectors: $(BG^{-1}, GA)$ has the same loss for any invertible $G$. How close it
# gets is quantified by the principal angles $\theta_i$ between $\operatorname{span}(B)$ and
# the top-$k$ eigenvectors: writing $\tilde L$ for the loss of the projector onto
# $\operatorname{span}(B)$,
#
# $$\sum_i \sin^2\theta_i \;\le\; \frac{\tilde L - \sum_{j>k}\lambda_j}{\lambda_k - \lambda_{k+1}}
#   \;\le\; \frac{L(A, B) - \sum_{j>k}\lambda_j}{\lambda_k - \lambda_{k+1}} .$$

# %%
torch.manual_seed(0)
x_bar = X.mean(0)
S = (X - x_bar).T @ (X - x_bar) / N
evals, evecs = torch.linalg.eigh(S)
evals, evecs = evals.flip(0), evecs.flip(1)  # descending
pca_loss = float(evals[K:].sum())  # the Eckart-Young minimum

A = (0.1 * torch.randn(K, D, dtype=torch.float64)).requires_grad_()
B = (0.1 * torch.randn(D, K, dtype=torch.float64)).requires_grad_()
eye_D = torch.eye(D, dtype=torch.float64)
lbfgs = torch.optim.LBFGS(
    [A, B], max_iter=300, tolerance_grad=1e-12, tolerance_change=1e-15,
    history_size=50, line_search_fn="strong_wolfe",
)


def ae_loss():
    lbfgs.zero_grad()
    R = eye_D - B @ A
    loss = torch.trace(R @ S @ R.T)
    loss.backward()
    return loss


lbfgs.step(ae_loss)
with torch.no_grad():
    ae = float(torch.trace((eye_D - B @ A) @ S @ (eye_D - B @ A).T))
    Q = torch.linalg.qr(B)[0]
    cos = torch.linalg.svdvals(Q.T @ evecs[:, :K]).clamp(max=1.0)
sin2 = 1.0 - cos**2
excess = ae - pca_loss
gap = float(evals[K - 1] - evals[K])
angles = torch.rad2deg(torch.arccos(cos))
print(f"autoencoder loss {ae:.10f}, PCA minimum {pca_loss:.10f} (squared units of [0,1] pixels)")
print(f"relative excess {excess / pca_loss:.2e}; eigengap lambda_k - lambda_k+1 = {gap:.4f}")
print(f"principal angles to the PCA subspace (degrees): {np.round(angles.numpy(), 4)}")
assert excess >= -1e-12 * pca_loss, "below the Eckart-Young minimum: impossible"
assert excess < 1e-6 * pca_loss, "L-BFGS did not reach the PCA loss"
assert float(sin2.sum()) <= excess / gap + 1e-10, "subspace bound violated"

# %% [markdown]
# ## 2. Probabilistic PCA, a Pyro program
#
# PPCA (Tipping & Bishop 1999) puts a prior on the code and noise on the reconstruction:
#
# $$z_n \sim \mathcal N(0, I_k), \qquad x_n \mid z_n \sim \mathcal N(W z_n + \mu, \sigma^2 I_D).$$
#
# The evidence is Gaussian, $x \sim \mathcal N(\mu, C)$ with $C = WW^\top + \sigma^2 I$, and the
# posterior is $p(z \mid x) = \mathcal N\big(M^{-1}W^\top(x - \mu),\ \sigma^2 M^{-1}\big)$ with
# $M = W^\top W + \sigma^2 I_k$. The maximum-likelihood solution is in closed form:
#
# $$\mu = \bar x, \qquad \sigma^2 = \frac{1}{D-k}\sum_{j>k}\lambda_j, \qquad
#   W = U_k(\Lambda_k - \sigma^2 I)^{1/2} R$$
#
# for any rotation $R$. As $\sigma^2 \to 0$ it is the *reconstruction*
# $W\,\mathbb E[z \mid x] + \mu = W M^{-1} W^\top (x - \mu) + \mu$ that becomes the orthogonal
# projection of section 1 ($W M^{-1} W^\top \to W (W^\top W)^{-1} W^\top$); the posterior mean
# itself tends to the projection's coordinates $(W^\top W)^{-1} W^\top (x - \mu)$ in the basis
# $W$. At $\sigma^2 > 0$ the reconstruction is shrunk towards $\mu$. Below, the model is a
# Pyro program; `ppvae.PPCA` fits it. Two
# checks: Bayes' rule $\log p(x) = \log p(x, z) - \log p(z \mid x)$ holds at *every* $z$ (the
# joint comes from a Pyro trace, the other two terms from closed forms), and the gradient of
# the mean log-likelihood vanishes at the closed-form solution.


# %%
def ppca_model(x, W, mu, s2):
    """z ~ N(0, I_k), x | z ~ N(W z + mu, s2 I_D), for a batch x of shape (n, D)."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(W.shape[1]), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + mu, math.sqrt(s2)).to_event(1), obs=x)
    return z


def log_joint(x, z, W, mu, s2):
    """log p(x, z) per row, read off a Pyro trace of the model conditioned on z."""
    trace = poutine.trace(poutine.condition(ppca_model, data={"z": z})).get_trace(x, W, mu, s2)
    trace.compute_log_prob()
    return trace.nodes["z"]["log_prob"] + trace.nodes["x"]["log_prob"]


ppca = ppvae.PPCA(K).fit(X)
W_ml, mu_ml, s2_ml = ppca.W_, ppca.mean_, ppca.noise_variance_
post = ppca.posterior(X_test)  # exact p(z | x), a batch of MultivariateNormal
log_px = ppca.log_prob(X_test)  # exact log p(x)
worst = 0.0
for z in (post.sample(), torch.zeros(len(X_test), K, dtype=torch.float64),
          3.0 * torch.randn(len(X_test), K, dtype=torch.float64)):
    bayes = log_joint(X_test, z, W_ml, mu_ml, s2_ml) - post.log_prob(z)
    worst = max(worst, float((bayes - log_px).abs().max()))
print(f"train log-lik {ppca.score(X):.4f}, test {ppca.score(X_test):.4f} nats/image (exact)")
print(f"noise variance s2 = {s2_ml:.5f}; Bayes' rule holds to {worst:.1e} nats")
# Bayes: p(z | x) = p(x, z) / p(x), so log p(x, z) - log p(z | x) = log p(x) at *every* z,
# not only on average: any z, even one far in the tails, must give the same number
assert worst < 1e-9

# the closed form is a stationary point of the log-likelihood
params = [W_ml.clone().requires_grad_(), mu_ml.clone().requires_grad_(),
          torch.tensor(math.log(s2_ml), dtype=torch.float64, requires_grad=True)]
W_, mu_, log_s2_ = params
C = W_ @ W_.T + log_s2_.exp() * torch.eye(D, dtype=torch.float64)
mean_ll = MultivariateNormal(mu_, covariance_matrix=C).log_prob(X).mean()
grads = torch.autograd.grad(mean_ll, params)
mean_ll = float(mean_ll.detach())
max_grad = max(float(g.abs().max()) for g in grads)
print(f"mean log-lik at the closed form {mean_ll:.6f}; largest gradient {max_grad:.1e}")
assert abs(mean_ll - ppca.score(X)) < 1e-9
assert max_grad < 1e-6

fig, ax = plt.subplots(figsize=(6.5, 3.2))
ax.semilogy(np.arange(1, D + 1), evals.numpy(), "o-", ms=3, label=r"eigenvalues $\lambda_j$ of $S$")
ax.axhline(s2_ml, color="C3", ls="--", label=rf"$\sigma^2_{{ML}}$ (k={K}) = {s2_ml:.4f}")
ax.axvline(K + 0.5, color="gray", ls=":", label=f"k = {K}")
ax.set_xlabel("index j")
ax.set_ylabel("variance (pixel units$^2$)")
ax.set_title("Spectrum of the digits' sample covariance")
ax.legend()
plt.show()

# %% [markdown]
# ## 3. The evidence is an integral: naive Monte Carlo vs importance sampling
#
# Any latent-variable model needs $p(x) = \int p(x \mid z)\,p(z)\,dz$. The naive estimator
# $\hat p_n = \frac1n \sum_i p(x \mid z_i)$ with $z_i \sim p(z)$ is unbiased, but almost all
# prior draws land where $p(x \mid z)$ is negligible: it needs about
# $n \approx \exp\{\mathrm{KL}(p(z \mid x)\,\|\,p(z))\}$ draws (Chatterjee & Diaconis 2018).
# Importance sampling draws from a proposal $q$ near the posterior instead,
#
# $$p(x) = \mathbb E_{q(z)}\!\left[\frac{p(x, z)}{q(z)}\right], \qquad
#   \hat p_n = \frac1n \sum_i \frac{p(x, z_i)}{q(z_i)}, \quad z_i \sim q,$$
#
# and with $q = p(z \mid x)$ every weight equals $p(x)$: zero variance, exact for any $n$.
# To make the point at a realistic scale we use PPCA with $k = 16$, where the posterior of a
# digit carries 17 to 22 nats of information about $z$. The proposal $q$ is deliberately
# imperfect: the posterior mean with 1.25 times the posterior standard deviations. The
# delta-method standard error $\sqrt{(\overline{w^2}/\bar w^2 - 1)/n}$ and the Pareto
# $\hat k$ of the weights (PSIS) say whether an estimate can be trusted.

# %%
pyro.set_rng_seed(3)
K16 = 16
ppca16 = ppvae.PPCA(K16).fit(X)
W16, mu16, s2_16 = ppca16.W_, ppca16.mean_, ppca16.noise_variance_
prior16 = dist.Normal(torch.zeros(K16, dtype=torch.float64), 1.0).to_event(1)
n_grid = torch.arange(1, IS_SAMPLES + 1, dtype=torch.float64)


def running_estimate(log_w):
    """log (1/n) sum_{i <= n} w_i for every n."""
    return torch.logcumsumexp(log_w, 0) - n_grid.log()


def delta_se(log_w):
    """Delta-method standard error of log mean(w): sqrt((mean w^2 / mean(w)^2 - 1) / n)."""
    n = len(log_w)
    log_ratio = torch.logsumexp(2 * log_w, 0) - 2 * torch.logsumexp(log_w, 0) + math.log(n)
    ratio = math.exp(float(log_ratio))
    return math.sqrt(max(ratio - 1.0, 0.0) / n)


def pareto_khat(log_w):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(arviz.psislw((log_w - log_w.max()).numpy())[1])


results = []
for i in range(IS_POINTS):
    x = X_test[i : i + 1]
    xs = x.expand(IS_SAMPLES, D)
    exact = float(ppca16.log_prob(x))
    post16 = ppca16.posterior(x)
    m, sd = post16.mean[0], post16.variance[0].sqrt()
    kl_post_prior = float(kl_divergence(post16, MultivariateNormal(
        torch.zeros(K16, dtype=torch.float64), torch.eye(K16, dtype=torch.float64)))[0])
    # naive: z ~ p(z), weights p(x | z)
    z = prior16.sample((IS_SAMPLES,))
    lw_naive = log_joint(xs, z, W16, mu16, s2_16) - prior16.log_prob(z)
    # importance sampling with an imperfect proposal q
    q = dist.Normal(m, 1.25 * sd).to_event(1)
    z = q.sample((IS_SAMPLES,))
    lw_q = log_joint(xs, z, W16, mu16, s2_16) - q.log_prob(z)
    # importance sampling with the exact posterior
    z = post16.sample((IS_SAMPLES,))[:, 0]
    lw_post = log_joint(xs, z, W16, mu16, s2_16) - post16.log_prob(z[:, None])[:, 0]
    est = {name: running_estimate(lw) for name, lw in
           (("naive", lw_naive), ("q", lw_q), ("posterior", lw_post))}
    results.append({
        "exact": exact, "kl": kl_post_prior, "est": est,
        "err_naive": float(est["naive"][-1]) - exact,
        "err_q_1000": float(est["q"][999]) - exact, "se_q_1000": delta_se(lw_q[:1000]),
        "err_q": float(est["q"][-1]) - exact, "se_q": delta_se(lw_q),
        "err_post": float((est["posterior"] - exact).abs().max()),
        "khat_naive": pareto_khat(lw_naive), "khat_q": pareto_khat(lw_q),
        "se_naive": delta_se(lw_naive),
    })

print(f"n = {IS_SAMPLES} draws per estimator; errors are estimate - exact log p(x), nats")
print(" img  log p(x)  KL(post||prior)  naive err (SE, k-hat)     q err @1000 (SE)"
      "    q err @n (SE, k-hat)    posterior max|err|")
for i, r in enumerate(results):
    print(f"{i:4d} {r['exact']:9.3f} {r['kl']:10.2f} {r['err_naive']:12.2f} "
          f"({r['se_naive']:.2f}, {r['khat_naive']:.1f}) {r['err_q_1000']:10.3f} "
          f"({r['se_q_1000']:.3f}) {r['err_q']:9.4f} ({r['se_q']:.4f}, {r['khat_q']:.2f})"
          f"   {r['err_post']:.1e}")
for r in results:
    assert r["err_post"] < 1e-9, "IS with the exact posterior must be exact for every n"
    assert abs(r["err_q_1000"]) < 4 * r["se_q_1000"] < 1.0, "IS with q: sub-nat at n = 1000"
    assert abs(r["err_q"]) < 4 * r["se_q"]
    assert abs(r["err_naive"]) > 1.0, "naive Monte Carlo still more than a nat off"
    assert r["khat_naive"] > 0.7 > r["khat_q"], "PSIS k-hat flags the naive estimate only"

r = results[0]
fig, ax = plt.subplots(figsize=(7, 3.8))
ns = n_grid.numpy()
ax.semilogx(ns, r["est"]["naive"].numpy(), label=r"naive: $z \sim p(z)$")
ax.semilogx(ns, r["est"]["q"].numpy(), label=r"IS: $z \sim q$ (posterior mean, 1.25 x sd)")
ax.semilogx(ns, r["est"]["posterior"].numpy(), ls="--", label=r"IS: $z \sim p(z \mid x)$")
ax.axhline(r["exact"], color="k", ls=":", label="exact log p(x)")
ax.set_ylim(r["exact"] - 40, r["exact"] + 5)
ax.set_xlabel("number of samples n")
ax.set_ylabel(r"estimate of log p(x) (nats)")
ax.set_title(f"Test image 0, PPCA k={K16}: KL(posterior || prior) = {r['kl']:.1f} nats, "
             f"naive needs ~e^{r['kl']:.0f} draws", fontsize=10)
ax.legend(loc="lower right")
plt.show()

# %% [markdown]
# The naive estimate is off by many nats after $10^5$ draws, and its delta-method standard
# error does not show it. Its weights $p(x \mid z)$ are bounded (by $\max_z p(x \mid z)$), so
# their variance is finite and the estimate does converge, but only after about
# $e^{\mathrm{KL}}$ draws: all but a vanishing share of the mass sits in draws not yet seen, and
# the sample variance of the draws seen so far badly underestimates the true one. The Pareto
# $\hat k$ of 8-10 is then a *pre-asymptotic* warning, not evidence of an infinite-variance
# tail: the sample of weights looks heavy-tailed at this $K$ ($\hat k > 0.7$: do not trust).
# A variational
# posterior is exactly what makes importance sampling work, which is why the VAE's guide
# doubles as the proposal of `ppvae.evaluate.estimate_log_likelihood`.
#
# ## 4. The ELBO, exactly
#
# For any distribution $q(z)$,
#
# $$\log p(x) = \underbrace{\mathbb E_q[\log p(x \mid z)]
#   - \mathrm{KL}(q(z)\,\|\,p(z))}_{\mathrm{ELBO}(q)}
#   \;+\; \mathrm{KL}(q(z)\,\|\,p(z \mid x)),$$
#
# so the ELBO is a lower bound, tight exactly when $q$ is the posterior. For PPCA and a Gaussian
# $q = \mathcal N(m, \Sigma)$ every term is in closed form:
#
# $$\mathbb E_q[\log p(x \mid z)] = -\frac D2 \log(2\pi\sigma^2)
#   - \frac{\lVert x - \mu - Wm \rVert^2 + \operatorname{tr}(W^\top W \Sigma)}{2\sigma^2}, \qquad
#   \mathrm{KL}(q\,\|\,\mathcal N(0, I)) = \tfrac12\big(\operatorname{tr}\Sigma + m^\top m - k
#   - \log\lvert\Sigma\rvert\big).$$
#
# We check the identity for five $q$ on a *rotated* maximum-likelihood PPCA,
# $W = W_{ML}R$ with a random rotation $R$: same evidence (rotations are not identifiable), but
# a posterior covariance that is no longer diagonal, so the best mean-field $q$ (posterior mean,
# variances $1/P_{jj}$ from the posterior precision $P$) misses by exactly
# $\mathrm{KL} = \tfrac12\big(\sum_j \log P_{jj} - \log\lvert P\rvert\big) \ge 0$ (Hadamard's
# inequality).

# %%
pyro.set_rng_seed(4)
R = torch.linalg.qr(torch.randn(K, K, dtype=torch.float64))[0]
rotated = ppvae.PPCA.from_params(mu_ml, W_ml @ R, s2_ml)
W_r = rotated.W_
X_e = X_test  # evaluate on the test images
post_r = rotated.posterior(X_e)
P = torch.linalg.inv(post_r.covariance_matrix[0])  # posterior precision, same for every x
n_e = len(X_e)
eye_K = torch.eye(K, dtype=torch.float64)


def exact_terms(m, Sigma):
    """Closed-form terms of the ELBO identity for q_n = N(m_n, Sigma_n), each of shape (n,)."""
    resid = X_e - mu_ml - m @ W_r.T
    tr = torch.einsum("ij,nji->n", W_r.T @ W_r, Sigma)
    ell = -0.5 * (D * math.log(2 * math.pi * s2_ml) + ((resid**2).sum(1) + tr) / s2_ml)
    q = MultivariateNormal(m, covariance_matrix=Sigma)
    kl_prior = kl_divergence(q, MultivariateNormal(torch.zeros(K, dtype=torch.float64), eye_K))
    return {"log p(x)": rotated.log_prob(X_e), "E_q log p(x|z)": ell, "KL(q||p(z))": kl_prior,
            "ELBO": ell - kl_prior, "KL(q||p(z|x))": kl_divergence(q, post_r)}


def diag(v):
    return torch.diag_embed(v.expand(n_e, K))


mean_field_var = 1.0 / P.diagonal()
candidates = {
    "prior N(0, I)": (torch.zeros(n_e, K, dtype=torch.float64),
                      diag(torch.ones(K, dtype=torch.float64))),
    "exact posterior": (post_r.mean, post_r.covariance_matrix),
    "best mean-field": (post_r.mean, diag(mean_field_var)),
    "posterior, 2x sd": (post_r.mean, 4.0 * post_r.covariance_matrix),
    "random diagonal": (torch.randn(n_e, K, dtype=torch.float64),
                        diag(torch.rand(n_e, K, dtype=torch.float64) * 0.9 + 0.1)),
}
print(f"{'q':>18s} " + " ".join(f"{c:>15s}" for c in exact_terms(*candidates['prior N(0, I)'])))
terms = {}
for name, (m, Sigma) in candidates.items():
    t = terms[name] = exact_terms(m, Sigma)
    print(f"{name:>18s} " + " ".join(f"{float(v.mean()):15.4f}" for v in t.values()))
    residual = (t["log p(x)"] - t["ELBO"] - t["KL(q||p(z|x))"]).abs().max()
    # log p(x) = log p(x, z) - log p(z | x) at every z; take E_q of both sides and add and
    # subtract log q(z): log p(x) = E_q[log p(x, z) - log q] + E_q[log q - log p(z | x)]
    # = ELBO + KL(q || p(z | x)); KL >= 0 then gives ELBO <= log p(x)
    assert residual < 1e-9, (name, residual)
    assert bool((t["KL(q||p(z|x))"] > -1e-9).all())
    assert bool((t["ELBO"] <= t["log p(x)"] + 1e-9).all())
assert float(terms["exact posterior"]["KL(q||p(z|x))"].abs().max()) < 1e-9
hadamard = 0.5 * (P.diagonal().log().sum() - torch.logdet(P))
assert float((terms["best mean-field"]["KL(q||p(z|x))"] - hadamard).abs().max()) < 1e-9
assert float((rotated.log_prob(X_e) - ppca.log_prob(X_e)).abs().max()) < 1e-9  # R unidentifiable
print(f"\nmean-field gap of the rotated model: {float(hadamard):.4f} nats per image, "
      "the same for every x")

# the library's closed form agrees (for diagonal q)
for name in ("prior N(0, I)", "best mean-field", "random diagonal"):
    m, Sigma = candidates[name]
    lib = evaluate.elbo_decomposition(rotated, X_e, m, Sigma.diagonal(dim1=-2, dim2=-1).sqrt())
    assert float((lib["elbo"] - terms[name]["ELBO"]).abs().max()) < 1e-9
    assert float((lib["kl_to_posterior"] - terms[name]["KL(q||p(z|x))"]).abs().max()) < 1e-9
print("ppvae.evaluate.elbo_decomposition agrees to 1e-9 nats")

# %% [markdown]
# The closed-form Gaussian KL is what `TraceMeanField_ELBO` uses in place of a Monte Carlo
# estimate. Against its Monte Carlo estimate
# $\frac1S\sum_s [\log q(z_s) - \log p(z_s)]$, $z_s \sim q$, with standard error
# $\mathrm{sd}/\sqrt S$, it must agree within a few standard errors (4 SE: a false alarm once in
# 16 000 checks).

# %%
pyro.set_rng_seed(5)
rows = []
prior_K = MultivariateNormal(torch.zeros(K, dtype=torch.float64), eye_K)
for name in ("prior N(0, I)", "best mean-field", "posterior, 2x sd", "random diagonal"):
    m, Sigma = candidates[name]
    for i in range(3):
        q = MultivariateNormal(m[i], covariance_matrix=Sigma[i])
        post_i = MultivariateNormal(post_r.mean[i], covariance_matrix=post_r.covariance_matrix[i])
        z = q.sample((KL_MC_SAMPLES,))
        for target_name, target in (("p(z)", prior_K), ("p(z|x)", post_i)):
            f = q.log_prob(z) - target.log_prob(z)
            mc, se = float(f.mean()), float(f.std()) / math.sqrt(KL_MC_SAMPLES)
            closed = float(kl_divergence(q, target))
            rows.append((name, i, target_name, closed, mc, se))
print(f"{'q':>18s} img {'KL to':>7s} {'closed form':>12s} {'Monte Carlo':>12s} "
      f"{'SE':>8s} {'z':>6s}")
for name, i, tn, closed, mc, se in rows:
    zscore = (mc - closed) / se if se > 0 else 0.0
    print(f"{name:>18s} {i:3d} {tn:>7s} {closed:12.5f} {mc:12.5f} {se:8.5f} {zscore:6.2f}")
    assert abs(mc - closed) <= 4 * se + 1e-12, (name, i, tn)

# %% [markdown]
# ## 5. Why $\mathrm{KL}(q\,\|\,p)$ and not $\mathrm{KL}(p\,\|\,q)$
#
# The identity of section 4 produces the *reverse* KL, $\mathbb E_q[\log q - \log p]$: an
# expectation under $q$, which we can sample, of a log-density we can evaluate up to the
# constant $\log p(x)$. The forward KL, $\mathbb E_p[\log p - \log q]$, would need samples of
# the posterior, which is what we lack. The two also behave differently. Fit a single Gaussian
# to a bimodal target $p = \frac12\mathcal N(-3, 1) + \frac12 \mathcal N(3, 1)$:
#
# * reverse, $\min_q \mathrm{KL}(q\,\|\,p)$: $q$ must vanish where $p$ does, so it *seeks a
#   mode*. Fitted here by SVI: the model samples $z$ from $p$, the guide is $\mathcal N(m, s^2)$,
#   and since $p$ is normalized, $-\mathrm{ELBO} = \mathrm{KL}(q\,\|\,p)$;
# * forward, $\min_q \mathrm{KL}(p\,\|\,q)$: $q$ must cover wherever $p$ has mass; for a
#   Gaussian $q$ the minimizer matches the moments of $p$: mean 0, variance $1 + 9 = 10$.
#
# Both KLs are then computed by quadrature on a fine grid.

# %%
pyro.set_rng_seed(6)
pyro.clear_param_store()
target = dist.MixtureSameFamily(dist.Categorical(probs=torch.tensor([0.5, 0.5])),
                                dist.Normal(torch.tensor([-3.0, 3.0]), torch.tensor([1.0, 1.0])))


def bimodal_model():
    pyro.sample("z", target)


def gaussian_guide():
    loc = pyro.param("loc", torch.tensor(1.0))  # started off-centre, as any real init would be
    scale = pyro.param("scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("z", dist.Normal(loc, scale))


svi = SVI(bimodal_model, gaussian_guide, pyro.optim.Adam({"lr": 0.05}),
          Trace_ELBO(num_particles=64, vectorize_particles=True, max_plate_nesting=0))
for _ in range(KL_SVI_STEPS):
    svi.step()
rev_loc, rev_scale = pyro.param("loc").item(), pyro.param("scale").item()

fwd_loc = 0.5 * (-3.0) + 0.5 * 3.0  # the moments of p: mean sum_c pi_c m_c ...
fwd_var = 0.5 * (1 + 9) + 0.5 * (1 + 9) - fwd_loc**2  # ... sum_c pi_c (s_c^2 + m_c^2) - mean^2
samples = target.sample((KL_MC_SAMPLES,))  # maximum likelihood from samples of p = forward KL
mle_loc, mle_var = float(samples.mean()), float(samples.var(unbiased=False))
se_loc, se_var = math.sqrt(fwd_var / KL_MC_SAMPLES), math.sqrt((138.0 - 100.0) / KL_MC_SAMPLES)
# (the mixture's 4th moment is 138, so var(z^2) = 138 - 10^2)

grid = torch.linspace(-15, 15, 30001, dtype=torch.float64)
log_p = target.log_prob(grid.float()).double()


def kl_quadrature(log_a, log_b):
    return float(torch.trapezoid(log_a.exp() * (log_a - log_b), grid))


log_q_rev = dist.Normal(torch.tensor(rev_loc, dtype=torch.float64), rev_scale).log_prob(grid)
log_q_fwd = dist.Normal(torch.tensor(fwd_loc, dtype=torch.float64),
                        math.sqrt(fwd_var)).log_prob(grid)
kl_table = {
    "reverse fit": (kl_quadrature(log_q_rev, log_p), kl_quadrature(log_p, log_q_rev)),
    "forward fit": (kl_quadrature(log_q_fwd, log_p), kl_quadrature(log_p, log_q_fwd)),
}
print(f"reverse-KL fit (SVI): mean {rev_loc:.3f}, sd {rev_scale:.3f}")
print(f"forward-KL fit (moments): mean {fwd_loc:.3f}, sd {math.sqrt(fwd_var):.3f}; "
      f"from {KL_MC_SAMPLES} samples: mean {mle_loc:.3f}, sd {math.sqrt(mle_var):.3f}")
for name, (rev, fwd) in kl_table.items():
    print(f"{name}: KL(q||p) = {rev:.4f} nats, KL(p||q) = {fwd:.4f} nats")
assert abs(abs(rev_loc) - 3.0) < 0.5 and rev_scale < 1.2, "reverse KL seeks one mode"
assert rev_scale**2 < 0.25 * fwd_var, "reverse KL: variance far below the forward fit's"
assert abs(mle_loc - fwd_loc) < 4 * se_loc and abs(mle_var - fwd_var) < 4 * se_var
assert kl_table["reverse fit"][0] < kl_table["forward fit"][0], "each fit wins its own KL"
assert kl_table["forward fit"][1] < kl_table["reverse fit"][1]

fig, ax = plt.subplots(figsize=(7, 3.4))
ax.fill_between(grid.numpy(), log_p.exp().numpy(), color="0.85", label="target p (bimodal)")
ax.plot(grid.numpy(), log_q_rev.exp().numpy(), label=r"argmin KL(q || p): mode seeking")
ax.plot(grid.numpy(), log_q_fwd.exp().numpy(), label=r"argmin KL(p || q): mass covering")
ax.set_xlim(-9, 9)
ax.set_xlabel("z")
ax.set_ylabel("density (1 / unit of z)")
ax.set_title("One Gaussian fitted to a bimodal target, both ways")
ax.legend(fontsize=9)
plt.show()

# %% [markdown]
# Which mode the reverse fit finds depends on the initialization (started at $m = 1$, it found
# the mode at $+3$; a wide start can also get stuck in the broad stationary point between the
# modes). For a VAE this is the familiar behaviour: $q(z \mid x)$ is too narrow rather than too
# wide, and the ELBO under-covers multimodal posteriors.
#
# ## 6. EM for PPCA
#
# Expectation-maximization is coordinate ascent on the ELBO, $\mathcal L(q, \theta)$:
#
# * **E-step**: $q \leftarrow p(z \mid x, \theta)$, which sets
#   $\mathrm{KL}(q\,\|\,p(z \mid x)) = 0$ and makes the bound tight,
#   $\mathcal L = \log p(x \mid \theta)$;
# * **M-step**: $\theta \leftarrow \arg\max_\theta \mathbb E_q[\log p(x, z \mid \theta)]$.
#
# So $\log p(x \mid \theta)$ can never decrease. For PPCA both steps are in closed form;
# `PPCA(method="em")` runs them (and also marginalizes missing entries). It must reach the
# closed-form maximum.

# %%
em = ppvae.PPCA(K, method="em").fit(X)
history = np.array(em.loglik_history_)
gap_em = ppca.score(X) - history
C_ml = ppca.covariance()
cov_rel = float(torch.linalg.norm(em.covariance() - C_ml) / torch.linalg.norm(C_ml))
print(f"EM: {em.n_iter_} iterations, final log-lik {history[-1]:.8f} vs closed form "
      f"{ppca.score(X):.8f} nats/image (gap {gap_em[-1]:.1e})")
print(f"covariance relative error {cov_rel:.1e}; "
      f"noise variance {em.noise_variance_:.6f} vs {s2_ml:.6f}")
# with q_t = p(z | x, theta_t): log p(x | theta_t+1) >= ELBO(q_t, theta_t+1) (the bound)
# >= ELBO(q_t, theta_t) (the M-step maximizes it) = log p(x | theta_t) (the E-step made it tight)
assert np.all(np.diff(history) >= -1e-12), "EM never decreases the likelihood"
assert 0 <= gap_em[-1] < 1e-6, "EM reaches the maximum"

fig, ax = plt.subplots(figsize=(6.5, 3.2))
ax.semilogy(np.arange(len(gap_em)), np.maximum(gap_em, 1e-12))
ax.set_xlabel("EM iteration")
ax.set_ylabel("closed-form max - log-lik (nats/image)")
ax.set_title("EM for PPCA climbs monotonically to the closed form")
plt.show()

# %% [markdown]
# ## 7. Variational EM: one $q_n(z)$ per data point, in Pyro
#
# When the posterior is intractable, the E-step is restricted to a family: here
# $q_n(z) = \mathcal N(m_n, \operatorname{diag} s_n^2)$ with *local* parameters $(m_n, s_n)$ for
# every data point, $2Nk$ numbers, trained jointly with $(W, \mu, \sigma)$ by stochastic
# variational inference. The guide below is non-amortized: it stores its parameters in tables
# indexed by the data point. With `pyro.plate("data", N, subsample=idx)`, Pyro scales each
# minibatch's log-densities by $N/M$, so the minibatch ELBO is an unbiased estimate of the
# full-data one:
#
# $$\mathbb E_{\mathcal B}\Big[\frac NM \sum_{n \in \mathcal B} \mathrm{ELBO}_n\Big]
#   = \sum_{n=1}^N \mathrm{ELBO}_n$$
#
# for $\mathcal B$ drawn uniformly among the subsets of size $M$.
#
# Two checks before training: the scale Pyro attaches to the sites of a minibatch trace is
# $N/M$, and the mean of Pyro's minibatch loss over many random minibatches (each with a
# fresh $z$ sample) matches the exact full-data ELBO (closed form, section 4) within 4 SE.

# %%
Xf = data.train  # float32 for training


def vem_model(x, idx):
    W = pyro.param("W", lambda: 0.1 * torch.randn(D, K))
    mu = pyro.param("mu", Xf.mean(0))
    sigma = pyro.param("sigma", torch.tensor(0.3), constraint=dist.constraints.positive)
    with pyro.plate("data", N, subsample=idx):
        z = pyro.sample("z", dist.Normal(torch.zeros(K), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + mu, sigma).to_event(1), obs=x)


def vem_guide(x, idx):
    loc = pyro.param("q_loc", torch.zeros(N, K))  # one row per data point: non-amortized
    scale = pyro.param("q_scale", torch.ones(N, K), constraint=dist.constraints.positive)
    with pyro.plate("data", N, subsample=idx):
        pyro.sample("z", dist.Normal(loc[idx], scale[idx]).to_event(1))


def vem_exact_elbo():
    """Exact mean ELBO and log p(x) (nats/image) of the current parameters and local q_n."""
    W, mu, sigma = (pyro.param(n).detach().double() for n in ("W", "mu", "sigma"))
    model = ppvae.PPCA.from_params(mu, W, float(sigma) ** 2)
    parts = evaluate.elbo_decomposition(model, X, pyro.param("q_loc"), pyro.param("q_scale"))
    return float(parts["elbo"].mean()), float(parts["log_px"].mean())


pyro.set_rng_seed(7)
pyro.clear_param_store()
M = 128
idx = torch.randperm(N)[:M]
trace = poutine.trace(vem_model).get_trace(Xf[idx], idx)
print(f"scale of the 'x' and 'z' sites in a minibatch of M={M}: "
      f"{trace.nodes['x']['scale']:.4f}, {trace.nodes['z']['scale']:.4f}; N/M = {N / M:.4f}")
assert trace.nodes["x"]["scale"] == trace.nodes["z"]["scale"] == N / M
trace.compute_log_prob()
unscaled = sum(trace.nodes[s]["unscaled_log_prob"].detach().sum().item() for s in ("x", "z"))
scaled = trace.log_prob_sum().detach().item()
assert abs(scaled - N / M * unscaled) < 1e-5 * abs(unscaled)  # float32 sums

# unbiasedness: Pyro's minibatch estimates vs the exact full-data ELBO, at fixed parameters
# local parameters away from the initialization, so that the check is not trivial
pyro.param("q_loc", torch.randn(N, K))
pyro.param("q_scale", 0.2 + torch.rand(N, K), constraint=dist.constraints.positive)
estimator = TraceMeanField_ELBO(max_plate_nesting=1)
draws = torch.tensor([-estimator.loss(vem_model, vem_guide, Xf[i], i)
                      for i in (torch.randperm(N)[:M] for _ in range(MINIBATCH_DRAWS))])
full_elbo = N * vem_exact_elbo()[0]
mc_mean, mc_se = float(draws.mean()), float(draws.std()) / math.sqrt(MINIBATCH_DRAWS)
print(f"exact full-data ELBO {full_elbo:.1f} nats; mean of {MINIBATCH_DRAWS} scaled minibatch "
      f"estimates {mc_mean:.1f} +- {mc_se:.1f} (z = {(mc_mean - full_elbo) / mc_se:.2f})")
assert abs(mc_mean - full_elbo) < 4 * mc_se

# %% [markdown]
# Now train it: full-batch steps (every $q_n$ is updated at every step), Adam with a decaying
# learning rate, the KL term in closed form (`TraceMeanField_ELBO`). The exact ELBO and the
# exact log-likelihood of the current parameters are recorded along the way.

# %%
pyro.set_rng_seed(8)
pyro.clear_param_store()
optim = pyro.optim.ClippedAdam({"lr": 0.05, "betas": (0.9, 0.9), "lrd": 0.01 ** (1 / VEM_STEPS)})
svi = SVI(vem_model, vem_guide, optim, TraceMeanField_ELBO(max_plate_nesting=1))
all_idx = torch.arange(N)
vem_curve = []
for step in range(VEM_STEPS):
    svi.step(Xf, all_idx)
    if step % 10 == 9 or step == VEM_STEPS - 1:
        vem_curve.append((step + 1, *vem_exact_elbo()))
vem_steps, vem_elbo, vem_loglik = map(np.array, zip(*vem_curve, strict=True))
print(f"after {VEM_STEPS} steps: exact ELBO {vem_elbo[-1]:.4f}, "
      f"exact log-lik {vem_loglik[-1]:.4f}, PPCA maximum {ppca.score(X):.4f} nats/image")
assert np.all(vem_elbo <= vem_loglik + 1e-6), "the ELBO is a lower bound"
assert np.all(vem_loglik <= ppca.score(X) + 1e-6), "nothing beats the maximum likelihood"
assert vem_elbo[-1] > vem_elbo[0] + 1.0, "training made progress"

# %% [markdown]
# Variational EM gets close but converges slowly: $W$ and the $N$ local means are coupled
# along a narrow valley of the ELBO, and each $q_n$ learns only from its own data point.
#
# ## 8. Amortization: one recognition model $q(z \mid x)$ for all points
#
# Replace the $2Nk$ local parameters by a function of $x$. For PPCA the exact posterior *is* a
# linear-Gaussian function of $x$, $\mathcal N(M^{-1}W^\top(x-\mu), \sigma^2M^{-1})$, with a
# covariance that does not depend on $x$ and that is diagonal at the maximum (up to the rotation
# the ELBO itself picks). So the amortized family $q(z \mid x) = \mathcal N(V(x - c),
# \operatorname{diag} d^2)$ of `ppvae.LinearVAE` contains the optimum, and training must land
# on the PPCA maximum-likelihood solution, with no amortization gap. `evaluate.compare_to_ppca`
# checks that with closed forms. For scale: the 8th latent dimension is worth
# $\log p_{k=8} - \log p_{k=7} \approx 1.6$ nats per image; we require a gap below 0.01
# nats, over 100 times smaller.

# %%
class ExactELBO(ppvae.train.Hook):
    """After every epoch, the closed-form mean ELBO of the training data (nats/image): the
    curve of the objective itself, where the training history has one-sample estimates."""

    def __init__(self, vae, X):
        self.vae, self.X, self.values = vae, X, []

    def on_epoch_end(self, run):
        with torch.no_grad():
            loc, scale = self.vae.encode(self.X.float())
            parts = evaluate.elbo_decomposition(self.vae, self.X, loc, scale)
        self.values.append(float(parts["elbo"].mean()))


lin = ppvae.LinearVAE(D, K)
lin_exact = ExactELBO(lin, X)
lin_history = ppvae.fit(lin, data.train, epochs=LINEAR_EPOCHS, batch_size=N, seed=0,
                        progress=False, hooks=[lin_exact])
check = evaluate.compare_to_ppca(lin, ppca, X)
print(f"LinearVAE after {LINEAR_EPOCHS} full-batch epochs ({lin_history.seconds:.1f} s):")
for key in ("loglik_gap", "elbo_gap", "covariance_rel_error", "noise_variance_rel_error",
            "active_units"):
    print(f"  {key:26s} {check[key]:.3g}")
angles_deg = np.round(check["principal_angles_deg"], 3)
print(f"  principal angles to the PPCA subspace (degrees): {angles_deg}")
assert -1e-6 < check["loglik_gap"] < 0.01, "the linear VAE lands on the PPCA maximum"
assert -1e-6 < check["elbo_gap"] < 0.01, "and its amortized q is (nearly) the exact posterior"

with torch.no_grad():
    loc, scale = lin.encode(X_test.float())
parts = evaluate.elbo_decomposition(lin, X_test, loc, scale)
residual = float((parts["log_px"] - parts["elbo"] - parts["kl_to_posterior"]).abs().max())
print(f"test: log p(x) {float(parts['log_px'].mean()):.4f} = ELBO {float(parts['elbo'].mean()):.4f}"
      f" + KL(q(z|x)||p(z|x)) {float(parts['kl_to_posterior'].mean()):.4f}"
      f" (max residual {residual:.1e})")
assert residual < 1e-9

# the same family with free parameters (V, c, d themselves): the like-for-like comparison with
# variational EM's free local parameters, since the default starts at the exact posterior
lin_free = ppvae.LinearVAE(D, K, encoder="free")
free_exact = ExactELBO(lin_free, X)
free_history = ppvae.fit(lin_free, data.train, epochs=LINEAR_EPOCHS, batch_size=N, seed=0,
                         progress=False, hooks=[free_exact])
free_check = evaluate.compare_to_ppca(lin_free, ppca, X)
print(f"free LinearVAE after {LINEAR_EPOCHS} epochs ({free_history.seconds:.1f} s): loglik_gap "
      f"{free_check['loglik_gap']:.3g}, elbo_gap {free_check['elbo_gap']:.3g}")
# ELBO <= log p(x) <= the PPCA maximum, at every step: the exact curves never cross it (up to
# float32 parameters, 1e-4 nats), while the one-sample estimates may
for name, exact_curve, estimates in (("residual", lin_exact.values, lin_history.train_elbo),
                                     ("free", free_exact.values, free_history.train_elbo)):
    above = max(exact_curve) - ppca.score(X)
    crossings = sum(v > ppca.score(X) for v in estimates)
    print(f"{name}: exact ELBO max - PPCA maximum = {above:+.5f} nats; one-sample estimates "
          f"above the maximum at {crossings} of {len(estimates)} steps")
    assert above < 1e-4

fig, ax = plt.subplots(figsize=(6.8, 3.6))
ax.plot(vem_steps, vem_elbo, label="variational EM, local $q_n$: exact ELBO")
steps = np.arange(1, LINEAR_EPOCHS + 1)
ax.plot(steps, lin_history.train_elbo, color="C1", alpha=0.35, lw=0.8,
        label=r"LinearVAE (residual): one-sample ELBO estimate")
ax.plot(steps, lin_exact.values, color="C1", label=r"LinearVAE (residual): exact ELBO")
ax.plot(steps, free_history.train_elbo, color="C2", alpha=0.35, lw=0.8,
        label=r"LinearVAE (free): one-sample ELBO estimate")
ax.plot(steps, free_exact.values, color="C2", label=r"LinearVAE (free): exact ELBO")
ax.axhline(ppca.score(X), color="k", ls=":", label="PPCA maximum log-likelihood")
ax.set_ylim(ppca.score(X) - 4, ppca.score(X) + 0.5)
ax.set_xlabel("full-batch SVI step")
ax.set_ylabel("training ELBO (nats/image)")
ax.set_title("Amortized vs per-point variational inference for PPCA")
ax.legend(fontsize=9)
plt.show()

# %% [markdown]
# (The default LinearVAE is parameterized as offsets from the exact posterior of the current
# decoder, which removes the valley of section 7; see the README. Its variational family and
# its ELBO are the same as with free parameters, but it starts from the exact posterior of its
# initial decoder, so its speed is not a like-for-like comparison with variational EM: the
# free LinearVAE is, and it gets there more slowly (compare the gaps printed above). The
# pale curves are the one-sample training estimates, which scatter around the ELBO and can
# exceed the PPCA maximum; the solid ones are the exact ELBO after every step (a hook
# computing it in closed form), which cannot, and does not.)
#
# ## 9. Networks instead of matrices: the VAE
#
# Replace $Wz + \mu$ by a neural network $f_\theta(z)$ and $V(x - c)$, $d$ by an encoder
# network $(m_\phi(x), s_\phi(x))$: the VAE (Kingma & Welling 2014; Rezende et al. 2014). The
# model and guide are still the Pyro program of section 7 with other functions inside; the
# posterior is no longer Gaussian and $p(x)$ no longer has a closed form. It is estimated by
# importance sampling with the guide as proposal (section 3), giving the importance-weighted
# bound $\mathbb E \log \frac1S\sum_{s=1}^S w_s$ with $S$ importance samples (written $S$ here,
# since $K$ is the latent dimension), which lies between the ELBO and $\log p(x)$ and rises
# with $S$ (Burda et al. 2016, who call it $K$). PPCA's exact test log-likelihood is the
# baseline.

# %%
vae = ppvae.VAE(D, K, hidden=(256,), likelihood="gaussian")
vae_history = ppvae.fit(vae, data.train, epochs=VAE_EPOCHS, batch_size=128, seed=0,
                        test=data.test, progress=False)
pyro.set_rng_seed(9)
vae_elbo = evaluate.elbo(vae, data.test, num_samples=100)
vae_iw = evaluate.estimate_log_likelihood(vae, data.test, num_samples=IW_SAMPLES)
print(f"VAE after {VAE_EPOCHS} epochs ({vae_history.seconds:.1f} s), test set, nats/image:")
print(f"  ELBO                         {float(vae_elbo.mean()):8.3f}")
print(f"  IW estimate, S={IW_SAMPLES:<5d} samples {vae_iw.mean:8.3f} +- {vae_iw.sem:.3f}"
      f"   (share of k-hat > 0.7: {vae_iw.khat_share:.2f})")
print(f"  PPCA, {K} latent dims, exact  {ppca.score(X_test):8.3f}")
if vae_iw.khat_share > 0.1:
    print(f"  k-hat > 0.7 on {vae_iw.khat_share:.0%} of the test images: there the IW number is "
          "a lower bound of unknown tightness (notebook 02 compares it with AIS)")
# per image, log (1/S) sum_s w_s >= (1/S) sum_s log w_s (Jensen: log is concave), whose
# expectation is the ELBO; and E[(1/S) sum_s w_s] = p(x), so E log(...) <= log p(x), Jensen again
assert vae_iw.mean > float(vae_elbo.mean()), "the IW bound lies above the ELBO"

fig, ax = plt.subplots(figsize=(6.8, 3.6))
epochs = np.arange(1, VAE_EPOCHS + 1)
ax.plot(epochs, vae_history.train_elbo, label="VAE: train ELBO")
ax.plot(epochs, vae_history.test_elbo, label="VAE: test ELBO")
ax.axhline(ppca.score(X_test), color="k", ls=":", label=f"PPCA k={K}: exact test log-lik")
ax.axhline(vae_iw.mean, color="C2", ls="--", label=f"VAE: test IW estimate ({IW_SAMPLES} samples)")
ax.set_ylim(min(vae_history.test_elbo[0], ppca.score(X_test)) - 5, vae_iw.mean + 5)
ax.set_xlabel("epoch")
ax.set_ylabel("nats/image")
ax.set_title("A nonlinear VAE against the exact PPCA likelihood")
ax.legend(fontsize=9)
plt.show()

# %% [markdown]
# ### The VAE as a generative model
#
# The numbers above score the model; a look at what it generates says what they mean. Four
# views: samples $\mathbb E[x \mid z]$ at $z \sim p(z)$; test images and their reconstructions
# $\mathbb E[x \mid z = \mathbb E_q[z \mid x]]$; a traversal, moving one latent coordinate (the
# one with the largest average KL, i.e. the most used) from $-2.5$ to $2.5$ prior standard
# deviations with the others at 0; and the *aggregated posterior*
# $q(z) = \frac1N\sum_n q(z \mid x_n)$, the distribution of codes the decoder was actually
# trained on, against the prior $p(z) = \mathcal N(0, I)$ the samples are drawn from. Where the
# two differ, prior samples land in regions the decoder has rarely seen. That mismatch is what
# richer priors address: a mixture of Gaussians $p(z) = \sum_c \pi_c \mathcal N(\mu_c,
# \operatorname{diag}\sigma_c^2)$ (`prior="mog"`) or the VampPrior
# $p(z) = \frac1M \sum_m q(z \mid u_m)$, a mixture of the encoder's own posteriors at $M$
# learned pseudo-inputs $u_m$ (Tomczak & Welling 2018; `prior="vamp"`), both in notebook 03.

# %%
pyro.set_rng_seed(11)
with torch.no_grad():
    samples = vae.sample(10)
    x_show = data.test[:10]
    recon = vae.reconstruct(x_show)
    loc_all, scale_all = vae.encode(data.train)
kl_dim = 0.5 * (scale_all**2 + loc_all**2 - 1 - 2 * scale_all.log()).mean(0)
top = torch.argsort(kl_dim, descending=True)
steps = torch.linspace(-2.5, 2.5, 10)
z_trav = torch.zeros(10, K)
z_trav[:, top[0]] = steps
with torch.no_grad():
    traversal = vae.decode(z_trav).mean
fig, axes = plt.subplots(4, 10, figsize=(10, 4.4))
rows = [("samples", samples), ("test images", x_show), ("reconstructions", recon),
        (f"traversal z_{int(top[0]) + 1}", traversal)]
for r, (label, imgs) in enumerate(rows):
    for c in range(10):
        ax = axes[r, c]
        ax.imshow(imgs[c].reshape(8, 8).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
fig.suptitle("The VAE: prior samples, reconstructions, and a walk along its most-used latent")
plt.show()

# the aggregated posterior's moments per dimension (a mixture: mean of the means; variance
# = mean of the variances + variance of the means) against the prior's 0 and 1
agg_mean = loc_all.mean(0)
agg_var = (scale_all**2).mean(0) + loc_all.var(0, correction=0)
print("latent dim (by KL):  " + " ".join(f"{int(j) + 1:6d}" for j in top))
print("mean KL, nats:       " + " ".join(f"{float(kl_dim[j]):6.2f}" for j in top))
print("aggregate mean:      " + " ".join(f"{float(agg_mean[j]):6.2f}" for j in top))
print("aggregate variance:  " + " ".join(f"{float(agg_var[j]):6.2f}" for j in top))

fig, ax = plt.subplots(figsize=(5.2, 4.6))
i, j = int(top[0]), int(top[1])
z_agg = loc_all + scale_all * torch.randn_like(loc_all)  # one draw of q(z | x_n) per image
ax.scatter(z_agg[:, i], z_agg[:, j], s=4, alpha=0.4, c=data.train_labels.numpy(), cmap="tab10")
theta = np.linspace(0, 2 * np.pi, 200)
for radius in (1, 2):
    ax.plot(radius * np.cos(theta), radius * np.sin(theta), "k--", lw=1)
ax.set_xlabel(f"$z_{{{i + 1}}}$")
ax.set_ylabel(f"$z_{{{j + 1}}}$")
ax.set_aspect("equal")
ax.set_title("Aggregated posterior (draws, by digit) vs the prior's 1 and 2 sd circles",
             fontsize=9)
plt.show()

# %% [markdown]
# ## 10. The reparameterization trick
#
# SVI needs $\nabla_\phi\, \mathbb E_{q_\phi(z)}[f(z)]$ with
# $f(z) = \log p(x, z) - \log q_\phi(z)$. Two unbiased single-sample estimators:
#
# * **score function** (REINFORCE): $f(z)\,\nabla_\phi \log q_\phi(z)$ with $z \sim q_\phi$,
#   for any $q$;
# * **reparameterization**: write $z = m + s\,\varepsilon$, $\varepsilon \sim \mathcal N(0, I)$, and
#   differentiate through the sample, $\nabla_\phi f(m + s\varepsilon)$.
#
# Pyro picks the estimator from the distribution: `Trace_ELBO` differentiates through
# reparameterizable samples and falls back to the score function when `has_rsample` is false.
# Below, for one test image and the PPCA model, the guide's mean starts at the prior mean and
# its scale is the posterior's; we draw many single-sample gradients of the ELBO with respect to
# the mean, both ways, and compare them with the exact gradient,
# $\nabla_m \mathrm{ELBO} = W^\top(x - \mu - Wm)/\sigma^2 - m$.

# %%
pyro.set_rng_seed(10)
x1 = data.test[:1]
W32, mu32 = W_ml.float(), mu_ml.float()
scale0 = post.variance[0].sqrt().float()
loc0 = torch.zeros(K)
exact_grad = (W32.T @ (x1[0] - mu32 - W32 @ loc0)) / s2_ml - loc0


def one_image_model(x):
    z = pyro.sample("z", dist.Normal(torch.zeros(K), 1.0).to_event(1))
    pyro.sample("x", dist.Normal(W32 @ z + mu32, math.sqrt(s2_ml)).to_event(1), obs=x)


def make_guide(reparameterized):
    def guide(x):
        q = dist.Normal(pyro.param("loc", loc0.clone()), scale0)
        if not reparameterized:
            q = q.has_rsample_(False)  # Pyro then uses the score-function estimator
        pyro.sample("z", q.to_event(1))

    return guide


def gradient_draws(reparameterized, repeats):
    pyro.clear_param_store()
    guide, elbo = make_guide(reparameterized), Trace_ELBO(max_plate_nesting=0)
    out = []
    for _ in range(repeats):
        elbo.loss_and_grads(one_image_model, guide, x1[0])
        loc = pyro.param("loc").unconstrained()
        out.append(-loc.grad.clone())  # the loss is -ELBO
        loc.grad = None
    return torch.stack(out)


g_rep, g_sf = gradient_draws(True, GRAD_REPEATS), gradient_draws(False, GRAD_REPEATS)
var_rep, var_sf = g_rep.var(0), g_sf.var(0)
print(f"exact gradient (first 4 coordinates): {exact_grad[:4].numpy().round(2)}")
for name, g in (("reparameterized", g_rep), ("score function", g_sf)):
    se = g.std(0) / math.sqrt(GRAD_REPEATS)
    zs = (g.mean(0) - exact_grad) / se
    print(f"{name:>16s}: mean {g.mean(0)[:4].numpy().round(2)}, "
          f"sd {g.std(0)[:4].numpy().round(2)}, "
          f"max |z| over {K} coordinates {float(zs.abs().max()):.2f}")
    # score function: grad E_q[f] = E_q[f grad log q], since grad q = q grad log q (and
    # E_q[grad log q] = 0); reparameterized: grad E_eps[f(m + s eps)] = E_eps[grad f]. Both
    # unbiased, so each mean of draws lies within a few standard errors of the exact gradient
    assert bool((zs.abs() < 4).all()), f"{name} estimator is unbiased"
ratio = float(var_sf.sum() / var_rep.sum())
print(f"total variance, score function / reparameterized: {ratio:.0f}")
assert ratio > 100

fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
ax = axes[0]
bins = np.linspace(float(g_sf[:, 0].quantile(0.01)), float(g_sf[:, 0].quantile(0.99)), 60)
ax.hist(g_sf[:, 0].numpy(), bins=bins, alpha=0.6, density=True, label="score function")
ax.hist(g_rep[:, 0].numpy(), bins=bins, alpha=0.8, density=True, label="reparameterized")
ax.axvline(float(exact_grad[0]), color="k", ls=":", label="exact")
ax.set_xlabel(r"single-sample estimate of $\partial\,\mathrm{ELBO} / \partial m_1$"
              " (nats per unit z)")
ax.set_ylabel("density")
ax.legend(fontsize=8)
ax = axes[1]
ax.bar(np.arange(1, K + 1) - 0.2, var_sf.sqrt().numpy(), width=0.4, label="score function")
ax.bar(np.arange(1, K + 1) + 0.2, var_rep.sqrt().numpy(), width=0.4, label="reparameterized")
ax.set_yscale("log")
ax.set_xlabel("latent coordinate j")
ax.set_ylabel(r"sd of $\partial\,\mathrm{ELBO} / \partial m_j$ (nats per unit z)")
ax.legend(fontsize=8)
fig.suptitle("Single-sample ELBO gradients for one digit: same mean, very different spread")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Summary
#
# | step | what was checked | how |
# |---|---|---|
# | linear AE | reaches the PCA loss; subspace angles bounded by the loss excess | `assert` |
# | PPCA | Bayes' rule at any $z$; zero gradient at the closed form | float64, $10^{-9}$ nats |
# | evidence | naive MC many nats off at $n = 10^5$; IS with $q$ within 4 SE | per image |
# | ELBO | $\log p = \mathrm{ELBO} + \mathrm{KL}$, five $q$; KL vs Monte Carlo | $10^{-9}$; 4 SE |
# | KL direction | reverse KL seeks a mode, forward KL covers both | quadrature |
# | EM | monotone, reaches the closed form | $10^{-6}$ nats |
# | variational EM | minibatch scale $N/M$; unbiased minibatch ELBO | exact; 4 SE |
# | amortization | LinearVAE lands on the PPCA maximum | gap < 0.01 nats |
# | VAE | IW bound above the ELBO | test set |
# | gradients | both estimators unbiased; score function far noisier | 4 SE; variance ratio |
#
# Notebook 02 compares PPCA, the linear and the nonlinear VAE on held-out data in detail;
# notebook 03 writes new priors.
