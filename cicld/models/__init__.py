"""The CICLD network (:class:`CICLD`), its configuration, diffusion schedules and losses."""

from cicld.models.cicld import CICLD, CONFIG_NAME, WEIGHTS_NAME
from cicld.models.config import CICLDConfig
from cicld.models.diffusion import LatentDiffusion
from cicld.models.discriminator import DomainDiscriminator

__all__ = ["CICLD", "CICLDConfig", "CONFIG_NAME", "DomainDiscriminator", "LatentDiffusion", "WEIGHTS_NAME"]
