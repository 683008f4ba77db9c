"""How the study starts its Jupyter kernels: with CurveZMQ transport encryption.

ipykernel (7.x) logs "Kernel is running over TCP without encryption ..." at start-up unless the
kernel manager hands it Curve keys. The `xpool` kernelspec that `make setup` registers already
declares `supported_encryption: ["curve"]`; jupyter_client only provisions keys when its
`transport_encryption` policy asks for it, and its default is "disabled". `EncryptedKernelManager`
(given to papermill) and the Makefile's `lab` target (`--KernelManager.transport_encryption`)
set it to "required", so the warning disappears because its cause does, and a kernel that
cannot be encrypted fails to start with jupyter_client's message instead of running in plain
text.
"""

from __future__ import annotations

from jupyter_client import AsyncKernelManager
from traitlets import default

TRANSPORT_ENCRYPTION = "required"


class EncryptedKernelManager(AsyncKernelManager):
    """nbclient's default kernel manager with Curve transport encryption required."""

    @default("transport_encryption")
    def _transport_encryption_default(self) -> str:
        return TRANSPORT_ENCRYPTION
