"""CC-FPSE networks: generator, FPSE discriminator, VAE encoder."""

from ccfpse.nn.discriminator import FPSEDiscriminator
from ccfpse.nn.encoder import ConvEncoder, reparameterize
from ccfpse.nn.generator import CCFPSEGenerator

__all__ = ["CCFPSEGenerator", "FPSEDiscriminator", "ConvEncoder", "reparameterize", "build_networks"]


def build_networks(cfg, with_discriminator: bool = True):
    """(G, D or None, E or None) for a ``ModelConfig``."""
    G = CCFPSEGenerator.from_config(cfg)
    D = FPSEDiscriminator(cfg.semantic_nc, cfg.ndf, label_channels=cfg.num_label_channels) if with_discriminator else None
    E = ConvEncoder(cfg.ngf, cfg.z_dim) if cfg.use_vae else None
    return G, D, E
