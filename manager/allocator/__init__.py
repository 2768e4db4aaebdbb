"""The allocator: subnets and VXLAN ids for networks, an address per task and per node on
each of its networks, a virtual IP per service and network, published ports.

`Allocator` holds what is taken (rebuilt from the store at start); `networks` is the
address plan and how specs name networks; `validate` refuses clashes at deploy time. The
loop that applies it to the store is manager/loops/allocator.py.
"""

from pyswarm.manager.allocator.allocator import AllocationError, Allocator

__all__ = ["AllocationError", "Allocator"]
