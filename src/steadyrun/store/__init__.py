"""The store: SQLite for experiments, tasks, attempts, events and samples, plus one folder
per experiment (its definition, its attempt folders). Every write that must survive a
crash is a transaction or an atomic rename.
"""
