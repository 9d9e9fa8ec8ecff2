"""ppvae: variational autoencoders as Pyro programs, checked against exact probabilistic PCA."""

from . import evaluate, plots
from .checkpoints import load, save
from .data import Dataset, binarize, check_data, dequantize, load_dataset
from .infer import History, TrainingInterrupted, fit
from .likelihoods import Bernoulli, Gaussian, Likelihood
from .nets import GaussianEncoder, MLPDecoder
from .ppca import PPCA
from .priors import Prior, StandardNormal
from .vae import VAE, LinearVAE

__version__ = "0.1.0"

__all__ = [
    "PPCA",
    "VAE",
    "Bernoulli",
    "Dataset",
    "Gaussian",
    "GaussianEncoder",
    "History",
    "Likelihood",
    "LinearVAE",
    "MLPDecoder",
    "Prior",
    "StandardNormal",
    "TrainingInterrupted",
    "__version__",
    "binarize",
    "check_data",
    "dequantize",
    "evaluate",
    "fit",
    "load",
    "load_dataset",
    "plots",
    "save",
]
