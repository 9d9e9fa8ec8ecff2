"""ppvae: variational autoencoders as Pyro programs, checked against exact probabilistic PCA."""

from . import evaluate, plots
from .autoencoders import (
    Autoencoder,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    SparseAutoencoder,
    StackedAutoencoder,
)
from .checkpoints import load, save
from .data import Dataset, MemmapDataset, binarize, check_data, dequantize, load_dataset
from .infer import History, TrainingInterrupted, finetune, fit, pretrain
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
    "Autoencoder",
    "Bernoulli",
    "ContinuousBernoulli",
    "ContractiveAutoencoder",
    "ConvDecoder",
    "ConvEncoder",
    "Dataset",
    "DenoisingAutoencoder",
    "Gaussian",
    "GaussianEncoder",
    "HierarchicalGaussian",
    "History",
    "Laplace",
    "LearnedGaussian",
    "Likelihood",
    "LinearVAE",
    "MLPDecoder",
    "MemmapDataset",
    "MixtureOfGaussians",
    "Prior",
    "SparseAutoencoder",
    "StackedAutoencoder",
    "StandardNormal",
    "TrainingInterrupted",
    "VampPrior",
    "__version__",
    "binarize",
    "check_data",
    "dequantize",
    "evaluate",
    "finetune",
    "fit",
    "load",
    "load_dataset",
    "plots",
    "pretrain",
    "save",
]
from . import workflows  # noqa: F401  (ppvae.workflows: the experiments of the ppvae command)
