"""The engine: type map and exact values (typemap, wire), one table's plan and its source identity, hot vs
cold comparison and repair, and the offload cycle. Free of Prefect."""
