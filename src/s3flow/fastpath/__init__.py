"""s3flow's own signed HTTP requests for the hot S3 and SQS calls; the SDK serves the rest.

:class:`FastS3Client` (GetObject, PutObject, HeadObject) and :class:`FastSqsClient`
(ReceiveMessage, DeleteMessageBatch, ChangeMessageVisibilityBatch) wrap the SDK
clients :func:`s3flow.aws.open_clients` builds, when ``[aws] fast_path`` is on.
"""

from s3flow.fastpath.s3 import FastS3Client
from s3flow.fastpath.signing import Credentials, SigV4Signer
from s3flow.fastpath.sqs import FastSqsClient
from s3flow.fastpath.transport import Connection, FastClient

__all__ = [
    "Connection",
    "Credentials",
    "FastClient",
    "FastS3Client",
    "FastSqsClient",
    "SigV4Signer",
]
