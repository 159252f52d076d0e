"""Attacks: a verified-result protocol (:class:`Attack`), our own attacks, model wrappers (BPDA,
EOT, majority vote) and adapters to maintained libraries."""

from advguard.attacks.adapt_then_attack import AdaptThenAttack
from advguard.attacks.apgd import AutoPGD
from advguard.attacks.autoattack import APGD, FAB, APGDTargeted, AutoAttack, Square
from advguard.attacks.base import (
    ATTACKS,
    Attack,
    AttackResult,
    LogitsOf,
    ThreatModel,
    as_logits_model,
    make_attack,
    resolve_target,
)
from advguard.attacks.epgd import EPGD
from advguard.attacks.expected_start import PGDExpectedStart
from advguard.attacks.fgsm import FGSM
from advguard.attacks.foolbox_attacks import DDN, Boundary, CarliniWagnerL2, GenAttack, HopSkipJump
from advguard.attacks.losses import LOSSES, get_loss
from advguard.attacks.nattack import NAttack
from advguard.attacks.pgd import PGD
from advguard.attacks.smoothadv import SmoothAdv
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
    "PGD",
    "APGDTargeted",
    "AdaptThenAttack",
    "Attack",
    "AttackResult",
    "AutoAttack",
    "AutoPGD",
    "Boundary",
    "CarliniWagnerL2",
    "GenAttack",
    "HopSkipJump",
    "LogitsOf",
    "MajorityVote",
    "NAttack",
    "PGDExpectedStart",
    "SmoothAdv",
    "Square",
    "ThreatModel",
    "Transfer",
    "as_logits_model",
    "get_loss",
    "input_gradient",
    "make_attack",
    "per_example_loss",
    "resolve_target",
    "transfer",
]
