"""edgerec sync: the sync service, its admin CLI and the edge node daemon.

The service distributes signed, per-node-encrypted model packages with The
Update Framework (TUF), enrolls nodes, rolls versions out in stages and keeps
what the nodes report. The node daemon (:mod:`edgerec.sync.node`) installs
what it is sent.
"""
