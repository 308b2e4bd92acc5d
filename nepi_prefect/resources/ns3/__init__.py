"""ns-3 simulated networks as resources: nodes, devices, channels, applications.

Types come from ns-3's own TypeId registry (:mod:`.registry`, :mod:`.provider`);
a :class:`~.simulation.Ns3Simulation` runs them in a separate simulator process
(:mod:`.client`, :mod:`.worker`). See docs/ns3.md.
"""
