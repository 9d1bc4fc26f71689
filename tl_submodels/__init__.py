"""tl_submodels: find, validate and use the sub-models a TransformerLens model uses for a behaviour.

Example:
    >>> import tl_submodels as tls
    >>> model = tls.zoo.load("induction-2l")
    >>> task = tls.zoo.task("induction-2l", "induction", n=32)
    >>> scores = tls.patch(model, task)
    >>> circuit = tls.find_circuit(model, task, target=0.9)
    >>> result = tls.evaluate(model, circuit, task, ablation="mean")
"""

from tl_submodels import stats, viz, zoo
from tl_submodels.ablation import Ablator, ablated, ablation_hooks, complement
from tl_submodels.attribution import attribute
from tl_submodels.components import MLP, Component, Head, Neuron, parse_component
from tl_submodels.decompose import decompose
from tl_submodels.decomposition import Decomposition, PartEvaluation, load_parts
from tl_submodels.diff import ModelDiff, diff
from tl_submodels.discovery import find_circuit
from tl_submodels.edges import Edges, attribute_edges
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.evaluate import Baselines, Evaluation, evaluate
from tl_submodels.explain import Explanation, Usage, explain, usage
from tl_submodels.factorize import Factorization, atoms, factorize
from tl_submodels.loading import from_pretrained, load_checkpoint, load_model
from tl_submodels.model import Adapter, ModelInfo, adapter, check_model
from tl_submodels.patching import patch
from tl_submodels.report import Report, report
from tl_submodels.scores import Scores
from tl_submodels.submodel import SubModel
from tl_submodels.task import Task
from tl_submodels.trace import Trace, trace
from tl_submodels.version import __version__

__all__ = [
    "MLP",
    "Ablator",
    "Adapter",
    "Baselines",
    "Component",
    "Decomposition",
    "Edges",
    "Evaluation",
    "Explanation",
    "Factorization",
    "Head",
    "ModelDiff",
    "ModelInfo",
    "Neuron",
    "PartEvaluation",
    "Report",
    "Scores",
    "SubModel",
    "TLSubmodelsError",
    "Task",
    "Trace",
    "Usage",
    "__version__",
    "ablated",
    "ablation_hooks",
    "adapter",
    "atoms",
    "attribute",
    "attribute_edges",
    "check_model",
    "complement",
    "decompose",
    "diff",
    "evaluate",
    "explain",
    "factorize",
    "find_circuit",
    "from_pretrained",
    "load_checkpoint",
    "load_model",
    "load_parts",
    "parse_component",
    "patch",
    "report",
    "stats",
    "trace",
    "usage",
    "viz",
    "zoo",
]
