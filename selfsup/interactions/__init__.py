"""Interaction data for recommendation: logs read into per-user item histories (data.py), split by
leave-one-out for ranking (selfsup.evaluate.ranking) and pretraining (selfsup.modalities.interactions)."""
from selfsup.interactions.data import (ITEM_OFFSET, HeldOutItems, InteractionLog, LeaveOneOut,  # noqa: F401
                                       leave_one_out, read_interactions)
