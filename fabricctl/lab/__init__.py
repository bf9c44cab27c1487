"""The netns lab: containerlab topologies built from network namespaces on one machine.

``topology`` parses and validates the files, ``bird`` and ``resources`` render what
routers and etcd get (pure), ``state`` is the crash-proof record of what was made,
``runner`` does the building and tearing down, ``graph`` draws the running lab.
"""
