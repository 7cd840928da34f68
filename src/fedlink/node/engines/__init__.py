"""The engines that run a plan over a node's tables: the aggregate and model operators
(:mod:`.operators`), the DuckDB, PostgreSQL and Spark backends (:mod:`.backends`), and the plaintext
reference engine that tests and scenarios compare federated answers with (:mod:`.reference`)."""
