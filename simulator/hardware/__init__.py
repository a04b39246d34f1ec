"""Catalogues: model architectures (models.py) and GPU datasheets with dated prices (gpus.py). Data only."""
