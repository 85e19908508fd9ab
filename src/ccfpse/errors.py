"""Exceptions that the CLI reports as one clear line (no traceback)."""


class CCFPSEError(Exception):
    """Base class of every error caused by the user's input (files, options, weights)."""


class DataError(CCFPSEError):
    """A data set file is missing, unreadable, unpaired or holds values the config cannot take."""


class CheckpointError(CCFPSEError):
    """A checkpoint is missing, malformed, or does not fit the configuration."""


class WeightsError(CCFPSEError):
    """Pretrained weights (VGG, Inception, segmenter, LPIPS) cannot be found or do not verify."""


def unreadable_reason(e: BaseException) -> str:
    """One line on why a weights or checkpoint file could not be read. torch.load's own messages
    run over several lines, and its weights-only unpickler's advises ``weights_only=False``, which
    would run whatever code the file holds: not advice to pass on for a file that is damaged."""
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0].strip()
        return f"not a file of tensors and plain data; the safe loader stopped at: {detail}"
    if isinstance(e, EOFError) or not text:
        return "the file is empty or cut short"
    if "failed finding central directory" in text:
        return "the file is cut short or damaged: its zip archive has no central directory"
    return f"{type(e).__name__}: {text.splitlines()[0]}"
