"""Pure models: `init(key) -> params`, `apply(params, x) -> (y, aux)`, or flax modules.

`contract` is the one model contract (params, state, key) that training, the
probes, NTK and NaP read; `SmallCNN` and the classifier losses show it on a
flax model with BatchNorm and dropout.
"""
from jaxlab.models import contract, precision
from jaxlab.models.cnn import SmallCNN, linen_classifier_loss, linen_init, nnx_classifier_loss
from jaxlab.models.mlp import ACTIVATIONS, MLP, PARAMETRIZATIONS, Model, ScaledDense, mlp
from jaxlab.models.tract import TrActConv, TrActDense
from jaxlab.models.transformer import ICLTransformer

__all__ = ["ACTIVATIONS", "ICLTransformer", "MLP", "PARAMETRIZATIONS", "Model", "ScaledDense",
           "SmallCNN", "TrActConv", "TrActDense", "contract", "precision", "linen_classifier_loss",
           "linen_init", "mlp", "nnx_classifier_loss"]
