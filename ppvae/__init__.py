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
from .conditional import ConditionalVAE, SemiSupervisedVAE
from .data import Dataset, MemmapDataset, binarize, check_data, dequantize, load_dataset
from .guides import IAF, DiagonalGaussian, FullRankGaussian, Guide
from .initialization import keep_parameters
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
from .program import Program, as_program
from .tables import load_table
from .train import (
    EarlyStopping,
    History,
    TensorBoard,
    TrainConfig,
    TrainingInterrupted,
    finetune,
    fit,
    pretrain,
)
from .vae import VAE, LinearVAE

__version__ = "0.1.0"

__all__ = [
    "IAF",
    "PPCA",
    "VAE",
    "Autoencoder",
    "Bernoulli",
    "ConditionalVAE",
    "ContinuousBernoulli",
    "ContractiveAutoencoder",
    "ConvDecoder",
    "ConvEncoder",
    "Dataset",
    "DenoisingAutoencoder",
    "DiagonalGaussian",
    "EarlyStopping",
    "FullRankGaussian",
    "Gaussian",
    "GaussianEncoder",
    "Guide",
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
    "Program",
    "SemiSupervisedVAE",
    "SparseAutoencoder",
    "StackedAutoencoder",
    "StandardNormal",
    "TensorBoard",
    "TrainConfig",
    "TrainingInterrupted",
    "VampPrior",
    "__version__",
    "as_program",
    "binarize",
    "check_data",
    "dequantize",
    "evaluate",
    "finetune",
    "fit",
    "keep_parameters",
    "load",
    "load_dataset",
    "load_table",
    "plots",
    "pretrain",
    "save",
]
from . import workflows  # noqa: F401  (ppvae.workflows: the experiments of the ppvae command)
