"""gwsss_jax: Group-Wise Semantic Mining for WSSS (AAAI 2021) in JAX/Flax."""

__version__ = '0.1.0'
