"""The one error type the weights code raises: its message says what went wrong and what to do."""


class WeightsError(RuntimeError):
    """Weights or tokenizer could not be prepared; the message names the cause and the fix."""


class OfficialWeightsUnavailable(WeightsError):
    """The official Hugging Face weights cannot be had (no token, license, network, ...)."""
