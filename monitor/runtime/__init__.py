"""The running service: the consume loop and its parts, checkpointed state, the Faust adapter."""
