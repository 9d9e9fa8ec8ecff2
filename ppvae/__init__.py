"""ppvae: variational autoencoders as Pyro programs, checked against exact probabilistic PCA."""

from . import evaluate, plots
from .checkpoints import load, save
from .data import Dataset, binarize, check_data, dequantize, load_dataset
from .infer import History, TrainingInterrupted, fit
from .likelihoods import Bernoulli, ContinuousBernoulli, Gaussian, Laplace, Likelihood
from .nets import ConvDecoder, ConvEncoder, GaussianEncoder, MLPDecoder
from .ppca import PPCA
from .priors import (
    HierarchicalGaussian,
    LearnedGaussian,
    MixtureOfGaussians,
    Prior,
    StandardNormal,
    VampPrior,
)
from .vae import VAE, LinearVAE

__version__ = "0.1.0"

__all__ = [
    "PPCA",
    "VAE",
    "Bernoulli",
    "ContinuousBernoulli",
    "ConvDecoder",
    "ConvEncoder",
    "Dataset",
    "Gaussian",
    "GaussianEncoder",
    "HierarchicalGaussian",
    "History",
    "Laplace",
    "LearnedGaussian",
    "Likelihood",
    "LinearVAE",
    "MLPDecoder",
    "MixtureOfGaussians",
    "Prior",
    "StandardNormal",
    "TrainingInterrupted",
    "VampPrior",
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
