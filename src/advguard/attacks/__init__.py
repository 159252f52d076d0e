"""Attacks: a verified-result protocol (:class:`Attack`), our own attacks, model wrappers (BPDA,
EOT, majority vote) and adapters to maintained libraries."""

from advguard.attacks.adapt_then_attack import AdaptThenAttack
from advguard.attacks.apgd import AutoPGD
from advguard.attacks.autoattack import APGD, FAB, APGDTargeted, AutoAttack, Square
from advguard.attacks.base import (
    ATTACKS,
    Attack,
    AttackResult,
    Evidenced,
    LogitsOf,
    Threat,
    ThreatModel,
    as_logits_model,
    make_attack,
    resolve_target,
)
from advguard.attacks.epgd import EPGD
from advguard.attacks.expected_start import PGDExpectedStart
from advguard.attacks.fgsm import FGSM
from advguard.attacks.foolbox_attacks import DDN, Boundary, CarliniWagnerL2, GenAttack, HopSkipJump
from advguard.attacks.local_search import LocalSearch
from advguard.attacks.losses import LOSSES, get_loss
from advguard.attacks.nattack import NAttack
from advguard.attacks.patch import MASK_SHAPES, Patch, PatchThreat
from advguard.attacks.pgd import PGD
from advguard.attacks.smoothadv import SmoothAdv
from advguard.attacks.stadv import FlowThreat, StAdv, flow_loss, warp
from advguard.attacks.transfer import Transfer, transfer
from advguard.attacks.wrappers import BPDA, EOT, MajorityVote, input_gradient, per_example_loss

__all__ = [
    "APGD",
    "ATTACKS",
    "BPDA",
    "DDN",
    "EOT",
    "EPGD",
    "FAB",
    "FGSM",
    "LOSSES",
    "MASK_SHAPES",
    "PGD",
    "APGDTargeted",
    "AdaptThenAttack",
    "Attack",
    "AttackResult",
    "AutoAttack",
    "AutoPGD",
    "Boundary",
    "CarliniWagnerL2",
    "Evidenced",
    "FlowThreat",
    "GenAttack",
    "HopSkipJump",
    "LocalSearch",
    "LogitsOf",
    "MajorityVote",
    "NAttack",
    "PGDExpectedStart",
    "Patch",
    "PatchThreat",
    "SmoothAdv",
    "Square",
    "StAdv",
    "Threat",
    "ThreatModel",
    "Transfer",
    "as_logits_model",
    "flow_loss",
    "get_loss",
    "input_gradient",
    "make_attack",
    "per_example_loss",
    "resolve_target",
    "transfer",
    "warp",
]
