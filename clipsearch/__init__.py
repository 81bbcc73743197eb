"""clipsearch: the retrieval core shared by the DVC pipeline (`training/`) and the service (`services/`).

Arrows point one way: training and services import this package; it imports neither.
"""

__version__ = "0.1.0"
