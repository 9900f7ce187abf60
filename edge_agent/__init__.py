"""edge-agent: the gateway between a plant's PLCs and the cloud.

Data flows one way: driver -> filter engine -> batcher -> frame encoder -> spool -> uplink.
"""

__version__ = "0.1.0"
