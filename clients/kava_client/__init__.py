"""Python SDK of the KaVa latent-reasoning server (`kava serve`): httpx + pydantic, nothing else.

    from kava_client import Client
    print(Client().solve("Tom has 3 apples and buys 5 more. How many?").answer)

`Client` and `AsyncClient` are twins with the same methods; errors are one class per status
family under `KavaError`; responses are pydantic models. This package imports nothing from
the rest of the project and installs on its own (`pip install ./clients`).
"""

from kava_client._base import DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, __version__
from kava_client._retry import RetryPolicy
from kava_client.async_client import AsyncClient
from kava_client.client import Client
from kava_client.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    GatewayTimeoutError,
    InternalServerError,
    KavaError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from kava_client.types import AdapterInfo, BaseModelInfo, Mode, ModelsResponse, SolveResponse, Timings, Usage

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AdapterInfo",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BaseModelInfo",
    "Client",
    "ConflictError",
    "GatewayTimeoutError",
    "InternalServerError",
    "KavaError",
    "Mode",
    "ModelsResponse",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "SolveResponse",
    "Timings",
    "UnprocessableEntityError",
    "Usage",
    "__version__",
]
