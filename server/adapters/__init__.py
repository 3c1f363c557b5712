"""Adapter ownership: the registry that alone knows adapter names, assigns backend slots, enforces
`max_loras_per_model`, hands out leases and evicts; and the policy of where adapters may come from."""
