"""kdeploy.transport: run commands and place files on hosts (ssh, local, fake).

    Transport protocol + CommandResult ... kdeploy.transport.base
    SSHTransport (paramiko) ............. kdeploy.transport.ssh
    LocalTransport (subprocess) ......... kdeploy.transport.local
    FakeTransport (in memory, tests) .... kdeploy.transport.fake
    connect_all / connect_each .......... kdeploy.transport.pool

Every low-level error leaves a transport as kdeploy.errors.TransportError. Importing this
package does not import paramiko.
"""
from kdeploy.transport.base import CommandResult, Transport

__all__ = ["CommandResult", "Transport"]
