"""The paper's grid: grid files, plans, the ledger, executors and workers, the coordinator, Table 5 and the figures."""
