"""Exceptions that the CLI reports as one clear line (no traceback)."""


class CCFPSEError(Exception):
    """Base class of every error caused by the user's input (files, options, weights)."""


class DataError(CCFPSEError):
    """A data set file is missing, unreadable, unpaired or holds values the config cannot take."""


class CheckpointError(CCFPSEError):
    """A checkpoint is missing, malformed, or does not fit the configuration."""


class WeightsError(CCFPSEError):
    """Pretrained weights (VGG, Inception, segmenter, LPIPS) cannot be found or do not verify."""
