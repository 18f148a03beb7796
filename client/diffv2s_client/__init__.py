"""Python client of the DiffV2S video-to-speech API: `Client` (blocking) and `AsyncClient` (asyncio).

    from diffv2s_client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        job = client.synthesize("clip.mp4", "speech.wav", steps=10)

Errors are typed (`diffv2s_client.errors`); the command line is `diffv2s-client synthesize`.
"""

from diffv2s_client.async_client import AsyncClient
from diffv2s_client.errors import (
    ApiError,
    ClientError,
    DiffV2SClientError,
    JobFailed,
    ServerError,
    TransportError,
    UnexpectedResponse,
    WaitTimeout,
)
from diffv2s_client.models import (
    ErrorInfo,
    Job,
    JobPage,
    JobParams,
    JobSampling,
    JobStatus,
    JobUrls,
    Progress,
    SynthesisOptions,
)
from diffv2s_client.protocol import DEFAULT_URL, RetryEvent, RetryPolicy
from diffv2s_client.sync_client import Client

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "AsyncClient",
    "Client",
    "ClientError",
    "DiffV2SClientError",
    "ErrorInfo",
    "Job",
    "JobFailed",
    "JobPage",
    "JobParams",
    "JobSampling",
    "JobStatus",
    "JobUrls",
    "Progress",
    "RetryEvent",
    "RetryPolicy",
    "ServerError",
    "SynthesisOptions",
    "TransportError",
    "UnexpectedResponse",
    "WaitTimeout",
]
