"""The Raft layer: pysyncobj and all that touches it.

Partition replicas and the metadata group, the durable journal, snapshot files,
the replica guard, pre-vote, log matching and the bounded Raft wire. The only
package that imports pysyncobj.
"""
