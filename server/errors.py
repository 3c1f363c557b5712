"""Domain errors of the serving core. They say what went wrong, never how to answer it: the API layer
(`server/api/errors.py`) maps each kind to a status code, an error code and Retry-After, in one table."""

from __future__ import annotations

from collections.abc import Iterable


class ServingError(Exception):
    """Base of every error a client can be told about; the message is written for that client. `said`: the
    client's own words the message quotes (an adapter name, a source): shown as sent, even where they look
    like a path of the server's file system (those are hidden everywhere else)."""

    def __init__(self, message: str, *, said: tuple[str, ...] = ()):
        super().__init__(message)
        self.message = message
        self.said = said


class InvalidInput(ServingError):
    """The request itself is wrong (shape, types, values); `field` names the request field at fault."""

    def __init__(self, message: str, *, field: str | None = None, said: tuple[str, ...] = ()):
        super().__init__(message, said=said)
        self.field = field


class UnknownAdapter(InvalidInput):
    """A `lora_id` that is neither resident nor loadable from an allowed source."""


class UnknownProfile(InvalidInput):
    """A profile the model's config does not define."""


class AdapterLoadFailed(InvalidInput):
    """The adapter was tried and could not be loaded (the cause is remembered for a while)."""


class InputTooLong(ServingError):
    """An item over the token limit with `overflow_policy: error`."""


class NotSupported(InvalidInput):
    """A feature this deployment does not offer (admin routes in scale-out)."""


class Forbidden(ServingError):
    """The key is known but its scope does not allow this action (the admin API, pinning, /metrics)."""


class ModelNotFound(ServingError):
    """No served model of that name."""


class AdapterNotFound(ServingError):
    """An admin action on an adapter that is not loaded."""


class AdapterConflict(ServingError):
    """An admin load that names a resident adapter with another source."""


class AdapterPinned(ServingError):
    """An admin unload of an adapter the model config preloads (it needs `force`)."""


class ModelLoading(ServingError):
    """The model is still starting."""


class ModelLoadFailed(ServingError):
    """The model could not be started; retrying will not help."""


class AdapterLoading(ServingError):
    """The adapter is being loaded in the background; retry shortly."""


class QueueFull(ServingError):
    """Admission refused: the queue is at its item or token limit, or the backend is overloaded."""


class AdapterCapacityFull(QueueFull):
    """No slot for another adapter now: every resident adapter is busy. Never remembered as the adapter's
    failure."""


class AdapterPoolPinned(AdapterCapacityFull):
    """No slot for another adapter until an operator frees one: every slot holds a pinned adapter."""


class ShuttingDown(ServingError):
    """The server is draining; the work was not started."""


class AdapterNotResident(ServingError):
    """SGLang's engine holds no adapter under the name a row's slot maps to (the registry keeps every leased
    adapter resident; only the engine's own state can differ)."""


def listed(names: Iterable[str]) -> str:
    ordered = sorted(names)
    return ", ".join(ordered) if ordered else "none"


def unknown_profile(profile: str, model: str, available: Iterable[str]) -> UnknownProfile:
    return UnknownProfile(f"unknown profile {profile!r} for model {model!r}; available: {listed(available)}",
                          field="profile")


def model_not_found(model: str, available: Iterable[str]) -> ModelNotFound:
    return ModelNotFound(f"model {model!r} is not served here; available: {listed(available)}", said=(model,))
